// `hvwatch top`: a live view of KVM exits per VM, like kvm_stat, computed from two scrapes
// of a running agent's /metrics (no tracing of its own). Exit status: 0 ok, 2 usage error,
// agent unreachable or its exposition unreadable (one line on stderr).
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildFrame, type Frame } from './model.js';
import { render, sanitize } from './render.js';
import { scrape, TopError, type Scrape } from './scrape.js';

export const DEFAULT_URL = 'http://127.0.0.1:9477/metrics';

export const TOP_USAGE = `usage: hvwatch top [options]
  live KVM exit rates per VM and exit reason from a running agent's /metrics
options:
      --url URL       the agent's metrics URL (default ${DEFAULT_URL})
      --interval S    seconds between scrapes (default 2)
      --limit N       rows per VM for each kind of exit (default 10)
      --once          print one frame after two scrapes and exit
                      (what it does anyway when stdout is not a terminal)
      --json          print the frame as JSON (implies --once)`;

export interface TopOptions {
  url: string;
  interval: number;
  limit: number;
  once: boolean;
  json: boolean;
}

class UsageError extends Error {}

function parse(argv: string[]): TopOptions | 'help' {
  let a;
  try {
    a = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        url: { type: 'string' },
        interval: { type: 'string' },
        limit: { type: 'string' },
        once: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = a.values;
  if (v.help) return 'help';
  let url: URL;
  try {
    url = new URL(v.url ?? DEFAULT_URL);
  } catch {
    throw new UsageError(`--url ${v.url}: not a URL (expected like ${DEFAULT_URL})`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new UsageError(`--url ${v.url}: expected an http:// or https:// URL`);
  if (url.pathname === '/') url.pathname = '/metrics';
  const interval = v.interval === undefined ? 2 : Number(v.interval);
  if (!Number.isFinite(interval) || interval < 0.1 || interval > 3600 || v.interval?.trim() === '') {
    throw new UsageError(`--interval ${v.interval}: expected seconds between 0.1 and 3600`);
  }
  const limit = v.limit === undefined ? 10 : Number(v.limit);
  if (!Number.isInteger(limit) || limit < 1 || v.limit?.trim() === '') throw new UsageError(`--limit ${v.limit}: expected a positive integer`);
  return { url: url.href, interval, limit, once: !!v.once, json: !!v.json };
}

function fail(msg: string): number {
  process.stderr.write(`hvwatch top: ${sanitize(msg)}\n`);
  return 2;
}

function frameOf(a: Scrape, b: Scrape, limit: number): Frame {
  return buildFrame(a.samples, b.samples, Math.max(1e-3, (b.at - a.at) / 1000), { limit });
}

async function once(o: TopOptions): Promise<number> {
  const a = await scrape(o.url);
  await sleep(o.interval * 1000);
  const b = await scrape(o.url);
  const f = frameOf(a, b, o.limit);
  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({ time: b.time.toISOString(), url: o.url, seconds: f.seconds, vms: f.vms, rate: f.rate, rows: f.rows }, null, 2)}\n`,
    );
  } else {
    const tty = process.stdout.isTTY === true;
    const lines = render(f, { url: o.url, time: b.time, tty, width: (tty && process.stdout.columns) || 80 });
    process.stdout.write(`${lines.join('\n')}\n`);
  }
  return 0;
}

const CLEAR = '\x1b[H\x1b[2J';
const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';

/** Redraws in place until SIGINT/SIGTERM. A failed scrape after the first is shown on the
 * last frame and retried (the agent may be restarting); the first one is fatal. */
async function live(o: TopOptions): Promise<never> {
  let prev = await scrape(o.url);
  const out = process.stdout;
  const quit = (): never => {
    out.write(`${SHOW_CURSOR}\n`);
    process.exit(0);
  };
  process.on('SIGINT', quit);
  process.on('SIGTERM', quit);
  out.write(`${HIDE_CURSOR}${CLEAR}hvwatch top: scraping ${o.url} every ${o.interval} s (ctrl-c quits)\n`);
  let frame: Frame | undefined;
  let time = prev.time;
  for (;;) {
    await sleep(Math.max(0, o.interval * 1000 - (performance.now() - prev.at)));
    let error: string | undefined;
    try {
      const cur = await scrape(o.url);
      frame = frameOf(prev, cur, o.limit);
      time = cur.time;
      prev = cur;
    } catch (e) {
      if (!(e instanceof TopError)) throw e;
      error = `${e.message} (retrying)`;
    }
    const f = frame ?? { seconds: o.interval, vms: 0, rate: 0, rows: [] };
    const lines = render(f, { url: o.url, time, tty: true, width: out.columns || 80, height: out.rows || undefined, error });
    out.write(`${CLEAR}${lines.join('\n')}`);
  }
}

/** Runs `hvwatch top` with the arguments after "top"; resolves to the exit status. */
export async function top(argv: string[]): Promise<number> {
  let o;
  try {
    o = parse(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`hvwatch top: ${e.message}\n${TOP_USAGE}\n`);
      return 2;
    }
    throw e;
  }
  if (o === 'help') {
    process.stdout.write(`${TOP_USAGE}\n`);
    return 0;
  }
  try {
    if (o.once || o.json || process.stdout.isTTY !== true) return await once(o);
    return await live(o);
  } catch (e) {
    if (e instanceof TopError) return fail(e.message);
    throw e;
  }
}
