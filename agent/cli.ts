// bin/hvwatch: `run` (default) serves metrics; `probes` reports what attaches here;
// `top` shows a running agent's KVM exit rates (agent/top/main.ts, its own options).
// Exit status: 0 ok, 1 `probes --strict` found a probe with nothing attached, 2 usage,
// config, privilege or kernel-support error (always one line on stderr).
import { parseArgs } from 'node:util';
import type { Server } from 'node:http';
import { Agent, VERSION } from './agent.js';
import { ConfigError, loadConfig, parseListen, type Config } from './config.js';
import { btfProblem, missingCapability } from './preflight.js';
import { buildApp, listen } from './export/server.js';
import { log, setLogLevel } from './log.js';
import { allProbeNames, FAMILIES } from './probes/index.js';
import { formatProbeReport } from './report.js';
import { top } from './top/main.js';
import { hostname } from 'node:os';
import { InProcessAlerting } from './alerting/index.js';

const USAGE = `usage: hvwatch [run|probes|top|version] [options]
  run                 attach probes and serve /metrics (default)
  probes [--json] [--strict]
                      attach every enabled probe once, report candidates and choices, detach
  top [--url URL] [--interval S] [--limit N] [--once] [--json]
                      live KVM exit rates per VM from a running agent (hvwatch top --help)
options:
  -c, --config FILE   YAML config (see README "Configuration")
  -l, --listen ADDR   listen address, host:port or :port (default :9477)
      --hot NAME      opt into a hot probe (repeatable; "all" for every one)
      --disable NAME  do not attach this probe (repeatable)
      --bpf-stats     account BPF program run time while running (BPF_ENABLE_STATS)
      --log-level L   debug|info|warn|error`;

class UsageError extends Error {}

function die(msg: string, code = 2): never {
  process.stderr.write(`hvwatch: ${msg}\n`);
  process.exit(code);
}

function parse(argv: string[]): { cmd: string; cfg: Config; json: boolean; strict: boolean } {
  let a;
  try {
    a = parseArgs({
      args: argv, allowPositionals: true, strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        listen: { type: 'string', short: 'l' },
        hot: { type: 'string', multiple: true },
        disable: { type: 'string', multiple: true },
        'bpf-stats': { type: 'boolean' },
        'log-level': { type: 'string' },
        json: { type: 'boolean' },
        strict: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = a.values;
  if (v.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const cmd = a.positionals[0] ?? 'run';
  if (!['run', 'probes', 'version'].includes(cmd)) throw new UsageError(`unknown command ${cmd}`);
  const cfg = loadConfig(v.config);
  if (v.listen !== undefined) cfg.listen = v.listen;
  parseListen(cfg.listen);
  const known = new Set(allProbeNames());
  for (const n of [...(v.hot ?? []), ...(v.disable ?? [])]) {
    if (n !== 'all' && !known.has(n)) throw new UsageError(`unknown probe ${n} (known: ${[...known].join(', ')})`);
  }
  for (const n of [...cfg.probes.hot, ...cfg.probes.disable, ...Object.keys(cfg.probes.attach)]) {
    if (n !== 'all' && !known.has(n)) throw new ConfigError(`${v.config}: key probes: unknown probe ${n} (known: ${[...known].join(', ')})`);
  }
  for (const [name, cands] of Object.entries(cfg.probes.attach)) {
    const spec = FAMILIES.flatMap((f) => f.probes).find((p) => p.name === name)!;
    cands.forEach((c, i) => {
      if (!spec.candidates.some((d) => d.attach === c.attach)) {
        throw new ConfigError(`${v.config}: key probes.attach.${name}.${i}.attach: probe ${name} has no ${c.attach} tier (it has ${[...new Set(spec.candidates.map((d) => d.attach))].join(', ')})`);
      }
    });
  }
  cfg.probes.hot.push(...(v.hot ?? []));
  cfg.probes.disable.push(...(v.disable ?? []));
  if (v['bpf-stats']) cfg.bpf.stats = true;
  if (v['log-level']) {
    if (!['debug', 'info', 'warn', 'error'].includes(v['log-level'])) throw new UsageError(`--log-level ${v['log-level']}: expected debug|info|warn|error`);
    cfg.logLevel = v['log-level'] as Config['logLevel'];
  }
  return { cmd, cfg, json: !!v.json, strict: !!v.strict };
}

function preflight(cfg: Config): void {
  const cap = missingCapability();
  if (cap) die(`missing capability ${cap}: run as root or grant it (see README "Privileges")`);
  const btf = btfProblem(cfg.bpf.btfPath);
  if (btf) die(btf);
}

async function run(cfg: Config): Promise<void> {
  const agent = new Agent(cfg);
  const { host, port } = parseListen(cfg.listen);
  let server: Server;
  try {
    server = await listen(buildApp(agent), host, port);
  } catch (e) {
    die(`cannot listen on ${cfg.listen}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  agent.start();
  // Host-local critical conditions go to Alertmanager without waiting for a scrape.
  let alerting: InProcessAlerting | undefined;
  if (cfg.alerting.alertmanagers.length) {
    const node = hostname();
    alerting = new InProcessAlerting(agent.store, cfg.alerting, { node, instance: `${node}:${port}`, job: 'hvwatch', generatorURL: `http://${node}:${port}/api/races`, metrics: agent.store });
    alerting.start(() => agent.collect());
  }
  const attached = agent.status.filter((s) => s.chosen).length;
  const enabled = agent.status.filter((s) => s.enabled).length;
  log('info', 'hvwatch ready', { version: VERSION, listen: cfg.listen, probes_attached: `${attached}/${enabled}` });
  let stopping = false;
  const stop = async (sig: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log('info', 'stopping', { signal: sig });
    server.close();
    server.closeAllConnections();
    await alerting?.stop();
    await agent.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

async function probes(cfg: Config, json: boolean, strict: boolean): Promise<number> {
  const agent = new Agent(cfg);
  agent.start();
  const st = agent.status;
  await agent.stop();
  process.stdout.write(json ? `${JSON.stringify(st.map((s) => ({
    name: s.name, family: s.family, enabled: s.enabled, skipped: s.skipped ?? null,
    candidates: s.candidates.map((c) => ({ attach: c.attach, target: c.target, ok: c.ok, error: c.error ?? null, log: c.log ?? [] })),
    chosen: s.chosen,
  })), null, 2)}\n` : formatProbeReport(st));
  return strict && st.some((s) => s.enabled && !s.chosen) ? 1 : 0;
}

async function main(): Promise<void> {
  if (process.argv[2] === 'top') {
    // A client of a running agent's /metrics: none of run's options, config or privileges.
    process.exitCode = await top(process.argv.slice(3));
    return;
  }
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) die(`${e.message}\n${USAGE}`);
    if (e instanceof ConfigError) die(e.message);
    throw e;
  }
  setLogLevel(args.cfg.logLevel);
  if (args.cmd === 'version') {
    process.stdout.write(`hvwatch ${VERSION}\n`);
    return;
  }
  preflight(args.cfg);
  if (args.cmd === 'probes') {
    // exitCode, not exit(): a large report on a pipe must drain before the process ends.
    process.exitCode = await probes(args.cfg, args.json, args.strict);
    return;
  }
  await run(args.cfg);
}

main().catch((e: unknown) => die(`fatal: ${(e as Error).message}`));
