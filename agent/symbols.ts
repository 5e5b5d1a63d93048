// /proc/kallsyms for one agent (services.symbols, agent/services/index.ts): the file is read
// once at start-up and its bytes shared by every family's detection (ima and kvmi each
// scanned it, 66-73 ms a read here), then dropped once the agent is ready; the symbol table
// for stacks ("function+0xoffset") is built lazily on first use. Root sees real addresses,
// others see zeros and get hex addresses back.
import { readFileSync } from 'node:fs';

export class KernelSymbols {
  private raw: Buffer | null | undefined;
  private addrs: BigUint64Array | undefined;
  private names: string[] = [];
  private readonly textSymbols = new Set<string>();

  constructor(private readonly file = '/proc/kallsyms') {}

  /** The file's bytes, read on first call and kept until release() (undefined if unreadable). */
  text(): Buffer | undefined {
    if (this.raw === undefined) this.raw = this.read() ?? null;
    return this.raw ?? undefined;
  }

  private read(): Buffer | undefined {
    try {
      return readFileSync(this.file);
    } catch {
      return undefined; // unreadable: symbolize falls back to raw addresses
    }
  }

  /** Drops the start-up copy of the file (some 10 MB); the symbol table, if built, stays. */
  release(): void {
    this.raw = undefined;
  }

  private load(): void {
    if (this.addrs) return;
    const rows: [bigint, string][] = [];
    // The start-up copy if it is still there; otherwise one read, not kept: the table is what stays.
    const text = this.raw ?? this.read();
    for (const line of text ? text.toString('utf8').split('\n') : []) {
      const [a, type, name] = line.split(/\s+/);
      if (!a || !name || !type || !/^[tTwW]$/.test(type)) continue;
      this.textSymbols.add(name);
      const v = BigInt(`0x${a}`);
      if (v !== 0n) rows.push([v, name]);
    }
    rows.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    this.addrs = BigUint64Array.from(rows.map((r) => r[0]));
    this.names = rows.map((r) => r[1]);
  }

  /** A function the kernel lists in kallsyms (a kprobe target), whatever the caller's view of
   * addresses. Also what the CLI calls to build the table before it drops its capabilities. */
  has(name: string): boolean {
    this.load();
    return this.textSymbols.has(name);
  }

  symbolize(ip: bigint): string {
    this.load();
    const a = this.addrs!;
    let lo = 0;
    let hi = a.length - 1;
    if (hi < 0 || ip < a[0]!) return `0x${ip.toString(16)}`;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (a[mid]! <= ip) lo = mid;
      else hi = mid - 1;
    }
    return `${this.names[lo]}+0x${(ip - a[lo]!).toString(16)}`;
  }

  /** A BPF_MAP_TYPE_STACK_TRACE value: up to 127 u64 instruction pointers, zero-terminated. */
  decodeStack(raw: Buffer): string[] {
    const out: string[] = [];
    for (let off = 0; off + 8 <= raw.length; off += 8) {
      const ip = raw.readBigUInt64LE(off);
      if (ip === 0n) break;
      out.push(this.symbolize(ip));
    }
    return out;
  }
}
