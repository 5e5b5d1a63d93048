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
