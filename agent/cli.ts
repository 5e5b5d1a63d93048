// bin/hvwatch: `run` (default) serves metrics; `probes` reports what attaches here;
// `top` shows a running agent's KVM exit rates (agent/top/main.ts, its own options).
// Exit status: 0 ok, 1 `probes --strict` found a probe with nothing attached, 2 usage,
// config, privilege or kernel-support error (always one line on stderr).
import { parseArgs } from 'node:util';
import type { Server } from 'node:http';
import { Agent, VERSION } from './agent.js';
import { ConfigError, loadConfig, parseListen, type Config } from './config.js';
import { btfProblem, missingCapability } from './preflight.js';
import { serveAgent } from './export/server.js';
import { log, setLogLevel } from './log.js';
import { allProbes } from './families.js';
import { formatProbeReport } from './report.js';
import { top } from './top/main.js';
import { isCommand, runCommand } from './commands/index.js';
import { hostname } from 'node:os';
import { InProcessAlerting } from './alerting/index.js';
import { M } from './catalog.js';
import { WebConfigError } from './export/webconfig.js';
import { dropCapabilities, privilegedThreads } from './privileges.js';

const USAGE = `usage: hvwatch [run|probes|top|check|record|replay|version] [options]
  run                 attach probes and serve /metrics (default)
  check [-t FILE] [--baseline FILE] [--junit FILE] [--json FILE] [-- COMMAND...]
                      CI regression mode: judge a workload's run, or a trace (hvwatch check --help)
  record FILE [--interval S] [--max-bytes N] [-- COMMAND...]
                      run and write a trace of the probes' maps and events (hvwatch record --help)
  replay FILE [--listen ADDR] [--at N] [--partial] [--print]
                      serve a trace's metrics through the same pipeline (hvwatch replay --help)
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
      --log-level L   debug|info|warn|error
      --web.config.file FILE
                      TLS and basic auth for every endpoint (exporter-toolkit format; README
                      "Securing the endpoint"); re-read on change and on SIGHUP
      --web.max-requests N
                      requests handled at once, more get 503 (default 40, 0 no cap)
      --drop-capabilities
                      drop every capability once the probes are attached`;

class UsageError extends Error {}

function die(msg: string, code = 2): never {
  process.stderr.write(`hvwatch: ${msg}\n`);
  process.exit(code);
}

function parse(argv: string[]): { cmd: string; cfg: Config; json: boolean; strict: boolean } {
  let a;
  try {
    a = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string', short: 'c' },
        listen: { type: 'string', short: 'l' },
        hot: { type: 'string', multiple: true },
        disable: { type: 'string', multiple: true },
        'bpf-stats': { type: 'boolean' },
        'log-level': { type: 'string' },
        'web.config.file': { type: 'string' },
        'web.max-requests': { type: 'string' },
        'drop-capabilities': { type: 'boolean' },
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
  const probes = allProbes(); // each call makes every family's declarations
  const known = new Set(probes.map((p) => p.name));
  for (const n of [...(v.hot ?? []), ...(v.disable ?? [])]) {
    if (n !== 'all' && !known.has(n)) throw new UsageError(`unknown probe ${n} (known: ${[...known].join(', ')})`);
  }
  for (const n of [...cfg.probes.hot, ...cfg.probes.disable, ...Object.keys(cfg.probes.attach)]) {
    if (n !== 'all' && !known.has(n)) throw new ConfigError(`${v.config}: key probes: unknown probe ${n} (known: ${[...known].join(', ')})`);
  }
  for (const [name, cands] of Object.entries(cfg.probes.attach)) {
    const spec = probes.find((p) => p.name === name)!;
    cands.forEach((c, i) => {
      if (!spec.candidates.some((d) => d.attach === c.attach)) {
        throw new ConfigError(
          `${v.config}: key probes.attach.${name}.${i}.attach: probe ${name} has no ${c.attach} tier (it has ${[...new Set(spec.candidates.map((d) => d.attach))].join(', ')})`,
        );
      }
    });
  }
  cfg.probes.hot.push(...(v.hot ?? []));
  cfg.probes.disable.push(...(v.disable ?? []));
  if (v['bpf-stats']) cfg.bpf.stats = true;
  if (v['web.config.file'] !== undefined) cfg.web.configFile = v['web.config.file'];
  if (v['web.max-requests'] !== undefined) {
    if (!/^\d+$/.test(v['web.max-requests'])) throw new UsageError(`--web.max-requests ${v['web.max-requests']}: expected a number (0: no cap)`);
    cfg.web.maxRequests = Number(v['web.max-requests']);
  }
  if (v['drop-capabilities']) cfg.privileges.dropCapabilities = true;
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
  const { port } = parseListen(cfg.listen);
  let server: Server;
  try {
    server = await serveAgent(agent, cfg);
  } catch (e) {
    // A bad web config file is one line naming the key (checked before listening).
    if (e instanceof WebConfigError) die(e.message);
    die(`cannot listen on ${cfg.listen}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  agent.start();
  await applyPrivileges(cfg, agent);
  // Host-local critical conditions go to Alertmanager without waiting for a scrape.
  let alerting: InProcessAlerting | undefined;
  if (cfg.alerting.alertmanagers.length) {
    const node = hostname();
    alerting = new InProcessAlerting(agent.store, cfg.alerting, {
      node,
      instance: `${node}:${port}`,
      job: 'hvwatch',
      generatorURL: `http://${node}:${port}/api/races`,
      metrics: agent.store,
    });
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

async function applyPrivileges(cfg: Config, agent: Agent): Promise<void> {
  agent.store.set(M.capabilitiesDropped, {}, 0);
  if (!cfg.privileges.dropCapabilities) {
    agent.store.set(M.privilegedThreads, {}, privilegedThreads());
    return;
  }
  const r = await dropCapabilities({ user: cfg.privileges.user, warm: () => agent.services.symbols.has('') });
  agent.store.set(M.capabilitiesDropped, {}, r.dropped ? 1 : 0);
  agent.store.set(M.privilegedThreads, {}, r.privilegedThreads);
  if (r.dropped)
    log(r.problems.length ? 'warn' : 'info', 'capabilities dropped', { privileged_threads: r.privilegedThreads, problems: r.problems.join('; ') || undefined });
  else log('error', 'capabilities not dropped', { problems: r.problems.join('; ') });
}

async function probes(cfg: Config, json: boolean, strict: boolean): Promise<number> {
  const agent = new Agent(cfg);
  agent.start();
  const st = agent.status;
  await agent.stop();
  process.stdout.write(
    json
      ? `${JSON.stringify(
          st.map((s) => ({
            name: s.name,
            family: s.family,
            enabled: s.enabled,
            skipped: s.skipped ?? null,
            candidates: s.candidates.map((c) => ({ attach: c.attach, target: c.target, ok: c.ok, error: c.error ?? null, log: c.log ?? [] })),
            chosen: s.chosen,
          })),
          null,
          2,
        )}\n`
      : formatProbeReport(st),
  );
  return strict && st.some((s) => s.enabled && !s.chosen) ? 1 : 0;
}

async function main(): Promise<void> {
  if (process.argv[2] === 'top') {
    // A client of a running agent's /metrics: none of run's options, config or privileges.
    process.exitCode = await top(process.argv.slice(3));
    return;
  }
  if (isCommand(process.argv[2])) {
    // check, record, replay (agent/commands): each parses its own options.
    // Servers and timers of a finished command must not hold the process; stdout is a
    // file or pipe, both written synchronously on Linux, so nothing is cut.
    process.exit(await runCommand(process.argv[2], process.argv.slice(3)));
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
