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
    case 1:
      return signed ? buf.readInt8(off) : buf.readUInt8(off);
    case 2:
      return signed ? buf.readInt16LE(off) : buf.readUInt16LE(off);
    case 4:
      return signed ? buf.readInt32LE(off) : buf.readUInt32LE(off);
    case 8: {
      const v = signed ? buf.readBigInt64LE(off) : buf.readBigUInt64LE(off);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
    }
    default:
      return NaN;
  }
}

/** A decoder specialised to one layout: the same result as decodeStruct, built as one
 * object literal with the offsets inlined, so a batch of thousands of records costs no
 * per-field dispatch, no BigInt for 64-bit values that fit a double, and no Buffer method
 * call per aligned integer: records of one batch share one ArrayBuffer (bpf/ringbuf.ts),
 * so its 32-bit views are made once per batch. A char array that repeats the previous
 * record's bytes (the same comm in an event storm) reuses its string. Records shorter
 * than the layout, or not 4-byte aligned, go through decodeStruct. */
export function compileDecoder(layout: StructLayout): (buf: Buffer) => DecodedEvent {
  const parts: string[] = [];
  const memos: string[] = [];
  let end = 0;
  for (const f of layout.fields) {
    if (f.size === 0) continue;
    const w = f.offset % 4 === 0 ? `i + ${f.offset >> 2}` : undefined;
    let expr: string | undefined;
    if (f.kind === 'array' && f.typeName.startsWith('char')) {
      if (w && f.size % 4 === 0 && f.size <= 64) {
        const m = memos.length;
        memos.push(`[new Uint32Array(${f.size >> 2}), undefined]`);
        expr = `str(b, u, ${w}, ${f.offset}, ${f.size}, memos[${m}])`;
      } else expr = `str(b, undefined, 0, ${f.offset}, ${f.size}, undefined)`;
    } else if (f.kind === 'int' || f.kind === 'enum' || f.kind === 'ptr') {
      switch (f.size) {
        case 1:
          expr = f.signed ? `b.readInt8(${f.offset})` : `b[${f.offset}]`;
          break;
        case 2:
          expr = f.signed ? `b.readInt16LE(${f.offset})` : `b.readUInt16LE(${f.offset})`;
          break;
        case 4:
          expr = w ? (f.signed ? `s[${w}]` : `u[${w}]`) : f.signed ? `b.readInt32LE(${f.offset})` : `b.readUInt32LE(${f.offset})`;
          break;
        case 8:
          expr = w ? (f.signed ? `s64(b, s, u, ${w}, ${f.offset})` : `u64(b, u, ${w}, ${f.offset})`) : 'undefined';
          break;
        default:
          expr = 'NaN';
      }
      if (expr === 'undefined') return (buf) => decodeStruct(layout, buf); // an unaligned u64: not in our structs
    }
    if (expr === undefined) continue;
    parts.push(`${JSON.stringify(f.name)}: ${expr}`);
    end = Math.max(end, f.offset + f.size);
  }
  // Generated from BTF offsets and sizes only; field names are JSON-quoted.
  const make = new Function(
    'str',
    'u64',
    's64',
    'slow',
    'layout',
    `
    const memos = [${memos.join(', ')}];
    let ab, u, s;
    return function decode(b) {
      if (b.length < ${end} || (b.byteOffset & 3) !== 0) return slow(layout, b);
      if (b.buffer !== ab) { ab = b.buffer; u = new Uint32Array(ab, 0, ab.byteLength >>> 2); s = new Int32Array(ab, 0, ab.byteLength >>> 2); }
      const i = b.byteOffset >>> 2;
      return { ${parts.join(', ')} };
    };`,
  );
  return make(readStr, readU64, readS64, decodeStruct, layout) as (buf: Buffer) => DecodedEvent;
}

const TWO32 = 4294967296;
/** Above 2^53 (kernel pointers) a u64 stays bigint, as in decodeStruct. */
function readU64(b: Buffer, u: Uint32Array, i: number, off: number): number | bigint {
  const hi = u[i + 1]!;
  return hi < 0x200000 ? hi * TWO32 + u[i]! : b.readBigUInt64LE(off);
}

function readS64(b: Buffer, s: Int32Array, u: Uint32Array, i: number, off: number): number | bigint {
  const hi = s[i + 1]!;
  const v = hi * TWO32 + u[i]!;
  return hi >= -0x200000 && hi < 0x200000 && v >= Number.MIN_SAFE_INTEGER ? v : b.readBigInt64LE(off);
}

type StrMemo = [Uint32Array, string | undefined];

function readStr(b: Buffer, u: Uint32Array | undefined, i: number, off: number, size: number, memo: StrMemo | undefined): string {
  if (u && memo) {
    const [words, last] = memo;
    let same = last !== undefined;
    for (let k = 0; k < words.length; k++) {
      if (u[i + k] !== words[k]) {
        same = false;
        words[k] = u[i + k]!;
      }
    }
    if (same) return last!;
  }
  let end = off;
  const lim = off + size;
  let ascii = true;
  for (; end < lim; end++) {
    const c = b[end]!;
    if (c === 0) break;
    if (c >= 0x80) ascii = false;
  }
  const str = b.toString(ascii ? 'latin1' : 'utf8', off, end);
  if (memo) memo[1] = str;
  return str;
}
