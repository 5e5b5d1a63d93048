// logfmt lines on stderr: one line per event, greppable, parseable by Loki/Vector.
type Level = 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
let threshold: Level = (process.env.HVWATCH_LOG_LEVEL as Level | undefined) ?? 'info';

export function setLogLevel(l: Level): void {
  threshold = l;
}

function fmt(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /^[\w./:@+-]+$/.test(s ?? '') ? s! : JSON.stringify(s);
}

export function log(level: Level, msg: string, fields: Record<string, unknown> = {}): void {
  if (ORDER[level] < ORDER[threshold]) return;
  let line = `ts=${new Date().toISOString()} level=${level} msg=${fmt(msg)}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${fmt(v)}`;
  process.stderr.write(line + '\n');
}

/** Whether a line at `level` would be written (callers that limit lines count only those). */
export function logEnabled(level: Level): boolean {
  return ORDER[level] >= ORDER[threshold];
}
