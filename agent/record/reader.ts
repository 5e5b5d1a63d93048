// Reads a trace (format.ts) completely, checking everything before anything is replayed:
// each problem is one TraceError naming the byte offset and what is wrong. With `partial`,
// the records before the first bad one are returned together with the error.
import { crc32, inflateRawSync } from 'node:zlib';
import { Btf } from '../../bpf/btf.js';
import {
  FLAG_DEFLATE,
  MAGIC,
  MAX_HEADER,
  MAX_RECORD,
  PREAMBLE,
  RECORD_HEAD,
  RECORD_TAIL,
  TYPE_NAMES,
  TraceError,
  VERSION,
  footerSchema,
  headerSchema,
  identSchema,
  snapshotMetaSchema,
  type SnapshotMapData,
  type SnapshotMeta,
  type TraceFooter,
  type TraceHeader,
  type TraceRecord,
} from './format.js';
import type { z } from 'zod';

export interface Trace {
  header: TraceHeader;
  /** Each family's BTF, parsed (index as in header.families). */
  btf: Btf[];
  records: TraceRecord[];
  footer: TraceFooter | undefined;
  /** With `partial`: why reading stopped early (the records before it are usable). */
  error?: TraceError;
  bytes: number;
}

function zodProblem(what: string, e: z.ZodError): string {
  const i = e.issues[0]!;
  return `${what}: ${i.path.length ? `key ${i.path.join('.')}: ` : ''}${i.message}`;
}

function parseJson<T>(bytes: Buffer, at: number, what: string, schema: z.ZodType<T>): T {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new TraceError(at, `${what} is not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  const r = schema.safeParse(raw);
  if (!r.success) throw new TraceError(at, zodProblem(what, r.error));
  return r.data;
}

/** Bounds-checked reads within one record's payload; offsets in errors are file offsets
 * (or, for a deflated payload, the record's offset and the offset inside the payload). */
class Cursor {
  pos = 0;
  constructor(
    private readonly b: Buffer,
    private readonly where: (pos: number) => number,
    private readonly what: string,
    private readonly inflated: boolean,
  ) {}

  fail(problem: string): never {
    throw new TraceError(this.where(this.pos), this.inflated ? `${problem} (at byte ${this.pos} of the inflated ${this.what} payload)` : problem);
  }

  need(n: number, what: string): void {
    if (this.pos + n > this.b.length) this.fail(`${this.what} record truncated: ${what} needs ${n} bytes, ${this.b.length - this.pos} left in the payload`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.b.readUInt8(this.pos++);
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.b.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.b.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return Buffer.from(v); // copies: replay keeps them while the file buffer may go
  }

  end(): void {
    if (this.pos !== this.b.length) this.fail(`${this.b.length - this.pos} unexpected bytes after the ${this.what} payload`);
  }

  rest(): Buffer {
    return this.b.subarray(this.pos);
  }
}

function parseHeader(buf: Buffer): { header: TraceHeader; btf: Btf[]; end: number } {
  if (buf.length < MAGIC.length || !buf.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new TraceError(
      0,
      buf.length < MAGIC.length && MAGIC.subarray(0, buf.length).equals(buf)
        ? `file is ${buf.length} bytes, too short to be an hvwatch trace`
        : 'not an hvwatch trace (bad magic; expected "HVWTRACE")',
    );
  }
  if (buf.length < PREAMBLE) throw new TraceError(buf.length, `file ends inside the ${PREAMBLE}-byte preamble (${buf.length} bytes)`);
  const version = buf.readUInt16LE(8);
  if (version > VERSION) throw new TraceError(8, `trace format version ${version} is newer than this hvwatch reads (${VERSION}): upgrade hvwatch`);
  if (version < 1) throw new TraceError(8, `invalid trace format version ${version}`);
  const flags = buf.readUInt16LE(10);
  if (flags !== 0) throw new TraceError(10, `unknown preamble flags 0x${flags.toString(16)}`);
  const h = buf.readUInt32LE(12);
  if (h > MAX_HEADER) throw new TraceError(12, `header length ${h} exceeds the ${MAX_HEADER}-byte limit`);
  if (PREAMBLE + h + 4 > buf.length)
    throw new TraceError(12, `header of ${h} bytes (+4 checksum) runs past the end of the file (${buf.length} bytes): truncated`);
  const hb = buf.subarray(PREAMBLE, PREAMBLE + h);
  const sum = buf.readUInt32LE(PREAMBLE + h);
  if (crc32(hb) !== sum) throw new TraceError(PREAMBLE + h, 'header checksum mismatch: the header is corrupt');
  const header = parseJson(hb, PREAMBLE, 'header', headerSchema);
  const btf = header.families.map((f, i) => {
    try {
      const raw = inflateRawSync(Buffer.from(f.btf, 'base64'), { maxOutputLength: MAX_HEADER });
      const b = Btf.parse(raw);
      for (const m of f.maps) {
        if (m.content === 'full' && m.keySize === 0) throw new Error(`map ${m.name}: a fully recorded map needs a key size above 0`);
        if (m.keyType >= b.typeCount || m.valueType >= b.typeCount) {
          throw new Error(`map ${m.name}: type id ${Math.max(m.keyType, m.valueType)} is beyond the BTF's ${b.typeCount} types`);
        }
      }
      return b;
    } catch (e) {
      throw new TraceError(PREAMBLE, `header families.${i} (${f.name}): ${(e as Error).message}`);
    }
  });
  return { header, btf, end: PREAMBLE + h + 4 };
}

function parseSnapshot(c: Cursor, header: TraceHeader): { meta: SnapshotMeta; maps: SnapshotMapData[] } {
  const mlen = c.u32('meta length');
  const metaAt = c.pos;
  const metaBytes = c.bytes(mlen, 'meta');
  let meta;
  try {
    meta = parseJson(metaBytes, 0, 'snapshot meta', snapshotMetaSchema);
  } catch (e) {
    c.pos = metaAt;
    c.fail((e as TraceError).problem);
  }
  const nprogs = header.families.reduce((n, f) => n + f.programs.length, 0);
  if (meta.progs.length !== nprogs) c.fail(`snapshot has stats for ${meta.progs.length} programs, the header lists ${nprogs}`);
  const nf = c.u16('family count');
  const maps: SnapshotMapData[] = [];
  for (let i = 0; i < nf; i++) {
    const fi = c.u16('family index');
    const fam = header.families[fi];
    if (!fam) c.fail(`family index ${fi} is out of range (the header has ${header.families.length})`);
    const nm = c.u16('map count');
    for (let j = 0; j < nm; j++) {
      const mi = c.u16('map index');
      const m = fam.maps[mi];
      if (!m) c.fail(`map index ${mi} of family ${fam.name} is out of range (the header lists ${fam.maps.length})`);
      const n = c.u32('entry count');
      if (m.content === 'count') {
        maps.push({ family: fi, map: mi, entries: null, count: n });
        continue;
      }
      const per = m.keySize + m.valueSize;
      if (n * per > c.rest().length) c.fail(`map ${fam.name}.${m.name}: ${n} entries of ${per} bytes run past the end of the payload`);
      const entries: [Buffer, Buffer][] = [];
      for (let k = 0; k < n; k++) entries.push([c.bytes(m.keySize, 'key'), c.bytes(m.valueSize, 'value')]);
      maps.push({ family: fi, map: mi, entries, count: n });
    }
  }
  c.end();
  return { meta, maps };
}

function parseEvents(c: Cursor, header: TraceHeader): Omit<TraceRecord & { type: 'events' }, 'type' | 'offset' | 't'> {
  const fi = c.u16('family index');
  const fam = header.families[fi];
  if (!fam) c.fail(`family index ${fi} is out of range (the header has ${header.families.length})`);
  const n = c.u32('event count');
  if (n * 4 > c.rest().length) c.fail(`${n} events cannot fit in the ${c.rest().length} bytes left`);
  const records: Buffer[] = [];
  for (let i = 0; i < n; i++) records.push(c.bytes(c.u32('event length'), 'event'));
  const nl = c.u32('lookup count');
  if (nl * 3 > c.rest().length) c.fail(`${nl} lookups cannot fit in the ${c.rest().length} bytes left`);
  const lookups: { map: number; key: Buffer; value: Buffer | undefined }[] = [];
  for (let i = 0; i < nl; i++) {
    const mi = c.u16('lookup map index');
    const m = fam.maps[mi];
    if (!m) c.fail(`lookup map index ${mi} of family ${fam.name} is out of range`);
    const found = c.u8('lookup found flag');
    if (found > 1) c.fail(`lookup found flag ${found} is not 0 or 1`);
    const key = c.bytes(m.keySize, 'lookup key');
    lookups.push({ map: mi, key, value: found ? c.bytes(m.valueSize, 'lookup value') : undefined });
  }
  c.end();
  return { family: fi, records, lookups };
}

export interface ReadOptions {
  /** Keep the readable prefix of a damaged trace instead of failing. */
  partial?: boolean;
}

export function readTrace(buf: Buffer, opts: ReadOptions = {}): Trace {
  const { header, btf, end } = parseHeader(buf); // nothing is readable without the header
  const records: TraceRecord[] = [];
  let footer: TraceFooter | undefined;
  let off = end;
  try {
    while (off < buf.length) {
      if (footer) throw new TraceError(off, `${buf.length - off} bytes after the footer record`);
      if (buf.length - off < RECORD_HEAD + RECORD_TAIL)
        throw new TraceError(off, `truncated record: ${buf.length - off} bytes left, a record needs at least ${RECORD_HEAD + RECORD_TAIL}`);
      const len = buf.readUInt32LE(off);
      if (len > MAX_RECORD) throw new TraceError(off, `record length ${len} exceeds the ${MAX_RECORD}-byte limit`);
      if (off + RECORD_HEAD + len + RECORD_TAIL > buf.length)
        throw new TraceError(
          off,
          `truncated record: it claims ${len} payload bytes, the file ends ${buf.length - off - RECORD_HEAD - RECORD_TAIL} bytes later`,
        );
      const typeNo = buf.readUInt8(off + 4);
      const flags = buf.readUInt8(off + 5);
      const body = buf.subarray(off + 4, off + RECORD_HEAD + len);
      if (crc32(body) !== buf.readUInt32LE(off + RECORD_HEAD + len)) throw new TraceError(off, 'record checksum mismatch: the record is corrupt');
      const type = TYPE_NAMES[typeNo];
      if (!type) throw new TraceError(off + 4, `unknown record type ${typeNo} (written by a newer hvwatch?)`);
      if (flags & ~FLAG_DEFLATE) throw new TraceError(off + 5, `unknown record flags 0x${flags.toString(16)}`);
      if (buf.readUInt16LE(off + 6) !== 0) throw new TraceError(off + 6, 'reserved record field is not 0');
      const t = buf.readDoubleLE(off + 8);
      if (!Number.isFinite(t) || t < 0) throw new TraceError(off + 8, `record time ${t} is not a non-negative number`);
      let payload = buf.subarray(off + RECORD_HEAD, off + RECORD_HEAD + len);
      const deflated = (flags & FLAG_DEFLATE) !== 0;
      if (deflated) {
        try {
          payload = inflateRawSync(payload, { maxOutputLength: MAX_RECORD });
        } catch (e) {
          throw new TraceError(off + RECORD_HEAD, `${type} payload does not inflate: ${(e as Error).message}`);
        }
      }
      const base = off + RECORD_HEAD;
      const c = new Cursor(payload, (p) => (deflated ? base : base + p), type, deflated);
      const at = off;
      switch (type) {
        case 'snapshot':
          records.push({ type, offset: at, t, ...parseSnapshot(c, header) });
          break;
        case 'events':
          records.push({ type, offset: at, t, ...parseEvents(c, header) });
          break;
        case 'ident':
          records.push({ type, offset: at, t, delta: parseJson(payload, base, 'ident record', identSchema) });
          break;
        case 'footer':
          footer = parseJson(payload, base, 'footer record', footerSchema);
          records.push({ type, offset: at, t, footer });
          break;
      }
      off += RECORD_HEAD + len + RECORD_TAIL;
    }
    if (!footer) throw new TraceError(off, 'trace ends without a footer record (the recorder did not stop cleanly, or the file was cut)');
  } catch (e) {
    if (!(e instanceof TraceError)) throw new TraceError(off, `unreadable record: ${(e as Error).message}`);
    if (!opts.partial) throw e;
    return { header, btf, records, footer, error: e, bytes: buf.length };
  }
  return { header, btf, records, footer, bytes: buf.length };
}
