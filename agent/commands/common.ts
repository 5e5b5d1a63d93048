// What `check`, `record` and `replay` share: run-style options into a Config, one-line
// errors with exit status 2, the trace file opened and checked, and a replaying agent.
import * as fs from 'node:fs';
import type { Server } from 'node:http';
import { Agent } from '../agent.js';
import { ConfigError, configSchema, loadConfig, parseListen, type Config } from '../config.js';
import { serveAgent } from '../export/server.js';
import { WebConfigError } from '../export/webconfig.js';
import { log, setLogLevel } from '../log.js';
import { btfProblem, missingCapability } from '../preflight.js';
import { allProbeNames } from '../families.js';
import { readTrace, type Trace } from '../record/reader.js';
import { TraceError } from '../record/format.js';
import { ReplaySource } from '../sources/replay.js';

/** Exit status 2 with one line: a usage, configuration, setup or input error. */
export class CommandError extends Error {
  constructor(
    message: string,
    readonly code = 2,
  ) {
    super(message);
  }
}

export const RUN_OPTIONS = {
  config: { type: 'string', short: 'c' },
  hot: { type: 'string', multiple: true },
  disable: { type: 'string', multiple: true },
  'bpf-stats': { type: 'boolean' },
  'log-level': { type: 'string' },
} as const;

export const RUN_OPTIONS_HELP = `  -c, --config FILE   YAML config (README "Configuration")
      --hot NAME      opt into a hot probe (repeatable; "all" for every one)
      --disable NAME  do not attach this probe (repeatable)
      --bpf-stats     account BPF program run time (BPF_ENABLE_STATS)
      --log-level L   debug|info|warn|error`;

export interface RunValues {
  config?: string;
  hot?: string[];
  disable?: string[];
  'bpf-stats'?: boolean;
  'log-level'?: string;
  listen?: string;
}

export function logLevel(v: string | undefined): void {
  if (v === undefined) return;
  if (!['debug', 'info', 'warn', 'error'].includes(v)) throw new CommandError(`--log-level ${v}: expected debug|info|warn|error`);
  setLogLevel(v as Config['logLevel']);
}

export function runConfig(v: RunValues): Config {
  let cfg: Config;
  try {
    cfg = loadConfig(v.config);
    if (v.listen !== undefined) cfg.listen = v.listen;
    parseListen(cfg.listen);
  } catch (e) {
    if (e instanceof ConfigError) throw new CommandError(e.message);
    throw e;
  }
  const known = new Set(allProbeNames());
  for (const n of [...(v.hot ?? []), ...(v.disable ?? []), ...cfg.probes.hot, ...cfg.probes.disable]) {
    if (n !== 'all' && !known.has(n)) throw new CommandError(`unknown probe ${n} (known: ${[...known].join(', ')})`);
  }
  cfg.probes.hot.push(...(v.hot ?? []));
  cfg.probes.disable.push(...(v.disable ?? []));
  if (v['bpf-stats']) cfg.bpf.stats = true;
  logLevel(v['log-level'] ?? cfg.logLevel);
  return cfg;
}

export function preflight(cfg: Config): void {
  const cap = missingCapability();
  if (cap) throw new CommandError(`missing capability ${cap}: run as root or grant it (see README "Privileges")`);
  const btf = btfProblem(cfg.bpf.btfPath);
  if (btf) throw new CommandError(btf);
}

/** "100M", "2G", "65536" -> bytes. */
export function parseBytes(s: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]i?[bB]?)?$/.exec(s);
  if (!m) throw new CommandError(`${flag} ${s}: expected a size such as 65536, 512k, 100M or 2G`);
  const mult = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').charAt(0).toLowerCase()] ?? 1;
  const n = Math.floor(Number(m[1]) * mult);
  if (n <= 0) throw new CommandError(`${flag} ${s}: must be above 0`);
  return n;
}

export function parseSeconds(s: string, flag: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n <= 0) throw new CommandError(`${flag} ${s}: expected a number of seconds above 0`);
  return n;
}

/** Reads and checks a whole trace. Problems are one line naming the file, the byte offset
 * and what is wrong; with `partial` a damaged trace's readable prefix is kept (and the
 * problem logged). */
export function openTrace(file: string, partial: boolean): Trace {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new CommandError(`trace ${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let trace: Trace;
  try {
    trace = readTrace(buf, { partial });
  } catch (e) {
    if (e instanceof TraceError) throw new CommandError(`trace ${file}: ${e.message}${partial ? '' : ' (--partial replays the readable prefix)'}`);
    throw e;
  }
  if (trace.error) {
    log('warn', 'trace is damaged; replaying the readable prefix (--partial)', { file, error: trace.error.message, records: trace.records.length });
  }
  return trace;
}

/** A replaying agent with the recording's cardinality budget, so labels fold the same way. */
export function replayAgent(trace: Trace): { agent: Agent; source: ReplaySource } {
  const cfg = configSchema.parse({ cardinality: trace.header.cardinality });
  const agent = new Agent(cfg, undefined, (families, services) => new ReplaySource(trace, families, services));
  const source = agent.source;
  if (!(source instanceof ReplaySource)) throw new Error('replay: the agent made no replay source');
  return { agent, source };
}

/** Snapshot index for --at: 0-based, negative counts from the end. */
export function snapshotIndex(trace: Trace, at: string | undefined): number | undefined {
  if (at === undefined) return undefined;
  const n = trace.records.filter((r) => r.type === 'snapshot').length;
  if (!/^-?\d+$/.test(at)) throw new CommandError(`--at ${at}: expected a snapshot index (0-based; negative counts from the end)`);
  const i = Number(at) < 0 ? n + Number(at) : Number(at);
  if (i < 0 || i >= n) throw new CommandError(`--at ${at}: the trace has ${n} snapshots`);
  return i;
}

/** The same endpoint as `run` (web config, limits): agent/export/server.ts serveAgent. */
export async function serve(agent: Agent, cfg: Config): Promise<Server> {
  try {
    return await serveAgent(agent, cfg);
  } catch (e) {
    if (e instanceof WebConfigError) throw new CommandError(e.message);
    throw new CommandError(`cannot listen on ${cfg.listen}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Resolves on the first SIGTERM/SIGINT. */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: string) => () => resolve(sig);
    process.once('SIGTERM', on('SIGTERM'));
    process.once('SIGINT', on('SIGINT'));
  });
}
