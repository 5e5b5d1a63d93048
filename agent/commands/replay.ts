// `hvwatch replay FILE`: plays a trace through the same pipeline as live probes and serves
// the result on /metrics (or prints it with --print).
import { parseArgs } from 'node:util';
import { log } from '../log.js';
import { ALL_METRICS } from '../catalog.js';
import { renderText } from '../export/exposition.js';
import { CommandError, logLevel, openTrace, replayAgent, serve, snapshotIndex, untilSignal } from './common.js';

export const REPLAY_USAGE = `usage: hvwatch replay FILE [options]
  Feed a trace (hvwatch record) through the agent's pipeline and serve /metrics, /api/probes
  and /api/races as they were at the end of the trace (or at --at).
  -l, --listen ADDR   serve here (default :9477)
      --at N          stop after snapshot N (0-based; -1 is the last, -2 the one before)
      --partial       replay the readable prefix of a damaged or cut trace
      --print         print the exposition to stdout and exit instead of serving
      --log-level L   debug|info|warn|error`;

export async function replayCommand(argv: string[]): Promise<number> {
  let a;
  try {
    a = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        listen: { type: 'string', short: 'l' },
        at: { type: 'string' },
        partial: { type: 'boolean' },
        print: { type: 'boolean' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new CommandError(`${(e as Error).message}\n${REPLAY_USAGE}`);
  }
  const v = a.values;
  if (v.help) {
    process.stdout.write(`${REPLAY_USAGE}\n`);
    return 0;
  }
  logLevel(v['log-level']);
  const file = a.positionals[0];
  if (!file || a.positionals.length > 1) throw new CommandError(`replay needs one FILE\n${REPLAY_USAGE}`);
  const trace = openTrace(file, !!v.partial);
  const until = snapshotIndex(trace, v.at);
  const { agent, source } = replayAgent(trace);
  const h = trace.header;
  const server = v.print ? undefined : await serve(agent, { ...agent.config, listen: v.listen ?? agent.config.listen });
  agent.start();
  agent.ready = false; // /readyz says 503 until the trace is played
  await source.play(() => agent.collect(), until);
  agent.ready = true;
  log('info', 'trace replayed', {
    file,
    kernel: h.kernel,
    recorded_by: h.agent,
    host: h.hostname,
    started: h.started,
    snapshots: source.played,
    records: trace.records.length,
    dropped: JSON.stringify(trace.footer?.dropped ?? null),
  });
  if (v.print) {
    process.stdout.write(renderText(ALL_METRICS, agent.store));
    await agent.stop();
    return 0;
  }
  await untilSignal();
  server?.close();
  server?.closeAllConnections();
  await agent.stop();
  return 0;
}
