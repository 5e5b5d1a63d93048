// Runs the real agent (bin/hvwatch) as a child process and scrapes it over HTTP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { writeFileSync, mkdtempSync, readdirSync, readlinkSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseExposition as parseExpositionText } from '../../agent/export/parse.js';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const HVWATCH = join(ROOT, 'bin/hvwatch');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

export function writeConfig(yaml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'hvwatch-test-'));
  const f = join(dir, 'config.yaml');
  writeFileSync(f, yaml);
  return f;
}

function bpftool(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync('bpftool', args, { encoding: 'utf8' });
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The agent's text exposition parsed by agent/export/parse.ts (the parser `hvwatch top` uses). */
export function parseExposition(text: string): Sample[] {
  return parseExpositionText(text);
}

export function pick(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

export function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const p = pick(samples, name, labels);
  return p.length ? p.reduce((a, s) => a + s.value, 0) : undefined;
}

export class AgentProcess {
  stderr = '';
  private exited: Promise<number | null>;
  constructor(
    readonly proc: ChildProcess,
    readonly port: number,
  ) {
    proc.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(args: string[] = [], timeoutMs = 20_000): Promise<AgentProcess> {
    const port = await freePort();
    const proc = spawn(HVWATCH, ['run', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const a = new AgentProcess(proc, port);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`agent exited ${proc.exitCode}: ${a.stderr}`);
      try {
        const r = await fetch(`${a.url}/readyz`);
        if (r.status === 200) return a;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) {
        await a.stop();
        throw new Error(`agent not ready in ${timeoutMs} ms: ${a.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async scrape(accept?: string): Promise<Sample[]> {
    return parseExposition(await this.scrapeText(accept));
  }

  async scrapeText(accept?: string): Promise<string> {
    const get = () => fetch(`${this.url}/metrics`, accept ? { headers: { accept } } : {});
    // A test that blocked its event loop (spawnSync) past the server's keep-alive timeout gets
    // the pooled socket the agent already closed ("other side closed"): one retry, new socket.
    const r = await get().catch((e: { cause?: { code?: string } }) => {
      if (e.cause?.code === 'UND_ERR_SOCKET') return get();
      throw e;
    });
    if (r.status !== 200) throw new Error(`/metrics ${r.status}`);
    return r.text();
  }

  /** Whether this agent's own BPF map `name` holds the u64 key. The map is found through the
   * process's fds (fdinfo map_id), not by name host-wide: other agents on the machine (tests
   * running in parallel) have maps of the same name with their own entries. */
  holdsMapKey(name: string, key: bigint): boolean {
    const ids = readdirSync(`/proc/${this.proc.pid}/fd`).flatMap((fd) => {
      try {
        if (readlinkSync(`/proc/${this.proc.pid}/fd/${fd}`) !== 'anon_inode:bpf-map') return [];
        const m = /^map_id:\s+(\d+)$/m.exec(readFileSync(`/proc/${this.proc.pid}/fdinfo/${fd}`, 'utf8'));
        return m ? [m[1]!] : [];
      } catch {
        return []; /* an fd closed while we looked */
      }
    });
    const named = [...new Set(ids)].filter((id) => (JSON.parse(bpftool('-j', 'map', 'show', 'id', id).stdout) as { name?: string }).name === name);
    if (named.length !== 1) throw new Error(`agent ${this.proc.pid} holds ${named.length} maps named ${name}`);
    const hex = [...Array(8).keys()].map((i) => ((key >> BigInt(8 * i)) & 0xffn).toString(16).padStart(2, '0'));
    const r = bpftool('map', 'lookup', 'id', named[0]!, 'key', 'hex', ...hex);
    if (r.status === 0) return true;
    if (/Not found/.test(r.stdout + r.stderr)) return false;
    throw new Error(`bpftool map lookup id ${named[0]}: ${r.stderr}`);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.proc.exitCode === null) this.proc.kill(signal);
    return this.exited;
  }
}

/** Runs the CLI to completion (for exit-status tests). Resolves on 'close', not 'exit': 'exit' can fire before the pipes are drained, which
 * cut a JSON report short once in CI. */
export function runCli(
  args: string[],
  opts: { wrap?: string[]; env?: Record<string, string> } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const cmd = opts.wrap ? opts.wrap[0]! : HVWATCH;
    const argv = opts.wrap ? [...opts.wrap.slice(1), HVWATCH, ...args] : args;
    const p = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export async function until<T>(fn: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** An in-process agent with every family's maps and test programs loaded and nothing
 * attached: for driving handler logic through BPF_PROG_TEST_RUN. */
export async function mapsOnlyAgent(bpf: Record<string, number> = {}): Promise<import('../../agent/agent.js').Agent> {
  const { Agent } = await import('../../agent/agent.js');
  const { configSchema } = await import('../../agent/config.js');
  const { allProbeNames } = await import('../../agent/families.js');
  const a = new Agent(configSchema.parse({ probes: { disable: allProbeNames() }, bpf }));
  a.start();
  return a;
}
