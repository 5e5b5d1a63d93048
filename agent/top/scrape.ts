// `hvwatch top`'s input: one GET of an agent's /metrics, parsed. Failures are a TopError
// whose message is the one line the CLI prints.
import { performance } from 'node:perf_hooks';
import { ExpositionError, parseExposition, type Sample } from '../export/parse.js';

export class TopError extends Error {
  constructor(
    message: string,
    readonly kind: 'unreachable' | 'http' | 'parse',
  ) {
    super(message);
    this.name = 'TopError';
  }
}

export interface Scrape {
  samples: Sample[];
  /** performance.now() when the response was read, for the interval between two scrapes. */
  at: number;
  /** Wall-clock time of the same moment. */
  time: Date;
}

/** The reason a fetch() could not get a response, as one short phrase. */
export function fetchFailure(e: unknown, timeoutMs: number): string {
  const err = e as Error & { cause?: unknown };
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return `no response in ${timeoutMs / 1000} s`;
  let c = err?.cause as (Error & { code?: string; errors?: Error[] }) | undefined;
  if (c && !c.message && c.errors?.length) c = c.errors[0] as typeof c;
  const msg = c?.message || c?.code || err?.message || String(e);
  return msg.replace(/\s+/g, ' ').trim();
}

/** The first line of an error response's body, as the agent's own reason. */
const snippet = (body: string): string => {
  const l = body.split('\n')[0]!.trim();
  return l ? `: ${l.slice(0, 100)}` : '';
};

/** GET url and parse the text exposition. */
export async function scrape(url: string, timeoutMs = 5000): Promise<Scrape> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, {
      headers: { accept: 'text/plain;version=0.0.4;q=1,*/*;q=0.1' },
      signal: AbortSignal.timeout(timeoutMs),
      redirect: 'follow',
    });
    text = await res.text();
  } catch (e) {
    throw new TopError(`cannot reach ${url}: ${fetchFailure(e, timeoutMs)}`, 'unreachable');
  }
  const at = performance.now();
  const time = new Date();
  if (res.status !== 200) {
    throw new TopError(`${url}: HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}${snippet(text)}`, 'http');
  }
  try {
    return { samples: parseExposition(text), at, time };
  } catch (e) {
    if (e instanceof ExpositionError) throw new TopError(`unparseable exposition from ${url}: ${e.message}`, 'parse');
    throw e;
  }
}
