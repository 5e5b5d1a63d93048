// Writes a trace (format.ts): compact binary records, each deflated when that pays, bounded
// by --max-bytes. Once a record does not fit, it and every later one are dropped (the trace
// stays a consistent prefix) and counted; the footer says how many, and always fits.
import * as fs from 'node:fs';
import { crc32, deflateRawSync } from 'node:zlib';
import {
  FLAG_DEFLATE,
  MAGIC,
  PREAMBLE,
  RECORD_HEAD,
  RECORD_TAIL,
  RECORD_TYPES,
  VERSION,
  type RecordType,
  type SnapshotMeta,
  type TraceFooter,
  type TraceHeader,
} from './format.js';
import type { IdentDelta } from '../sources/host.js';

/** Room kept for the footer record, whatever --max-bytes says. */
export const FOOTER_RESERVE = 1024;
const DEFLATE_MIN = 128;

export interface SnapshotMapOut {
  family: number;
  map: number;
  entries: [Buffer, Buffer][] | null;
  count: number;
}

export interface EventsOut {
  family: number;
  records: Buffer[];
  lookups: { map: number; key: Buffer; value: Buffer | undefined }[];
}

export function encodeHeader(h: TraceHeader): Buffer {
  const hb = Buffer.from(JSON.stringify(h), 'utf8');
  const pre = Buffer.alloc(PREAMBLE);
  MAGIC.copy(pre, 0);
  pre.writeUInt16LE(VERSION, 8);
  pre.writeUInt16LE(0, 10);
  pre.writeUInt32LE(hb.length, 12);
  const sum = Buffer.alloc(4);
  sum.writeUInt32LE(crc32(hb));
  return Buffer.concat([pre, hb, sum]);
}

export function encodeRecord(type: RecordType, t: number, payload: Buffer, compress = true): Buffer {
  let flags = 0;
  if (compress && payload.length >= DEFLATE_MIN) {
    const z = deflateRawSync(payload);
    if (z.length < payload.length) {
      payload = z;
      flags |= FLAG_DEFLATE;
    }
  }
  const out = Buffer.alloc(RECORD_HEAD + payload.length + RECORD_TAIL);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt8(RECORD_TYPES[type], 4);
  out.writeUInt8(flags, 5);
  out.writeUInt16LE(0, 6);
  out.writeDoubleLE(t, 8);
  payload.copy(out, RECORD_HEAD);
  out.writeUInt32LE(crc32(out.subarray(4, RECORD_HEAD + payload.length)), RECORD_HEAD + payload.length);
  return out;
}

export function encodeSnapshot(meta: SnapshotMeta, maps: SnapshotMapOut[]): Buffer {
  const parts: Buffer[] = [];
  const mb = Buffer.from(JSON.stringify(meta), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32LE(mb.length);
  parts.push(head, mb);
  const byFamily = new Map<number, SnapshotMapOut[]>();
  for (const m of maps) {
    let l = byFamily.get(m.family);
    if (!l) byFamily.set(m.family, (l = []));
    l.push(m);
  }
  const nf = Buffer.alloc(2);
  nf.writeUInt16LE(byFamily.size);
  parts.push(nf);
  for (const [fi, ms] of byFamily) {
    const fh = Buffer.alloc(4);
    fh.writeUInt16LE(fi, 0);
    fh.writeUInt16LE(ms.length, 2);
    parts.push(fh);
    for (const m of ms) {
      const mh = Buffer.alloc(6);
      mh.writeUInt16LE(m.map, 0);
      mh.writeUInt32LE(m.entries ? m.entries.length : m.count, 2);
      parts.push(mh);
      for (const [k, v] of m.entries ?? []) parts.push(k, v);
    }
  }
  return Buffer.concat(parts);
}

export function encodeEvents(e: EventsOut): Buffer {
  const parts: Buffer[] = [];
  const h = Buffer.alloc(6);
  h.writeUInt16LE(e.family, 0);
  h.writeUInt32LE(e.records.length, 2);
  parts.push(h);
  for (const r of e.records) {
    const l = Buffer.alloc(4);
    l.writeUInt32LE(r.length);
    parts.push(l, r);
  }
  const nl = Buffer.alloc(4);
  nl.writeUInt32LE(e.lookups.length);
  parts.push(nl);
  for (const l of e.lookups) {
    const lh = Buffer.alloc(3);
    lh.writeUInt16LE(l.map, 0);
    lh.writeUInt8(l.value ? 1 : 0, 2);
    parts.push(lh, l.key);
    if (l.value) parts.push(l.value);
  }
  return Buffer.concat(parts);
}

export interface WriterStats {
  bytes: number;
  records: number;
  dropped: TraceFooter['dropped'];
}

export class TraceWriter {
  private fd: number | undefined;
  private full = false;
  private readonly t0 = process.hrtime.bigint();
  readonly stats: WriterStats = { bytes: 0, records: 0, dropped: { snapshot: 0, events: 0, ident: 0 } };

  /** Throws when the file cannot be created or the header alone exceeds maxBytes. */
  constructor(
    readonly file: string,
    header: TraceHeader,
    private readonly opts: { maxBytes?: number; compress?: boolean; onDrop?: (type: keyof TraceFooter['dropped'], n: number) => void } = {},
  ) {
    const hb = encodeHeader(header);
    if (opts.maxBytes !== undefined && hb.length + FOOTER_RESERVE > opts.maxBytes) {
      throw new Error(`--max-bytes ${opts.maxBytes} is too small: the trace header alone takes ${hb.length} bytes (+${FOOTER_RESERVE} kept for the footer)`);
    }
    this.fd = fs.openSync(file, 'w');
    this.put(hb);
  }

  /** Milliseconds since the recording began (monotonic). */
  now(): number {
    return Number(process.hrtime.bigint() - this.t0) / 1e6;
  }

  private put(b: Buffer): void {
    if (this.fd === undefined) throw new Error(`trace ${this.file} is closed`);
    fs.writeSync(this.fd, b);
    this.stats.bytes += b.length;
  }

  /** Writes a record, or drops it (counting `weight` of its kind) when the budget is spent. */
  write(type: Exclude<RecordType, 'footer'>, payload: Buffer, weight = 1): boolean {
    if (this.fd === undefined) return false;
    const rec = encodeRecord(type, this.now(), payload, this.opts.compress ?? true);
    const max = this.opts.maxBytes;
    if (this.full || (max !== undefined && this.stats.bytes + rec.length + FOOTER_RESERVE > max)) {
      this.full = true;
      this.stats.dropped[type] += weight;
      this.opts.onDrop?.(type, weight);
      return false;
    }
    this.put(rec);
    this.stats.records++;
    return true;
  }

  writeSnapshot(meta: SnapshotMeta, maps: SnapshotMapOut[]): boolean {
    return this.write('snapshot', encodeSnapshot(meta, maps));
  }

  writeEvents(e: EventsOut): boolean {
    return this.write('events', encodeEvents(e), e.records.length);
  }

  writeIdent(d: IdentDelta): boolean {
    return this.write('ident', Buffer.from(JSON.stringify(d), 'utf8'));
  }

  close(reason: string): TraceFooter | undefined {
    if (this.fd === undefined) return undefined;
    const footer: TraceFooter = { records: this.stats.records + 1, bytes: 0, dropped: { ...this.stats.dropped }, reason };
    // The footer states the file's final size, its own bytes included.
    const probe = encodeRecord('footer', this.now(), Buffer.from(JSON.stringify(footer)), false);
    footer.bytes = this.stats.bytes + probe.length;
    let rec = encodeRecord('footer', this.now(), Buffer.from(JSON.stringify(footer)), false);
    if (rec.length !== probe.length) {
      footer.bytes = this.stats.bytes + rec.length;
      rec = encodeRecord('footer', this.now(), Buffer.from(JSON.stringify(footer)), false);
    }
    this.put(rec);
    fs.closeSync(this.fd);
    this.fd = undefined;
    return footer;
  }
}
