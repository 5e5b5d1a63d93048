// The trace reader against damaged input: every prefix of a trace, a future version, and
// 10,000+ fast-check mutations (half of them with checksums recomputed, so the structure
// behind the checksums is exercised too). Each input either reads or fails with one
// TraceError naming a byte offset inside the file; nothing else is thrown and nothing hangs.
import test from 'ava';
import fc from 'fast-check';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { crc32 } from 'node:zlib';
import { readTrace } from '../agent/record/reader.js';
import { PREAMBLE, RECORD_HEAD, RECORD_TAIL, TraceError } from '../agent/record/format.js';
import { HVWATCH } from './helpers/agent.js';
import { writeSynthTrace } from './helpers/trace.js';
import { spawnSync } from 'node:child_process';

const dir = mkdtempSync(join(tmpdir(), 'hvwatch-fuzz-'));

function base(compress: boolean): Buffer {
  const f = join(dir, `base-${compress}.trace`);
  writeSynthTrace(f, { 12: 5, 14: 3 }, { snapshots: 2, compress });
  return fs.readFileSync(f);
}

/** Recomputes the header and record checksums wherever the lengths still frame them. */
function fixChecksums(b: Buffer): void {
  if (b.length < PREAMBLE) return;
  const h = b.readUInt32LE(12);
  if (PREAMBLE + h + 4 > b.length) return;
  b.writeUInt32LE(crc32(b.subarray(PREAMBLE, PREAMBLE + h)), PREAMBLE + h);
  let off = PREAMBLE + h + 4;
  while (off + RECORD_HEAD + RECORD_TAIL <= b.length) {
    const len = b.readUInt32LE(off);
    if (off + RECORD_HEAD + len + RECORD_TAIL > b.length) return;
    b.writeUInt32LE(crc32(b.subarray(off + 4, off + RECORD_HEAD + len)), off + RECORD_HEAD + len);
    off += RECORD_HEAD + len + RECORD_TAIL;
  }
}

/** Reads, and checks that a failure is a TraceError with an offset within the input. */
function probe(buf: Buffer, partial: boolean): 'ok' | 'error' {
  try {
    const t = readTrace(buf, { partial });
    if (t.error) assertTraceError(t.error, buf);
    return 'ok';
  } catch (e) {
    assertTraceError(e, buf);
    return 'error';
  }
}

function assertTraceError(e: unknown, buf: Buffer): void {
  if (!(e instanceof TraceError)) throw new Error(`not a TraceError: ${String((e as Error)?.stack ?? e)}`);
  if (!(e.offset >= 0 && e.offset <= buf.length)) throw new Error(`offset ${e.offset} outside the ${buf.length}-byte input: ${e.message}`);
  if (!/^byte offset \d+: \S/.test(e.message) || e.message.includes('\n')) throw new Error(`unclear message: ${e.message}`);
}

test('every strict prefix of a trace fails with a TraceError; --partial keeps the records before the cut', (t) => {
  for (const compress of [true, false]) {
    const b = base(compress);
    const full = readTrace(b);
    t.is(full.records.at(-1)?.type, 'footer');
    let partialRecords = 0;
    for (let n = 0; n < b.length; n++) {
      const cut = b.subarray(0, n);
      t.is(probe(cut, false), 'error');
      try {
        partialRecords = Math.max(partialRecords, readTrace(cut, { partial: true }).records.length);
      } catch (e) {
        t.true(e instanceof TraceError); // the header itself is cut: nothing to keep
      }
    }
    t.is(partialRecords, full.records.length - 1); // everything but the footer
  }
});

test('a future version and a foreign file get one clear line from replay, naming the offset', (t) => {
  const b = Buffer.from(base(true));
  b.writeUInt16LE(9, 8);
  const f = join(dir, 'future.trace');
  fs.writeFileSync(f, b);
  const r = spawnSync(HVWATCH, ['replay', f, '--print'], { encoding: 'utf8' });
  t.is(r.status, 2);
  t.is(r.stderr.trim().split('\n').length, 1);
  t.regex(r.stderr, /trace .*future\.trace: byte offset 8: trace format version 9 is newer than this hvwatch reads \(1\)/);
  const g = join(dir, 'foreign.trace');
  fs.writeFileSync(g, 'this is not a trace at all');
  const r2 = spawnSync(HVWATCH, ['replay', g, '--print'], { encoding: 'utf8' });
  t.is(r2.status, 2);
  t.regex(r2.stderr, /byte offset 0: not an hvwatch trace \(bad magic/);
});

test('fuzz: 10,000+ mutated traces never crash or hang the reader and always fail with a TraceError naming the offset', (t) => {
  const bases = [base(true), base(false)];
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), pos: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('byte' as const), pos: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('u32' as const), pos: fc.nat(), value: fc.oneof(fc.constantFrom(0, 1, 0xffffffff, 0x7fffffff, 255, 65535), fc.nat()) }),
    fc.record({ kind: fc.constant('truncate' as const), pos: fc.nat() }),
    fc.record({ kind: fc.constant('insert' as const), pos: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('delete' as const), pos: fc.nat(), n: fc.integer({ min: 1, max: 16 }) }),
  );
  let runs = 0;
  let readable = 0;
  let slowest = 0;
  const problems = new Set<string>();
  // Most of a small trace is its header (the BTF): aim half the mutations past it.
  const recordsAt = bases.map((b) => PREAMBLE + b.readUInt32LE(12) + 4);
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 1 }),
      fc.array(fc.tuple(mutation, fc.boolean()), { minLength: 1, maxLength: 4 }),
      fc.boolean(),
      fc.boolean(),
      (which, muts, fix, partial) => {
        let b = Buffer.from(bases[which]!);
        const from = recordsAt[which]!;
        for (const [m, inRecords] of muts) {
          const pos = !b.length ? 0 : inRecords && b.length > from ? from + (m.pos % (b.length - from)) : m.pos % b.length;
          switch (m.kind) {
            case 'flip':
              if (b.length) b[pos]! ^= 1 << m.bit;
              break;
            case 'byte':
              if (b.length) b[pos] = m.value;
              break;
            case 'u32':
              if (pos + 4 <= b.length) b.writeUInt32LE(m.value >>> 0, pos);
              break;
            case 'truncate':
              b = b.subarray(0, pos);
              break;
            case 'insert':
              b = Buffer.concat([b.subarray(0, pos), Buffer.from(m.bytes), b.subarray(pos)]);
              break;
            case 'delete':
              b = Buffer.concat([b.subarray(0, pos), b.subarray(pos + m.n)]);
              break;
          }
        }
        if (fix) fixChecksums(b);
        const t0 = performance.now();
        if (probe(b, partial) === 'ok') readable++;
        try {
          readTrace(b);
        } catch (e) {
          problems.add((e as TraceError).problem.replace(/\d+/g, 'N').slice(0, 60));
        }
        slowest = Math.max(slowest, performance.now() - t0);
        runs++;
      },
    ),
    { numRuns: 10_500, seed: 8 },
  );
  t.true(runs >= 10_000);
  // A hang detector, not a performance bound: every input is read whole in well under this.
  t.true(slowest < 5000, `slowest input took ${slowest.toFixed(0)} ms`);
  t.true(problems.size >= 15, [...problems].join('\n')); // the mutations reach past the checksums
  t.log(
    `${runs} mutated inputs: ${readable} still readable (mutations in ignored bytes, or --partial prefixes), ${problems.size} distinct problems, slowest ${slowest.toFixed(1)} ms`,
  );
});
