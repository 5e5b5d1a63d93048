// The ring-buffer reader against the real kernel: one worker thread for several BPF ring
// buffers read from their mmap, records in order across many wraps of the data area, a
// map that is not a ring buffer refused by name; the frame walk (discarded records) on
// hand-made frames; the compiled event decoder against decodeStruct; the race log-line
// limit, counted in hvwatch_log_lines_suppressed_total while /api/races keeps every event.
import test from 'ava';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BpfObject, possibleCpus } from '../bpf/libbpf.js';
import { BENCH_DIR, compileBpf } from '../bench/common.js';
import { Ring, RingBufferReader } from '../bpf/ringbuf.js';
import { Btf, type StructLayout } from '../bpf/btf.js';
import { BPF_BUILD_DIR } from '../agent/loader.js';
import { compileDecoder, decodeStruct } from '../agent/aggregate/events.js';
import { LogLimiter } from '../agent/log-limit.js';

const OBJ = join(BPF_BUILD_DIR, 'selftest.bpf.o');

function loaded(): BpfObject {
  const o = BpfObject.open(OBJ);
  for (const p of o.programs()) p.setAutoload(p.name === 'selftest_emit');
  o.load();
  return o;
}

function emit(o: BpfObject, count: number, firstSeq: number): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(count), 0);
  b.writeBigUInt64LE(BigInt(firstSeq), 8);
  o.program('selftest_emit').testRun(b);
}

const threads = (): number => readdirSync('/proc/self/task').length;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await sleep(10);
}

test.serial("one worker thread reads two objects' ring buffers, each ring's records to its own owner, in order, across many wraps", async (t) => {
  const a = loaded();
  const b = loaded();
  t.teardown(() => {
    a.close();
    b.close();
  });
  const layout = Btf.parse(a.rawBtf()).structLayout('selftest_event')!;
  const seqOff = layout.fields.find((f) => f.name === 'seq')!.offset;
  const seen: [number[], number[]] = [[], []];
  const rb = new RingBufferReader({ batchMs: 5 });
  const ringA = rb.add(a.map('events').fd, (recs) => {
    for (const r of recs) seen[0].push(Number(r.readBigUInt64LE(seqOff)));
  });
  const ringB = rb.add(b.map('events').fd, (recs) => {
    for (const r of recs) seen[1].push(Number(r.readBigUInt64LE(seqOff)));
  });
  t.is(ringA.size, 16384);
  const before = threads();
  rb.start();
  t.teardown(() => rb.stop());
  await rb.ready;
  t.is(threads() - before, 1, 'one worker thread for both rings');
  // 16 KiB hold 512 records of 32 bytes: 15 rounds of 400 wrap each data area 11 times.
  for (let round = 0; round < 15; round++) {
    emit(a, 400, round * 400);
    emit(b, 400, 1_000_000 + round * 400);
    await until(() => seen[0].length >= (round + 1) * 400 && seen[1].length >= (round + 1) * 400);
  }
  await rb.stop();
  t.deepEqual(
    seen[0],
    Array.from({ length: 6000 }, (_, i) => i),
  );
  t.deepEqual(
    seen[1],
    Array.from({ length: 6000 }, (_, i) => 1_000_000 + i),
  );
  t.is(ringA.events + ringB.events, 12_000);
  t.is(a.map('hv_errors').handleForFd().counter(1), 0, 'no record refused while the reader keeps up');
  t.deepEqual([ringA.errors, ringB.errors, rb.errors], [[], [], []]);
});

test('records that wrap around the end of the data area arrive whole (the area is mapped twice): 88-byte frames in 256 KiB', async (t) => {
  // bench/ringbuf_emit.bpf.c writes a 256-byte template with a u64 sequence number at
  // seq_off; 80-byte records make 88-byte frames, which 262,144 is not a multiple of, so
  // every lap of the ring ends with a frame split across its end.
  const dir = mkdtempSync(join(tmpdir(), 'hvwatch-ringbuf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const objPath = join(dir, 'ringbuf_emit.bpf.o');
  compileBpf(join(BENCH_DIR, 'ringbuf_emit.bpf.c'), objPath);
  const o = BpfObject.open(objPath);
  t.teardown(() => o.close());
  o.load();
  const size = 80;
  const tmpl = Buffer.alloc(256);
  for (let i = 8; i < size; i++) tmpl[i] = i;
  const v = Buffer.alloc(256 * possibleCpus);
  for (let c = 0; c < possibleCpus; c++) tmpl.copy(v, c * 256);
  o.map('tmpl').handleForFd().update(Buffer.alloc(4), v);
  const args = Buffer.alloc(40);
  args.writeUInt32LE(size, 16);
  args.writeUInt32LE(0, 20); // seq at offset 0
  let got = 0;
  let bad = 0;
  const rb = new RingBufferReader({ batchMs: 5 });
  rb.add(o.map('events').fd, (recs) => {
    for (const r of recs) {
      if (r.length !== size || Number(r.readBigUInt64LE(0)) !== got || !r.subarray(8).equals(tmpl.subarray(8, size))) bad++;
      got++;
    }
  });
  rb.start();
  t.teardown(() => rb.stop());
  await rb.ready;
  const perRound = 2000; // 176,000 bytes: each round goes 2/3 of the way round the ring
  for (let round = 0; round < 12; round++) {
    args.writeBigUInt64LE(BigInt(perRound), 0);
    args.writeBigUInt64LE(BigInt(round * perRound), 8);
    o.program('emit').testRun(args);
    t.is(Number(args.readBigUInt64LE(24)), perRound, 'the kernel accepted every record');
    await until(() => got >= (round + 1) * perRound);
  }
  await rb.stop();
  t.is(got, 12 * perRound);
  t.is(bad, 0, 'records out of order or with damaged bytes');
});

test('a map that is not a ring buffer is refused with its type, before any worker starts', (t) => {
  const o = loaded();
  t.teardown(() => o.close());
  const rb = new RingBufferReader();
  const err = t.throws(() => rb.add(o.map('counters').fd, () => undefined));
  t.regex(err!.message, /map fd \d+ is of type 6, not a BPF ring buffer \(27\)/);
  t.is(rb.ringCount, 0);
});

test('a ring the worker cannot map is reported on that ring, and a worker left with nothing to read is reported dead', async (t) => {
  const o = loaded();
  const rb = new RingBufferReader();
  const errors: string[] = [];
  const ring = rb.add(o.map('events').fd, () => undefined, { onError: (m) => errors.push(m) });
  o.close(); // the fd is gone before the worker maps it
  rb.start();
  await rb.ready;
  await until(() => errors.length >= 2, 2000);
  t.regex(errors[0]!, /mmap of the ring buffer \(fd \d+, \d+ bytes at 0\) failed: .* \(errno \d+\)/);
  t.regex(errors[1]!, /ring buffer worker exited \(code 0\) before it was stopped/);
  t.deepEqual(ring.errors, errors);
  await rb.stop();
});

test('frame walk: discarded records are skipped, lengths come from the header, frames are 8-byte rounded', (t) => {
  // kernel/bpf/ringbuf.c: u32 len | BUSY (1<<31) | DISCARD (1<<30), u32 pg_off, data.
  const frames = [
    { len: 5, discard: false, fill: 1 },
    { len: 12, discard: true, fill: 2 },
    { len: 16, discard: false, fill: 3 },
  ];
  const total = frames.reduce((n, f) => n + ((f.len + 8 + 7) & ~7), 0);
  const buf = Buffer.alloc(total);
  let off = 0;
  for (const f of frames) {
    buf.writeUInt32LE((f.len | (f.discard ? 0x40000000 : 0)) >>> 0, off);
    buf.fill(f.fill, off + 8, off + 8 + f.len);
    off += (f.len + 8 + 7) & ~7;
  }
  const got: Buffer[] = [];
  const ring = new Ring(-1, 4096, (recs) => void got.push(...recs.map((r) => Buffer.from(r))), {});
  ring.deliver(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  t.deepEqual(got, [Buffer.alloc(5, 1), Buffer.alloc(16, 3)]);
  t.is(ring.events, 2);
});

function layoutOf(object: string, struct: string): StructLayout {
  const o = BpfObject.open(join(BPF_BUILD_DIR, object));
  try {
    return Btf.parse(o.rawBtf()).structLayout(struct)!;
  } finally {
    o.close();
  }
}

test('the compiled decoder gives what decodeStruct gives: big and negative 64-bit values, strings, short and unaligned records', (t) => {
  const layouts = [layoutOf('memcg_fn.bpf.o', 'memcg_race_event'), layoutOf('selftest.bpf.o', 'selftest_event')];
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  for (const layout of layouts) {
    const decode = compileDecoder(layout);
    const arena = new ArrayBuffer(layout.size * 64 + 16);
    for (let i = 0; i < 300; i++) {
      const at = (i % 64) * layout.size; // records of one arena, as in a batch
      const rec = Buffer.from(arena, at, layout.size);
      for (let k = 0; k < rec.length; k++) rec[k] = rnd() < 0.5 ? 0 : Math.floor(rnd() * 256);
      for (const f of layout.fields) {
        if (f.kind === 'array' && rnd() < 0.5)
          rec.write(['', 'kworker/0:1', 'fio', 'héllo wörld', 'x'.repeat(f.size)][i % 5]!.slice(0, f.size), f.offset, 'utf8');
        if (f.size === 8 && rnd() < 0.3) rec.writeBigUInt64LE(BigInt(Math.floor(rnd() * 2 ** 40)), f.offset);
        if (f.size === 8 && rnd() < 0.2) rec.writeBigInt64LE(-BigInt(Math.floor(rnd() * 2 ** 40)), f.offset);
      }
      t.deepEqual(decode(rec), decodeStruct(layout, rec), `${layout.name} record ${i}`);
      // The same bytes again (string reuse) and a record of another arena.
      t.deepEqual(decode(Buffer.from(rec)), decodeStruct(layout, rec));
    }
    const short = Buffer.alloc(layout.size - 4, 7);
    t.deepEqual(decode(short), decodeStruct(layout, short));
    const unaligned = Buffer.from(arena, 1, layout.size);
    t.deepEqual(decode(unaligned), decodeStruct(layout, unaligned));
  }
});

test('log limiter: a burst, then the refill rate; what it holds back is counted and handed over once', (t) => {
  const l = new LogLimiter(3, 2, 0);
  t.deepEqual(
    [0, 0, 0, 0, 0].map(() => l.take(0)),
    [true, true, true, false, false],
  );
  t.false(l.take(400)); // 0.8 token
  t.true(l.take(500)); // 1 token after 500 ms at 2/s
  t.is(l.takeSuppressed(), 3);
  t.is(l.takeSuppressed(), 0);
  t.deepEqual(
    [0, 0, 0, 0].map(() => l.take(10_500)),
    [true, true, true, false],
    'refill is capped at the burst',
  );
});

test('a storm of race events: every one reaches /api/races data, the log lines past the burst are counted in hvwatch_log_lines_suppressed_total', async (t) => {
  const { Agent } = await import('../agent/agent.js');
  const { moduleOf } = await import('../agent/families.js');
  const { configSchema } = await import('../agent/config.js');
  const { M } = await import('../agent/catalog.js');
  const { logEnabled } = await import('../agent/log.js');
  let events = 0;
  const agent = new Agent(configSchema.parse({}), [
    moduleOf({
      name: 'selftest',
      object: 'selftest.bpf.o',
      probes: [],
      maps: [],
      events: {
        map: 'events',
        struct: 'selftest_event',
        onEvents: (evs, ctx) => {
          for (const e of evs) {
            events++;
            ctx.logRace({ seq: e.seq });
          }
        },
      },
    }),
  ]);
  agent.start();
  t.teardown(() => agent.stop());
  const suppressed = (): number | undefined => agent.store.get(M.logLinesSuppressed, { reason: 'race_indicator' })?.value;
  t.is(suppressed(), 0, 'the series exists from the start');
  agent
    .family('selftest')!
    .testProgram('selftest_emit')
    .testRun(
      (() => {
        const b = Buffer.alloc(16);
        b.writeBigUInt64LE(200n, 0);
        return b;
      })(),
    );
  await until(() => events >= 200);
  t.is(events, 200);
  t.is(agent.races.length, 200);
  t.deepEqual(
    agent.races.map((r) => r.seq),
    Array.from({ length: 200 }, (_, i) => i),
  );
  t.is(agent.store.get(M.ringbufEvents, { family: 'selftest' })?.value, 200);
  // The burst is 20 lines; a few more may pass if the batches straddle a refill.
  if (logEnabled('warn')) t.true(suppressed()! >= 170 && suppressed()! <= 180, `suppressed ${suppressed()}`);
  else t.is(suppressed(), 0, 'lines the log level hides are not counted as suppressed');
});
