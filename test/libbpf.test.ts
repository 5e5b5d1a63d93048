// The libbpf binding against the real kernel: load errors with the verifier's words,
// ring-buffer batches and counted drops, per-CPU folding, program run statistics.
import test from 'ava';
import { join } from 'node:path';
import { BpfError, BpfObject, enableRunTimeStats, foldPerCpuU64, PROG_INFO_OFFSETS, possibleCpus, type BpfProgram } from '../bpf/libbpf.js';
import { RingBufferReader } from '../bpf/ringbuf.js';
import { Btf } from '../bpf/btf.js';
import { BPF_BUILD_DIR } from '../agent/loader.js';

const OBJ = join(BPF_BUILD_DIR, 'selftest.bpf.o');

function openWith(programs: string[]): BpfObject {
  const o = BpfObject.open(OBJ);
  for (const p of o.programs()) p.setAutoload(programs.includes(p.name));
  return o;
}

function emitArgs(count: number, firstSeq: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(count), 0);
  b.writeBigUInt64LE(BigInt(firstSeq), 8);
  return b;
}

test("bpf_prog_info run_time_ns/run_cnt offsets match this kernel's BTF", (t) => {
  const l = Btf.vmlinux().structLayout('bpf_prog_info')!;
  t.is(l.fields.find((f) => f.name === 'run_time_ns')?.offset, PROG_INFO_OFFSETS.runTimeNs);
  t.is(l.fields.find((f) => f.name === 'run_cnt')?.offset, PROG_INFO_OFFSETS.runCnt);
});

test('a program the verifier rejects fails to load with the verifier log tail in the error', (t) => {
  const o = openWith(['selftest_bad']);
  t.teardown(() => o.close());
  const err = t.throws(() => o.load(), { instanceOf: BpfError }) as BpfError;
  t.regex(err.message, /load .*selftest\.bpf\.o: Permission denied|Invalid argument/);
  const tail = err.verifierTail().join('\n');
  t.regex(tail, /invalid access to map value|value_size=8 off=512/, `verifier tail was: ${tail}`);
});

test('autoload off keeps a bad program from sinking the object; test run returns retval and counts per CPU', (t) => {
  const o = openWith(['selftest_count']);
  t.teardown(() => o.close());
  o.load();
  const p = o.program('selftest_count');
  for (let i = 0; i < 5; i++) t.is(p.testRun(Buffer.alloc(0)).retval, 7);
  const m = o.map('counters').handleForFd();
  t.true(m.percpu);
  const k = Buffer.alloc(4);
  t.is(m.lookup(k)!.readBigUInt64LE(0), 5n);
  t.is(m.lookupRaw(k)!.length, 8 * possibleCpus);
});

test('per-CPU values fold by summing each u64 word across CPUs', (t) => {
  const cpus = 3;
  const raw = Buffer.alloc(16 * cpus);
  for (let c = 0; c < cpus; c++) {
    raw.writeBigUInt64LE(BigInt(c + 1), c * 16);
    raw.writeBigUInt64LE(2n ** 40n, c * 16 + 8);
  }
  const f = foldPerCpuU64(raw, 16, cpus);
  t.is(f.readBigUInt64LE(0), 6n);
  t.is(f.readBigUInt64LE(8), 3n * 2n ** 40n);
});

test('map iteration visits every key once', (t) => {
  const o = openWith([]);
  t.teardown(() => o.close());
  o.load();
  const m = o.map('counters').handleForFd();
  t.deepEqual(
    m.keys().map((k) => k.readUInt32LE(0)),
    [0, 1, 2, 3],
  );
});

test('BPF run-time stats count each run of a program', (t) => {
  const o = openWith(['selftest_count']);
  t.teardown(() => o.close());
  o.load();
  const stats = enableRunTimeStats();
  t.teardown(() => stats.close());
  const p: BpfProgram = o.program('selftest_count');
  const before = p.stats();
  for (let i = 0; i < 10; i++) p.testRun(Buffer.alloc(0));
  const after = p.stats();
  t.is(after.runCount - before.runCount, 10);
  t.true(after.runTimeNs > before.runTimeNs);
});

test('ring buffer: events arrive off the main thread, in batches, in order, decoded through the object BTF', async (t) => {
  const o = openWith(['selftest_emit']);
  t.teardown(() => o.close());
  o.load();
  const layout = Btf.parse(o.rawBtf()).structLayout('selftest_event')!;
  const off = (n: string): number => layout.fields.find((f) => f.name === n)!.offset;
  const seen: bigint[] = [];
  let batches = 0;
  let badMagic = 0;
  const rb = new RingBufferReader({ batchMs: 20 });
  const ring = rb.add(o.map('events').fd, (recs) => {
    batches++;
    for (const r of recs) {
      t.is(r.length, layout.size);
      if (r.readUInt32LE(off('magic')) !== 0x68767774) badMagic++;
      seen.push(r.readBigUInt64LE(off('seq')));
    }
  });
  rb.start();
  const p = o.program('selftest_emit');
  for (let i = 0; i < 10; i++) p.testRun(emitArgs(50, i * 50));
  const deadline = Date.now() + 5000;
  while (seen.length < 500 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await rb.stop();
  t.is(seen.length, 500);
  t.is(badMagic, 0);
  t.deepEqual(
    seen,
    Array.from({ length: 500 }, (_, i) => BigInt(i)),
  );
  t.true(batches >= 1 && batches <= 500);
  t.is(ring.events, 500);
});

test('ring buffer: records the kernel cannot reserve are counted, none vanish unexplained', async (t) => {
  const o = openWith(['selftest_emit']);
  t.teardown(() => o.close());
  o.load();
  const errs = o.map('hv_errors').handleForFd();
  // No consumer yet: 16 KiB holds at most 16384 / (8 hdr + 24) = 512 records.
  o.program('selftest_emit').testRun(emitArgs(2000, 0));
  const dropped = errs.counter(1); // HV_ERR_RINGBUF_FULL
  let got = 0;
  const rb = new RingBufferReader({ batchMs: 10 });
  rb.add(o.map('events').fd, (recs) => (got += recs.length));
  rb.start();
  const deadline = Date.now() + 5000;
  while (got + dropped < 2000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await rb.stop();
  t.true(dropped > 0, 'the overflow must be counted');
  t.is(got + dropped, 2000);
});

test("a family's ring buffer feeds the agent: events counted per family and decoded by BTF", async (t) => {
  const { Agent } = await import('../agent/agent.js');
  const { moduleOf } = await import('../agent/families.js');
  const { configSchema } = await import('../agent/config.js');
  const { M } = await import('../agent/catalog.js');
  const got: Record<string, unknown>[] = [];
  const agent = new Agent(configSchema.parse({}), [
    moduleOf({
      name: 'selftest',
      object: 'selftest.bpf.o',
      probes: [],
      maps: [],
      events: { map: 'events', struct: 'selftest_event', onEvents: (evs) => void got.push(...evs) },
    }),
  ]);
  agent.start();
  t.teardown(() => agent.stop());
  agent.family('selftest')!.testProgram('selftest_emit').testRun(emitArgs(25, 100));
  const deadline = Date.now() + 5000;
  while (got.length < 25 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.is(agent.store.get(M.ringbufEvents, { family: 'selftest' })?.value, 25);
  t.deepEqual(got[0], { seq: 100, cpu: got[0]!.cpu as number, magic: 0x68767774, tag: 'selftes' });
  t.is(got[24]!.seq, 124);
});
