// `hvwatch top`'s renderer: a frame's rows to lines of text that fit the terminal width
// (80 columns when not a terminal). Pure; ANSI attributes only when rendering for a TTY
// (the caller adds the clear-screen), and never any control character taken from the data.
import type { Frame, Row } from './model.js';

export interface RenderOptions {
  /** The agent's /metrics URL, for the header. */
  url: string;
  /** When the frame's second scrape was taken. */
  time: Date;
  /** Terminal columns (default 80). */
  width?: number;
  /** Terminal rows: when set, rows that do not fit are cut and counted on the last line. */
  height?: number;
  /** Rendering for a terminal: reverse-video column header, bold VM rows. */
  tty?: boolean;
  /** A problem to show under the header (live mode keeps the last frame when a scrape fails). */
  error?: string;
}

const RATE_W = 10;
const SHARE_W = 7;
const TOTAL_W = 10;
const GAP = '  ';
const MIN_NAME_W = 12;

const ESC = '\x1b[';
const REVERSE = `${ESC}7m`;
const BOLD = `${ESC}1m`;
const RESET = `${ESC}0m`;

/** Label values come from process names and cmdlines: no control characters reach the terminal. */
export function sanitize(s: string): string {
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

function fit(s: string, w: number): string {
  return s.length <= w ? s : w <= 1 ? s.slice(0, w) : `${s.slice(0, w - 1)}…`;
}

const padR = (s: string, w: number): string => fit(s, w).padEnd(w);
const padL = (s: string, w: number): string => fit(s, w).padStart(w);

/** Compact form with an SI suffix (1.2k, 345M, 9.0T), for numbers too wide for a column. */
function si(n: number): string {
  let v = n;
  for (const u of ['k', 'M', 'G', 'T', 'P', 'E']) {
    v /= 1000;
    if (v < 999.5) return `${v < 99.95 ? v.toFixed(1) : Math.round(v)}${u}`;
  }
  return n.toExponential(1);
}

/** A rate per second: one decimal below 100/s, whole numbers above, k/M/G when too wide. */
export function formatRate(r: number, w = RATE_W): string {
  if (r === 0) return '0';
  const s = r < 100 ? r.toFixed(1) : String(Math.round(r));
  return s.length <= w ? s : si(r);
}

export function formatCount(n: number, w = TOTAL_W): string {
  const s = String(Math.round(n));
  return s.length <= w ? s : si(n);
}

function hhmmss(d: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function render(frame: Frame, opts: RenderOptions): string[] {
  const width = Math.max(opts.width ?? 80, MIN_NAME_W + RATE_W + SHARE_W + TOTAL_W + 3 * GAP.length);
  const nameW = width - RATE_W - SHARE_W - TOTAL_W - 3 * GAP.length;
  const tty = !!opts.tty;

  const vmWord = frame.vms === 1 ? 'VM' : 'VMs';
  const head = `hvwatch top  ${hhmmss(opts.time)}  ${frame.vms} ${vmWord}  ${formatRate(frame.rate)} exits/s  `;
  // The URL is what gets shortened when the header does not fit.
  const lines = [fit(head + sanitize(opts.url), width)];
  if (opts.error) lines.push(fit(`! ${sanitize(opts.error)}`, width));
  if (frame.rows.some((r) => r.kind === 'vm' && r.basis === 'userspace')) {
    lines.push(fit('* VM total counts userspace exits: no kvm_exit samples for it', width));
  }
  if (frame.vms === 0) lines.push(fit('no VMs: no hvwatch_kvm_* samples (no VM running, or the kvm probes are off)', width));
  lines.push('');

  const colHead = `${padR('VM / EXIT REASON', nameW)}${GAP}${padL('EXITS/S', RATE_W)}${GAP}${padL('SHARE', SHARE_W)}${GAP}${padL('TOTAL', TOTAL_W)}`;
  lines.push(tty ? `${REVERSE}${colHead}${RESET}` : colHead);

  const rowLine = (r: Row): string => {
    const name = r.depth === 0 ? `${sanitize(r.name)}${r.basis === 'userspace' ? ' *' : ''}` : `  ${sanitize(r.name)}`;
    const share = r.kind === 'vm' ? '' : r.share === null ? '-' : `${r.share.toFixed(1)}%`;
    const text = `${padR(name, nameW)}${GAP}${padL(formatRate(r.rate), RATE_W)}${GAP}${padL(share, SHARE_W)}${GAP}${padL(formatCount(r.total), TOTAL_W)}`;
    return tty && r.depth === 0 ? `${BOLD}${text}${RESET}` : text;
  };

  let rows = frame.rows;
  let cut = 0;
  if (opts.height !== undefined) {
    const room = Math.max(1, opts.height - lines.length - 1);
    if (rows.length > room) {
      cut = rows.length - (room - 1);
      rows = rows.slice(0, room - 1);
    }
  }
  for (const r of rows) lines.push(rowLine(r));
  if (cut) lines.push(fit(`… ${cut} more rows (raise the terminal, or lower --limit)`, width));
  return lines;
}
