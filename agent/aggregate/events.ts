// Ring-buffer records -> plain objects, by the event struct's layout in the object's BTF
// (the C struct is the single source of truth; nothing here repeats its offsets).
import type { StructLayout } from '../../bpf/btf.js';

/** 64-bit values that do not fit a double exactly (kernel pointers) stay bigint. */
export type EventValue = number | bigint | string;
export type DecodedEvent = Record<string, EventValue>;

export function decodeStruct(layout: StructLayout, buf: Buffer): DecodedEvent {
  const out: DecodedEvent = {};
  for (const f of layout.fields) {
    if (f.size === 0 || f.offset + f.size > buf.length) continue; // bitfields, short records
    if (f.kind === 'array' && f.typeName.startsWith('char')) {
      const raw = buf.subarray(f.offset, f.offset + f.size);
      const nul = raw.indexOf(0);
      out[f.name] = raw.subarray(0, nul < 0 ? raw.length : nul).toString('utf8');
    } else if (f.kind === 'int' || f.kind === 'enum' || f.kind === 'ptr') {
      out[f.name] = readInt(buf, f.offset, f.size, f.signed);
    }
  }
  return out;
}

function readInt(buf: Buffer, off: number, size: number, signed: boolean): number | bigint {
  switch (size) {
    case 1: return signed ? buf.readInt8(off) : buf.readUInt8(off);
    case 2: return signed ? buf.readInt16LE(off) : buf.readUInt16LE(off);
    case 4: return signed ? buf.readInt32LE(off) : buf.readUInt32LE(off);
    case 8: {
      const v = signed ? buf.readBigInt64LE(off) : buf.readBigUInt64LE(off);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
    }
    default: return NaN;
  }
}

/** A decoder specialised to one layout: the same result as decodeStruct, built as one
 * object literal with the offsets inlined, so a batch of thousands of records costs no
 * per-field dispatch, no BigInt for 64-bit values that fit a double, and no Buffer slice
 * per string. Records shorter than the layout go through decodeStruct. */
export function compileDecoder(layout: StructLayout): (buf: Buffer) => DecodedEvent {
  const parts: string[] = [];
  let end = 0;
  for (const f of layout.fields) {
    if (f.size === 0) continue;
    const at = `${f.offset}`;
    let expr: string | undefined;
    if (f.kind === 'array' && f.typeName.startsWith('char')) expr = `str(b, ${at}, ${f.size})`;
    else if (f.kind === 'int' || f.kind === 'enum' || f.kind === 'ptr') {
      switch (f.size) {
        case 1: expr = f.signed ? `b.readInt8(${at})` : `b[${at}]`; break;
        case 2: expr = f.signed ? `b.readInt16LE(${at})` : `b.readUInt16LE(${at})`; break;
        case 4: expr = f.signed ? `b.readInt32LE(${at})` : `b.readUInt32LE(${at})`; break;
        case 8: expr = f.signed ? `s64(b, ${at})` : `u64(b, ${at})`; break;
        default: expr = 'NaN';
      }
    }
    if (expr === undefined) continue;
    parts.push(`${JSON.stringify(f.name)}: ${expr}`);
    end = Math.max(end, f.offset + f.size);
  }
  // eslint-disable-next-line @typescript-eslint/no-implied-eval -- generated from BTF offsets and sizes only; names are JSON-quoted
  const make = new Function('str', 'u64', 's64', 'slow', 'layout',
    `return function decode(b) { if (b.length < ${end}) return slow(layout, b); return { ${parts.join(', ')} }; };`);
  return make(readStr, readU64, readS64, decodeStruct, layout) as (buf: Buffer) => DecodedEvent;
}

const TWO32 = 4294967296;
/** Above 2^53 (kernel pointers) a u64 stays bigint, as in decodeStruct. */
function readU64(b: Buffer, off: number): number | bigint {
  const hi = b.readUInt32LE(off + 4);
  return hi < 0x200000 ? hi * TWO32 + b.readUInt32LE(off) : b.readBigUInt64LE(off);
}

function readS64(b: Buffer, off: number): number | bigint {
  const hi = b.readInt32LE(off + 4);
  const v = hi * TWO32 + b.readUInt32LE(off);
  return hi >= -0x200000 && hi < 0x200000 && v >= Number.MIN_SAFE_INTEGER ? v : b.readBigInt64LE(off);
}

function readStr(b: Buffer, off: number, size: number): string {
  let end = off;
  const lim = off + size;
  let ascii = true;
  for (; end < lim; end++) {
    const c = b[end]!;
    if (c === 0) break;
    if (c >= 0x80) ascii = false;
  }
  return b.toString(ascii ? 'latin1' : 'utf8', off, end);
}
