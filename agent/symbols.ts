// Kernel stack addresses -> "function+0xoffset", from /proc/kallsyms (read once, lazily;
// root sees real addresses, others see zeros and get hex addresses back).
import { readFileSync } from 'node:fs';

let addrs: BigUint64Array | undefined;
let names: string[] = [];
const textSymbols = new Set<string>();

function load(): void {
  if (addrs) return;
  const rows: [bigint, string][] = [];
  try {
    for (const line of readFileSync('/proc/kallsyms', 'utf8').split('\n')) {
      const [a, type, name] = line.split(/\s+/);
      if (!a || !name || !type || !/^[tTwW]$/.test(type)) continue;
      textSymbols.add(name);
      const v = BigInt(`0x${a}`);
      if (v !== 0n) rows.push([v, name]);
    }
  } catch {
    /* unreadable: fall back to raw addresses */
  }
  rows.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  addrs = BigUint64Array.from(rows.map((r) => r[0]));
  names = rows.map((r) => r[1]);
}

/** A function the kernel lists in kallsyms (a kprobe target), whatever the caller's view of addresses. */
export function hasKernelSymbol(name: string): boolean {
  load();
  return textSymbols.has(name);
}

export function symbolize(ip: bigint): string {
  load();
  const a = addrs!;
  let lo = 0;
  let hi = a.length - 1;
  if (hi < 0 || ip < a[0]!) return `0x${ip.toString(16)}`;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (a[mid]! <= ip) lo = mid;
    else hi = mid - 1;
  }
  return `${names[lo]}+0x${(ip - a[lo]!).toString(16)}`;
}

/** A BPF_MAP_TYPE_STACK_TRACE value: up to 127 u64 instruction pointers, zero-terminated. */
export function decodeStack(raw: Buffer): string[] {
  const out: string[] = [];
  for (let off = 0; off + 8 <= raw.length; off += 8) {
    const ip = raw.readBigUInt64LE(off);
    if (ip === 0n) break;
    out.push(symbolize(ip));
  }
  return out;
}
