// `hvwatch record FILE`: runs the agent (serving /metrics like `run`) and writes a trace of
// what it read: a snapshot of the maps every --interval and at every scrape, each
// ring-buffer event, and the host identities the labels came from.
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import { Agent, liveSource } from '../agent.js';
import { log } from '../log.js';
import { RecordingSource } from '../sources/recording.js';
import { CommandError, RUN_OPTIONS, RUN_OPTIONS_HELP, parseBytes, parseSeconds, preflight, runConfig, serve, untilSignal } from './common.js';

export const RECORD_USAGE = `usage: hvwatch record FILE [options] [-- COMMAND ARGS...]
  Attach the probes, serve /metrics like run, and write a trace to FILE until SIGTERM/SIGINT,
  --duration, or the end of COMMAND.
      --interval S    seconds between map snapshots (default 10; every scrape also snapshots)
      --max-bytes N   bound the trace (e.g. 100M); what does not fit is dropped and counted
      --no-compress   do not deflate records
      --duration S    stop after S seconds
  -l, --listen ADDR   serve /metrics here while recording (default :9477)
${RUN_OPTIONS_HELP}`;

export async function recordCommand(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const workload = dash >= 0 ? argv.slice(dash + 1) : [];
  let a;
  try {
    a = parseArgs({
      args: dash >= 0 ? argv.slice(0, dash) : argv,
      allowPositionals: true,
      strict: true,
      options: {
        ...RUN_OPTIONS,
        listen: { type: 'string', short: 'l' },
        interval: { type: 'string' },
        'max-bytes': { type: 'string' },
        'no-compress': { type: 'boolean' },
        duration: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new CommandError(`${(e as Error).message}\n${RECORD_USAGE}`);
  }
  const v = a.values;
  if (v.help) {
    process.stdout.write(`${RECORD_USAGE}\n`);
    return 0;
  }
  const file = a.positionals[0];
  if (!file || a.positionals.length > 1) throw new CommandError(`record needs one FILE\n${RECORD_USAGE}`);
  if (dash >= 0 && workload.length === 0) throw new CommandError('nothing after --: give the workload command');
  const intervalMs = parseSeconds(v.interval ?? '10', '--interval') * 1000;
  const maxBytes = v['max-bytes'] !== undefined ? parseBytes(v['max-bytes'], '--max-bytes') : undefined;
  const duration = v.duration !== undefined ? parseSeconds(v.duration, '--duration') : undefined;
  const cfg = runConfig(v);
  preflight(cfg);

  const agent = new Agent(
    cfg,
    undefined,
    (families, services) => new RecordingSource(liveSource(cfg, families, services), cfg, { file, maxBytes, intervalMs, compress: !v['no-compress'] }),
  );
  const rec = agent.source;
  if (!(rec instanceof RecordingSource)) throw new Error('record: the agent made no recording source');
  rec.attachStore(agent.store);
  const server = await serve(agent, cfg);
  try {
    agent.start();
  } catch (e) {
    server.close();
    await agent.stop().catch(() => undefined);
    throw new CommandError(`record ${file}: ${(e as Error).message}`);
  }
  log('info', 'recording', { file, listen: cfg.listen, interval_s: intervalMs / 1000, max_bytes: maxBytes });
  const timer = setInterval(() => {
    rec.cause = 'interval';
    void agent.collect();
  }, intervalMs);
  rec.cause = 'interval';
  await agent.collect(); // the state at attach: counters start from here

  const ends: Promise<string>[] = [untilSignal()];
  if (duration !== undefined) ends.push(new Promise((r) => setTimeout(() => r('duration'), duration * 1000).unref()));
  let code = 0;
  if (workload.length) {
    const child = spawn(workload[0]!, workload.slice(1), { stdio: ['ignore', 'inherit', 'inherit'] });
    ends.push(
      new Promise((resolve) => {
        child.on('error', (e) => {
          code = 2;
          log('error', 'workload did not start', { error: e.message });
          resolve('workload');
        });
        child.on('exit', (c, sig) => {
          if (c !== 0) {
            code = 2;
            log('error', 'workload failed', { status: c, signal: sig });
          }
          resolve('workload');
        });
      }),
    );
  }
  const why = await Promise.race(ends);
  clearInterval(timer);
  rec.cause = 'final';
  await agent.collect();
  server.close();
  server.closeAllConnections();
  await agent.stop();
  const st = rec.writerStats;
  log('info', 'recording stopped', { reason: why, bytes: st?.bytes, records: st?.records, dropped: JSON.stringify(st?.dropped) });
  return code;
}
