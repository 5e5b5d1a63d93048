// Checks bpf/btf.ts against the running kernel's BTF, with bpftool as the independent oracle.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Btf } from '../bpf/btf.js';

const VMLINUX = '/sys/kernel/btf/vmlinux';

function bpftool(...args: string[]): string {
  const r = spawnSync('bpftool', args, { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`bpftool ${args.join(' ')} failed: ${r.stderr || String(r.error)}`);
  return r.stdout;
}

interface RawType {
  id: number;
  kind: string;
  name: string;
  head: string;
  lines: string[];
}

function parseRaw(text: string): Map<number, RawType> {
  const out = new Map<number, RawType>();
  let cur: RawType | undefined;
  for (const line of text.split('\n')) {
    const m = /^\[(\d+)\] (\w+) '([^']*)'(.*)$/.exec(line);
    if (m) {
      cur = { id: Number(m[1]), kind: m[2]!, name: m[3] === '(anon)' ? '' : m[3]!, head: m[4]!, lines: [] };
      out.set(cur.id, cur);
    } else if (line.startsWith('\t') && cur) {
      cur.lines.push(line);
    }
  }
  return out;
}

let rawCache: Map<number, RawType> | undefined;
const raw = () => (rawCache ??= parseRaw(bpftool('btf', 'dump', 'file', VMLINUX, 'format', 'raw')));
const rawFind = (kind: string, name: string) => [...raw().values()].find((r) => r.kind === kind && r.name === name);
const member = (r: RawType, name: string) =>
  r.lines.map((l) => /^\t'([^']*)' (?:type_id=(\d+) )?(?:bits_offset=(\d+))?.*?(?:val=(-?\d+))?/.exec(l)).find((m) => m?.[1] === name);

// Every error from the reader must be a plain Error; RangeError/TypeError would mean a missed bounds check.
function ownError(e: unknown): e is Error {
  return e instanceof Error && e.constructor === Error;
}

test('parses vmlinux fast and agrees with bpftool on every type id, kind and name', (t) => {
  const buf = readFileSync(VMLINUX);
  const times: number[] = [];
  let btf!: Btf;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    btf = Btf.parse(buf);
    times.push(performance.now() - t0);
  }
  const t0 = performance.now();
  btf.find('task_struct');
  const indexMs = performance.now() - t0;
  times.sort((a, b) => a - b);
  t.log(`vmlinux ${buf.length} bytes, ${btf.typeCount} types: parse median ${times[2]!.toFixed(1)} ms, first find (name index) ${indexMs.toFixed(1)} ms`);
  t.true(times[2]! < 500);

  const r = raw();
  t.is(btf.typeCount, [...r.keys()].reduce((a, b) => Math.max(a, b)) + 1);
  let mismatches = 0;
  for (const rt of r.values()) {
    const ty = btf.typeById(rt.id);
    if (ty.kind.toUpperCase() !== rt.kind || ty.name !== rt.name) mismatches++;
  }
  t.is(mismatches, 0);
  t.throws(() => btf.typeById(btf.typeCount), { message: /out of range/ });
  t.throws(() => btf.typeById(0), { message: /void/ });
});

test('struct bpf_prog_info run_time_ns/run_cnt offsets match bpftool', (t) => {
  const btf = Btf.vmlinux();
  const layout = btf.structLayout('bpf_prog_info');
  const rt = rawFind('STRUCT', 'bpf_prog_info');
  if (!layout || !rt) return t.fail('bpf_prog_info missing');
  t.is(layout.size, Number(/size=(\d+)/.exec(rt.head)?.[1]));
  for (const name of ['run_time_ns', 'run_cnt']) {
    const f = layout.fields.find((x) => x.name === name);
    const bits = member(rt, name)?.[3];
    t.truthy(f && bits, name);
    t.is(f!.offset * 8, Number(bits), name);
    t.like(f, { size: 8, kind: 'int', signed: false });
  }
});

test('every named struct/union flattens to the member offsets bpftool reports', (t) => {
  const btf = Btf.vmlinux();
  const r = raw();
  // Independent flattening from bpftool's raw dump: anonymous struct/union members add their offset.
  const flatten = (id: number, base: number, out: Map<string, [number, number]>) => {
    for (const l of r.get(id)!.lines) {
      const m = /^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)(?: bitfield_size=(\d+))?/.exec(l)!;
      const off = base + Number(m[3]);
      let inner = r.get(Number(m[2]));
      while (inner && ['CONST', 'VOLATILE', 'TYPEDEF', 'RESTRICT', 'TYPE_TAG'].includes(inner.kind))
        inner = r.get(Number(/type_id=(\d+)/.exec(inner.head)?.[1])); // e.g. vm_fault's `const struct { ... };`
      if (m[1] === '(anon)' && (inner?.kind === 'STRUCT' || inner?.kind === 'UNION')) flatten(inner.id, off, out);
      else out.set(m[1]!, [off, Number(m[4] ?? 0)]);
    }
  };
  let structs = 0,
    fields = 0,
    bitfields = 0;
  const bad: string[] = [];
  for (const rt of r.values()) {
    if ((rt.kind !== 'STRUCT' && rt.kind !== 'UNION') || !rt.name) continue;
    if ((btf.find(rt.name, 'struct') ?? btf.find(rt.name, 'union'))?.id !== rt.id) continue; // structLayout reports the first of duplicate names
    const layout = btf.structLayout(rt.name)!;
    const want = new Map<string, [number, number]>();
    flatten(rt.id, 0, want);
    structs++;
    if (want.size !== layout.fields.length) bad.push(`${rt.name}: ${layout.fields.length} fields, bpftool ${want.size}`);
    for (const f of layout.fields) {
      fields++;
      const w = want.get(f.name);
      const ok = f.bitSize
        ? (bitfields++, w?.[0] === f.bitOffset && w?.[1] === f.bitSize && f.size === 0)
        : w?.[0] === f.offset * 8 && w[1] === 0 && f.offset + f.size <= layout.size;
      if (!ok) bad.push(`${rt.name}.${f.name}`);
    }
  }
  t.log(`${structs} structs/unions, ${fields} flattened fields (${bitfields} bitfields, reported with size 0)`);
  t.deepEqual(bad.slice(0, 10), []);
  t.true(structs > 1000);
});

test('enum values NR_WRITEBACK and PGPGOUT match bpftool', (t) => {
  const btf = Btf.vmlinux();
  for (const [en, val] of [
    ['node_stat_item', 'NR_WRITEBACK'],
    ['vm_event_item', 'PGPGOUT'],
  ] as const) {
    const want = member(rawFind('ENUM', en)!, val)?.[4];
    t.truthy(want, `${en}.${val} in bpftool output`);
    t.is(btf.enumValue(en, val), BigInt(want!));
    t.is(btf.enumValue('', val), BigInt(want!));
  }
  t.is(btf.enumValue('node_stat_item', 'NOT_A_VALUE_XYZ'), undefined);
  t.is(btf.enumValue('', 'NOT_A_VALUE_XYZ'), undefined);
  t.is(btf.enumValue('not_an_enum_xyz', 'NR_WRITEBACK'), undefined);
});

test('enum64 values match bpftool', (t) => {
  const btf = Btf.vmlinux();
  const enums = [...raw().values()].filter((r) => r.kind === 'ENUM64');
  if (enums.length === 0) return t.pass(); // older kernels have none; enum64 decoding is also covered by the split test
  for (const rt of enums) {
    const ty = btf.typeById(rt.id);
    t.deepEqual(
      ty.values!.map((v) => `${v.name}=${v.value}`),
      rt.lines.map((l) => l.replace(/^\t'(.*)' val=(-?\d+)(ULL|LL)?$/, '$1=$2')),
    );
  }
});

test('tracepointParams(mod_memcg_lruvec_state) matches bpftool', (t) => {
  const btf = Btf.vmlinux();
  const params = btf.tracepointParams('mod_memcg_lruvec_state');
  t.truthy(params);
  t.deepEqual(
    params!.map((p) => p.name),
    ['memcg', 'item', 'val'],
  );
  // bpftool: typedef -> PTR -> FUNC_PROTO with the __data ctx first (its params are anonymous in kernel BTF).
  const td = rawFind('TYPEDEF', 'btf_trace_mod_memcg_lruvec_state')!;
  const ptr = raw().get(Number(/type_id=(\d+)/.exec(td.head)![1]))!;
  const proto = raw().get(Number(/type_id=(\d+)/.exec(ptr.head)![1]))!;
  t.is(proto.kind, 'FUNC_PROTO');
  t.is(proto.lines.length, params!.length + 1);
  // Names come from the __probestub_ function; bpftool must show the same names on it.
  const stub = rawFind('FUNC', '__probestub_mod_memcg_lruvec_state');
  if (stub) {
    const stubProto = raw().get(Number(/type_id=(\d+)/.exec(stub.head)![1]))!;
    t.deepEqual(
      stubProto.lines.slice(1).map((l) => /'([^']*)'/.exec(l)![1]),
      params!.map((p) => p.name),
    );
  }
  t.is(btf.tracepointParams('definitely_not_a_tracepoint_xyz'), undefined);
});

test('tracepointParams type names equal bpftool format c for every btf_trace_ typedef', (t) => {
  const btf = Btf.vmlinux();
  const c = bpftool('btf', 'dump', 'file', VMLINUX, 'format', 'c');
  let n = 0;
  const bad: string[] = [];
  for (const m of c.matchAll(/^typedef void \(\*btf_trace_(\w+)\)\(void \*(?:, )?(.*)\);$/gm)) {
    n++;
    const ps = btf.tracepointParams(m[1]!);
    if (ps?.map((p) => p.typeName).join(', ') !== m[2] || ps?.some((p) => !p.name)) bad.push(m[1]!);
  }
  t.log(`${n} tracepoints checked`);
  t.true(n > 100);
  t.deepEqual(bad.slice(0, 10), []);
  t.deepEqual(
    btf.tracepointParams('sched_switch')?.map((p) => `${p.typeName} ${p.name}`),
    ['bool preempt', 'struct task_struct * prev', 'struct task_struct * next', 'unsigned int prev_state'],
  );
});

test('hasFunc agrees with bpftool', (t) => {
  const btf = Btf.vmlinux();
  t.is(btf.hasFunc('__folio_end_writeback'), rawFind('FUNC', '__folio_end_writeback') !== undefined);
  t.false(btf.hasFunc('definitely_not_a_kernel_fn_xyz'));
  t.true(btf.hasFunc('schedule'));
  t.is(btf.find('schedule', 'struct'), undefined);
});

test('missing BTF files', (t) => {
  t.throws(() => Btf.vmlinux('/nonexistent/vmlinux'), { message: /^no kernel BTF at \/nonexistent\/vmlinux/ });
  t.is(Btf.module('definitely_not_a_module_xyz'), undefined);
});

// A split-BTF blob on top of the real vmlinux, encoded by hand and checked with
// `bpftool -B vmlinux`, so split handling is tested even where no module BTF is loaded.
function splitBlob(base: Btf, baseStrLen: number, hostile = false): { blob: Uint8Array; first: number } {
  const strs = [
    'hvw_split_probe',
    'task',
    'pid',
    'flag',
    'val',
    'btf_trace_hvw_split_probe',
    'hvw_split_enum',
    'HVW_SPLIT_A',
    'hvw_split_e64',
    'HVW_BIG',
    'hvw_loop',
    'btf_trace_hvw_loop',
    'hvw_loop_s',
  ];
  const name = (s: string) => baseStrLen + strs.slice(0, strs.indexOf(s)).reduce((n, x) => n + x.length + 1, 0);
  const info = (kind: number, vlen: number, kflag = 0) => ((kflag << 31) | (kind << 24) | vlen) >>> 0;
  const first = base.typeCount;
  const task = base.find('task_struct', 'struct')!.id,
    int = base.find('int', 'int')!.id,
    u32 = base.find('u32', 'typedef')!.id;
  // hostile: a self-typedef, a 1000-param prototype whose params point back at it, and a
  // struct with 1000 anonymous members of itself; naive recursion would never finish.
  const words = hostile
    ? [
        name('hvw_loop'),
        info(8, 0),
        first, // first+0
        0,
        info(2, 0),
        first + 2, // first+1: pointer to the proto
        0,
        info(13, 1000),
        0,
        ...Array.from({ length: 1000 }, () => [0, first + 1]).flat(), // first+2
        name('btf_trace_hvw_loop'),
        info(8, 0),
        first + 1, // first+3
        name('hvw_loop_s'),
        info(4, 1000),
        8,
        ...Array.from({ length: 1000 }, () => [0, first + 4, 0]).flat(), // first+4
      ]
    : [
        0,
        info(2, 0),
        task, // first+0: struct task_struct *
        name('hvw_split_probe'),
        info(4, 3, 1),
        16, // first+1: struct with a bitfield (kind_flag)
        name('task'),
        first,
        0,
        name('pid'),
        int,
        64,
        name('flag'),
        int,
        (3 << 24) | 97,
        0,
        info(13, 3),
        0,
        0,
        first + 3,
        name('task'),
        first,
        name('val'),
        u32, // first+2: void (void *, struct task_struct *, u32)
        0,
        info(2, 0),
        0, // first+3: void *
        0,
        info(2, 0),
        first + 2, // first+4: pointer to the proto
        name('btf_trace_hvw_split_probe'),
        info(8, 0),
        first + 4, // first+5
        name('hvw_split_enum'),
        info(6, 1, 1),
        4,
        name('HVW_SPLIT_A'),
        -7 >>> 0, // first+6: signed enum
        name('hvw_split_e64'),
        info(19, 1),
        8,
        name('HVW_BIG'),
        5,
        1 << 8, // first+7: 0x100_0000_0005
      ];
  const types = new Uint8Array(new Uint32Array(words).buffer);
  const str = new TextEncoder().encode(strs.join('\0') + '\0');
  const blob = new Uint8Array(24 + types.length + str.length);
  const dv = new DataView(blob.buffer);
  [0x0001eb9f, 24, 0, types.length, types.length, str.length].forEach((v, i) => dv.setUint32(i * 4, v, true));
  blob.set(types, 24);
  blob.set(str, 24 + types.length);
  return { blob, first };
}

test('split BTF: hand-built module blob on vmlinux agrees with bpftool -B', (t) => {
  const vmBuf = readFileSync(VMLINUX);
  const base = Btf.vmlinux();
  const { blob, first } = splitBlob(base, new DataView(vmBuf.buffer, vmBuf.byteOffset).getUint32(20, true));
  const dir = mkdtempSync(join(tmpdir(), 'hvw-btf-'));
  try {
    writeFileSync(join(dir, 'split.btf'), blob);
    const r = parseRaw(bpftool('-B', VMLINUX, 'btf', 'dump', 'file', join(dir, 'split.btf'), 'format', 'raw'));
    const mod = Btf.parse(blob, base);
    t.is(mod.typeCount, first + 8);
    t.is(Math.min(...r.keys()), first);
    for (const rt of r.values()) t.deepEqual([mod.typeById(rt.id).kind.toUpperCase(), mod.typeById(rt.id).name], [rt.kind, rt.name]);
    t.is(mod.typeById(1).name, base.typeById(1).name); // base ids still resolve through the module
    const layout = mod.structLayout('hvw_split_probe')!;
    const rs = r.get(first + 1)!;
    t.deepEqual(
      layout.fields.map((f) => [f.name, f.bitSize ? f.bitOffset : f.offset * 8, f.bitSize ?? 0]),
      rs.lines.map((l) => /'(\w+)' type_id=\d+ bits_offset=(\d+)(?: bitfield_size=(\d+))?/.exec(l)!).map((m) => [m[1], Number(m[2]), Number(m[3] ?? 0)]),
    );
    t.like(layout.fields[0], { typeName: 'struct task_struct *', size: 8, kind: 'ptr' });
    t.deepEqual(mod.tracepointParams('hvw_split_probe'), [
      { name: 'task', typeName: 'struct task_struct *' },
      { name: 'val', typeName: 'u32' },
    ]);
    t.is(mod.enumValue('hvw_split_enum', 'HVW_SPLIT_A'), BigInt(member(r.get(first + 6)!, 'HVW_SPLIT_A')![4]!));
    t.is(mod.enumValue('hvw_split_enum', 'HVW_SPLIT_A'), -7n);
    t.is(mod.enumValue('', 'HVW_BIG'), BigInt(/val=(\d+)/.exec(r.get(first + 7)!.lines[0]!)![1]!));
    t.is(mod.enumValue('', 'NR_WRITEBACK'), base.enumValue('', 'NR_WRITEBACK'));
    t.is(mod.find('task_struct', 'struct')?.id, base.find('task_struct', 'struct')?.id);
    t.throws(() => mod.typeById(first + 8), { message: /out of range/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('cyclic and exponentially shared type graphs throw quickly instead of hanging', (t) => {
  const vmBuf = readFileSync(VMLINUX);
  const base = Btf.vmlinux();
  const { blob, first } = splitBlob(base, new DataView(vmBuf.buffer, vmBuf.byteOffset).getUint32(20, true), true);
  const mod = Btf.parse(blob, base);
  const t0 = performance.now();
  t.throws(() => mod.resolve(first), { message: /cyclic/ });
  t.throws(() => mod.sizeOf(first), { message: /cyclic/ });
  t.throws(() => mod.tracepointParams('hvw_loop'), { message: /cyclic/ });
  t.throws(() => mod.structLayout('hvw_loop_s'), { message: /cyclic/ });
  t.true(performance.now() - t0 < 2000);
});

spawnSync('modprobe', ['kvm']); // best effort: absent tool, no module or no permission all just leave kvm missing
const hasKvm = existsSync('/sys/kernel/btf/kvm');
(hasKvm ? test : test.skip)(
  hasKvm
    ? 'split BTF: kvm module BTF has btf_trace_kvm_userspace_exit'
    : 'split BTF: kvm module BTF (SKIPPED: /sys/kernel/btf/kvm absent after `modprobe kvm`; kvm not loaded or not loadable here)',
  (t) => {
    const kvm = Btf.module('kvm')!;
    const base = Btf.vmlinux();
    const td = kvm.find('btf_trace_kvm_userspace_exit', 'typedef');
    t.truthy(td);
    t.true(td!.id >= base.typeCount);
    const c = bpftool('-B', VMLINUX, 'btf', 'dump', 'file', '/sys/kernel/btf/kvm', 'format', 'c');
    const want = /^typedef void \(\*btf_trace_kvm_userspace_exit\)\(void \*, (.*)\);$/m.exec(c)?.[1];
    const params = kvm.tracepointParams('kvm_userspace_exit');
    t.is(params?.map((p) => p.typeName).join(', '), want);
    t.deepEqual(
      params?.map((p) => p.name),
      ['reason', 'errno'],
    );
  },
);

// header(24) | first types that fit in 64 KiB | the full vmlinux string section, so names still resolve.
function miniBtf(): { mini: Uint8Array; typeLen: number } {
  const vm = readFileSync(VMLINUX);
  const dv = new DataView(vm.buffer, vm.byteOffset, vm.byteLength);
  const [typeOff, strOff, strLen] = [dv.getUint32(8, true), dv.getUint32(16, true), dv.getUint32(20, true)];
  const room = 65536 - 24;
  const mini = new Uint8Array(24 + room + strLen);
  mini.set(vm.subarray(0, 24));
  mini.set(vm.subarray(24 + typeOff, 24 + typeOff + room), 24);
  mini.set(vm.subarray(24 + strOff, 24 + strOff + strLen), 24 + room);
  const mdv = new DataView(mini.buffer);
  [0, 0, room].forEach((v, i) => mdv.setUint32(8 + i * 4, v, true));
  mdv.setUint32(20, strLen, true);
  for (let len = room; len > 0; len--) {
    mdv.setUint32(12, len, true);
    try {
      Btf.parse(mini);
      return { mini, typeLen: len };
    } catch {
      /* cut is inside a type record; try a shorter section */
    }
  }
  throw new Error('no type boundary in the first 64 KiB');
}

test('corrupt input: truncation, bad magic, bad version, garbage kind name the problem and offset', (t) => {
  const vm = readFileSync(VMLINUX);
  const { mini, typeLen } = miniBtf();
  const check = (buf: Uint8Array, re: RegExp) => {
    const e = t.throws(() => Btf.parse(buf), { message: re });
    t.true(ownError(e), e?.message);
    t.regex(e?.message ?? '', /offset \d+/);
  };
  check(vm.subarray(0, 10), /truncated header.*byte offset 0/);
  check(vm.subarray(0, 100_000), /truncated (type|string) section.*byte offset \d+/);
  const cut = mini.slice();
  new DataView(cut.buffer).setUint32(12, typeLen + 5, true);
  check(cut, /truncated type section: type id \d+ .*at byte offset \d+/);
  const magic = mini.slice();
  magic[0] = 0x00;
  check(magic, /bad magic 0x.* at byte offset 0/);
  const be = mini.slice();
  [be[0], be[1]] = [0xeb, 0x9f];
  check(be, /big-endian/);
  const ver = mini.slice();
  ver[2] = 7;
  check(ver, /unsupported version 7 at byte offset 2/);
  const kind = mini.slice();
  kind[24 + 7] = 0x1f; // high byte of the first type's info word: kind 31
  check(kind, /unknown kind 31 for type id 1 at byte offset 24/);
  const nul = mini.slice();
  nul[nul.length - 1] = 0x41;
  check(nul, /not NUL-terminated/);
});

test('fuzz: 2,000 byte flips and truncations of the first 64 KiB either parse or throw a plain Error', (t) => {
  const { mini } = miniBtf();
  let seed = 0x5eed1234;
  const rnd = (n: number) => {
    // mulberry32, so a failure is reproducible
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) % n;
  };
  const names = ['task_struct', 'list_head', 'int', 'pt_regs', 'file_operations', 'mod_memcg_lruvec_state'];
  const failures: string[] = [];
  let parsed = 0,
    rejected = 0;
  const guard = (what: string, f: () => unknown) => {
    try {
      f();
    } catch (e) {
      if (!ownError(e)) failures.push(`${what}: ${String(e)}`);
      return false;
    }
    return true;
  };
  for (let iter = 0; iter < 2000; iter++) {
    const saved: [number, number][] = [];
    const mode = rnd(4);
    let buf = mini;
    if (mode === 3) {
      buf = mini.subarray(0, rnd(mini.length));
    } else {
      for (let k = 1 + rnd(mode === 2 ? 4 : 8); k > 0; k--) {
        const at = rnd(65536);
        saved.push([at, mini[at]!]);
        mini[at] = mode === 2 ? rnd(256) : mini[at]! ^ (1 << rnd(8));
      }
    }
    let btf: Btf | undefined;
    if (guard(`parse #${iter}`, () => (btf = Btf.parse(buf)))) {
      parsed++;
      const b = btf!;
      for (let k = 0; k < 40; k++) {
        const id = rnd(b.typeCount + 2);
        guard(`typeById(${id}) #${iter}`, () => b.typeById(id));
        guard(`resolve/sizeOf(${id}) #${iter}`, () => b.sizeOf(id));
      }
      for (const n of names) {
        guard(`structLayout(${n}) #${iter}`, () => b.structLayout(n));
        guard(`tracepointParams(${n}) #${iter}`, () => b.tracepointParams(n));
      }
      guard(`enumValue #${iter}`, () => b.enumValue('', 'NR_WRITEBACK'));
      guard(`hasFunc #${iter}`, () => b.hasFunc('schedule'));
    } else {
      rejected++;
    }
    for (const [at, v] of saved.reverse()) mini[at] = v;
  }
  t.log(`${parsed} parsed, ${rejected} rejected`);
  t.deepEqual(failures.slice(0, 5), []);
  t.true(parsed > 0 && rejected > 0);
});
