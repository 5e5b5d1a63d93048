// `hvwatch check`: CI regression mode. Attach the probes, run a workload (after --) or
// watch for --duration, or replay a trace (--replay), then judge the run against the
// thresholds file, the required probes and an optional baseline.
// Exit status: 0 pass, 1 regression, 2 usage or setup error, or a workload that failed.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { Agent, VERSION } from '../agent.js';
import { ALL_METRICS, metricByName } from '../catalog.js';
import type { MetricStore } from '../export/store.js';
import { allProbeNames } from '../families.js';
import { compare, loadBaseline, summarize, writeBaseline } from '../check/baseline.js';
import { formatJson, formatJunit, formatSummary, workloadFailed, type CheckReport, type WorkloadResult } from '../check/report.js';
import {
  RACE_METRICS,
  ThresholdsError,
  evaluateRequire,
  evaluateRule,
  expandRules,
  loadThresholds,
  thresholdsSchema,
  type Thresholds,
} from '../check/thresholds.js';
import { CommandError, RUN_OPTIONS, RUN_OPTIONS_HELP, logLevel, openTrace, parseSeconds, preflight, replayAgent, runConfig } from './common.js';

export const CHECK_USAGE = `usage: hvwatch check [options] [-- COMMAND ARGS...]
  Attach the probes, run COMMAND (or watch for --duration), judge the run; or judge a
  recorded trace with --replay FILE.
  -t, --thresholds FILE   thresholds YAML (README "CI regression mode")
      --require PROBE     a probe that must attach (repeatable)
      --baseline FILE     compare with a previous run's summary
      --write-baseline FILE
                          write this run's summary (quantiles and counts) for later --baseline
      --tolerance X       default relative tolerance per baseline figure (0.25 = 25%)
      --junit FILE        JUnit XML: one testcase per threshold, required probe, baseline figure
      --json FILE         the whole report as JSON
      --duration S        watch for S seconds (with COMMAND: kill it after S seconds)
      --replay FILE       judge a recorded trace instead of this kernel
      --partial           with --replay: use the readable prefix of a damaged trace
      --quiet             no progress line
${RUN_OPTIONS_HELP}`;

const PROGRESS_MS = 1000;

/** Events seen so far: every counter (in events, not pages or bytes) and histogram
 * observation of the probe families. */
export function eventsSeen(store: MetricStore): number {
  let n = 0;
  for (const d of ALL_METRICS) {
    if (d.family === 'agent' || d.unit === 'pages' || d.unit === 'bytes') continue;
    if (d.type === 'counter' || d.type === 'histogram') n += store.total(d);
  }
  return n;
}

export function racesSeen(store: MetricStore): number {
  return RACE_METRICS.reduce((n, d) => n + store.total(d), 0);
}

async function runWorkload(cmd: string[], durationS: number | undefined, progress: () => Promise<void>): Promise<WorkloadResult> {
  return new Promise((resolve) => {
    let timedOut = false;
    const child = spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'inherit', 'inherit'] });
    const tick = setInterval(() => void progress(), PROGRESS_MS);
    const kill =
      durationS !== undefined
        ? setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, durationS * 1000)
        : undefined;
    const done = (r: WorkloadResult): void => {
      clearInterval(tick);
      if (kill) clearTimeout(kill);
      resolve(r);
    };
    child.on('error', (e) => done({ command: cmd, exitCode: 127, signal: null, timedOut: false, error: e.message }));
    child.on('exit', (code, signal) => done({ command: cmd, exitCode: code, signal, timedOut }));
  });
}

export async function checkCommand(argv: string[]): Promise<number> {
  const dash = argv.indexOf('--');
  const workload = dash >= 0 ? argv.slice(dash + 1) : [];
  let a;
  try {
    a = parseArgs({
      args: dash >= 0 ? argv.slice(0, dash) : argv,
      allowPositionals: false,
      strict: true,
      options: {
        ...RUN_OPTIONS,
        thresholds: { type: 'string', short: 't' },
        require: { type: 'string', multiple: true },
        baseline: { type: 'string' },
        'write-baseline': { type: 'string' },
        tolerance: { type: 'string' },
        junit: { type: 'string' },
        json: { type: 'string' },
        duration: { type: 'string' },
        replay: { type: 'string' },
        partial: { type: 'boolean' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new CommandError(`${(e as Error).message}\n${CHECK_USAGE}`);
  }
  const v = a.values;
  if (v.help) {
    process.stdout.write(`${CHECK_USAGE}\n`);
    return 0;
  }
  if (dash >= 0 && workload.length === 0) throw new CommandError('nothing after --: give the workload command');
  if (v.replay && (workload.length || v.duration)) throw new CommandError('--replay judges a recorded run: it takes no workload or --duration');
  if (!v.replay && !workload.length && v.duration === undefined)
    throw new CommandError(`give a workload after --, --duration S, or --replay FILE\n${CHECK_USAGE}`);
  if (v.partial && !v.replay) throw new CommandError('--partial goes with --replay');
  const duration = v.duration !== undefined ? parseSeconds(v.duration, '--duration') : undefined;

  let th: Thresholds;
  try {
    th = v.thresholds ? loadThresholds(v.thresholds) : thresholdsSchema.parse({});
  } catch (e) {
    if (e instanceof ThresholdsError) throw new CommandError(e.message);
    throw e;
  }
  if (v.tolerance !== undefined) {
    const t = Number(v.tolerance);
    if (!Number.isFinite(t) || t < 0) throw new CommandError(`--tolerance ${v.tolerance}: expected a number >= 0 (0.25 = 25%)`);
    th.baseline.tolerance = t;
  }
  const required = [...new Set([...th.require, ...(v.require ?? [])])];
  const known = new Set(allProbeNames());
  for (const p of required) if (!known.has(p)) throw new CommandError(`--require ${p}: unknown probe (known: ${[...known].join(', ')})`);
  for (const m of th.baseline.metrics ?? []) if (!metricByName(m)) throw new CommandError(`baseline metric ${m} is not in the catalog`);
  const baseline = v.baseline
    ? (() => {
        try {
          return loadBaseline(v.baseline);
        } catch (e) {
          throw new CommandError((e as Error).message);
        }
      })()
    : undefined;

  let agent: Agent;
  let kernel: string;
  const t0 = process.hrtime.bigint();
  const elapsed = (): number => Number(process.hrtime.bigint() - t0) / 1e9;
  let wl: WorkloadResult | undefined;
  if (v.replay) {
    logLevel(v['log-level'] ?? 'error');
    const trace = openTrace(v.replay, !!v.partial);
    const r = replayAgent(trace);
    agent = r.agent;
    kernel = trace.header.kernel;
    agent.start();
    await r.source.play(() => agent.collect());
  } else {
    const cfg = runConfig({ ...v, 'log-level': v['log-level'] ?? 'error' });
    preflight(cfg);
    agent = new Agent(cfg);
    kernel = agent.source.build.kernel;
    agent.start();
    await agent.collect();
    const tty = process.stderr.isTTY;
    let lastLine = 0;
    const progress = async (): Promise<void> => {
      await agent.collect();
      if (v.quiet) return;
      const line = `check: ${elapsed().toFixed(0)}s elapsed, ${eventsSeen(agent.store)} events, ${racesSeen(agent.store)} races`;
      if (tty) process.stderr.write(`\r\u001b[K${line}`);
      else if (elapsed() - lastLine >= 5 || lastLine === 0) {
        lastLine = elapsed();
        process.stderr.write(`${line}\n`);
      }
    };
    if (workload.length) wl = await runWorkload(workload, duration, progress);
    else {
      const tick = setInterval(() => void progress(), PROGRESS_MS);
      await new Promise((r) => setTimeout(r, duration! * 1000));
      clearInterval(tick);
    }
    if (tty && !v.quiet) process.stderr.write('\n');
    await agent.collect();
  }

  const rules = [...evaluateRequire(required, agent.status), ...expandRules(th).map((r) => evaluateRule(r, agent.store))];
  const figures = summarize(agent.store, th.baseline.metrics);
  const report: CheckReport = {
    verdict: 'pass',
    exitCode: 0,
    source: v.replay ? 'replay' : 'live',
    trace: v.replay,
    elapsedSeconds: elapsed(),
    events: eventsSeen(agent.store),
    races: racesSeen(agent.store),
    workload: wl,
    rules,
  };
  if (baseline) report.baseline = { file: v.baseline!, figures: compare(baseline, figures, th.baseline) };
  await agent.stop();
  if (v['write-baseline']) {
    writeBaseline(v['write-baseline'], { agent: VERSION, kernel, figures });
    report.wroteBaseline = v['write-baseline'];
  }
  const regressed = rules.some((r) => r.outcome === 'fail') || !!report.baseline?.figures.some((f) => f.regressed);
  if (workloadFailed(wl)) Object.assign(report, { verdict: 'workload-failed', exitCode: 2 });
  else if (regressed) Object.assign(report, { verdict: 'regression', exitCode: 1 });
  try {
    if (v.junit) fs.writeFileSync(v.junit, formatJunit(report));
    if (v.json) fs.writeFileSync(v.json, formatJson(report));
  } catch (e) {
    throw new CommandError(`cannot write the report: ${(e as Error).message}`);
  }
  process.stdout.write(formatSummary(report));
  return report.exitCode;
}
