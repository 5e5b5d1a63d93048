// Typed binding over the system libbpf (Debian libbpf1, 1.1) through koffi.
// koffi was chosen over an N-API addon: no compile step on install, and its call overhead
// (bench/ffi.ts: ~25 ns per call here) is noise next to the bpf() syscalls behind each call.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
// koffi ships CommonJS with prebuilt binaries; createRequire keeps it out of ESM interop.
const koffi = require('koffi') as typeof import('koffi');

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');
koffi.opaque('bpf_link');
koffi.opaque('btf');

const OpenOpts = koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'const char *',
  relaxed_maps: 'bool',
  pin_root_path: 'const char *',
  _pad_attach_prog_fd: 'uint32_t',
  kconfig: 'const char *',
  btf_custom_path: 'const char *',
  kernel_log_buf: 'char *',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});

const TestRunOpts = koffi.struct('bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

const PrintFn = koffi.proto('int libbpf_print_fn(int level, const char *fmt, void *args)');

const f = {
  versionString: lib.func('const char *libbpf_version_string()'),
  numPossibleCpus: lib.func('int libbpf_num_possible_cpus()'),
  setPrint: lib.func('void *libbpf_set_print(libbpf_print_fn *fn)'),
  openFile: lib.func('bpf_object *bpf_object__open_file(const char *path, bpf_object_open_opts *opts)'),
  objLoad: lib.func('int bpf_object__load(bpf_object *obj)'),
  objClose: lib.func('void bpf_object__close(bpf_object *obj)'),
  objBtf: lib.func('btf *bpf_object__btf(bpf_object *obj)'),
  btfRaw: lib.func('const void *btf__raw_data(btf *btf, _Out_ uint32_t *size)'),
  nextProgram: lib.func('bpf_program *bpf_object__next_program(bpf_object *obj, bpf_program *prev)'),
  nextMap: lib.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *prev)'),
  progName: lib.func('const char *bpf_program__name(bpf_program *prog)'),
  progSection: lib.func('const char *bpf_program__section_name(bpf_program *prog)'),
  progSetAutoload: lib.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)'),
  progSetAttachTarget: lib.func('int bpf_program__set_attach_target(bpf_program *prog, int fd, const char *name)'),
  progFd: lib.func('int bpf_program__fd(bpf_program *prog)'),
  attach: lib.func('bpf_link *bpf_program__attach(bpf_program *prog)'),
  attachTrace: lib.func('bpf_link *bpf_program__attach_trace(bpf_program *prog)'),
  attachKprobe: lib.func('bpf_link *bpf_program__attach_kprobe(bpf_program *prog, bool retprobe, const char *fn)'),
  attachTracepoint: lib.func('bpf_link *bpf_program__attach_tracepoint(bpf_program *prog, const char *cat, const char *name)'),
  attachRawTracepoint: lib.func('bpf_link *bpf_program__attach_raw_tracepoint(bpf_program *prog, const char *name)'),
  linkDestroy: lib.func('int bpf_link__destroy(bpf_link *link)'),
  mapName: lib.func('const char *bpf_map__name(bpf_map *map)'),
  mapFd: lib.func('int bpf_map__fd(bpf_map *map)'),
  mapType: lib.func('int bpf_map__type(bpf_map *map)'),
  mapKeySize: lib.func('uint32_t bpf_map__key_size(bpf_map *map)'),
  mapValueSize: lib.func('uint32_t bpf_map__value_size(bpf_map *map)'),
  mapMaxEntries: lib.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
  mapSetMaxEntries: lib.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t n)'),
  mapFlags: lib.func('uint32_t bpf_map__map_flags(bpf_map *map)'),
  mapSetFlags: lib.func('int bpf_map__set_map_flags(bpf_map *map, uint32_t flags)'),
  mapReuseFd: lib.func('int bpf_map__reuse_fd(bpf_map *map, int fd)'),
  mapBtfKeyTypeId: lib.func('uint32_t bpf_map__btf_key_type_id(bpf_map *map)'),
  mapBtfValueTypeId: lib.func('uint32_t bpf_map__btf_value_type_id(bpf_map *map)'),
  lookup: lib.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)'),
  update: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  del: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  nextKey: lib.func('int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next)'),
  testRun: lib.func('int bpf_prog_test_run_opts(int fd, _Inout_ bpf_test_run_opts *opts)'),
  objInfo: lib.func('int bpf_obj_get_info_by_fd(int fd, _Inout_ void *info, _Inout_ uint32_t *len)'),
  enableStats: lib.func('int bpf_enable_stats(int type)'),
  vsnprintf: libc.func('int vsnprintf(_Out_ uint8_t *buf, size_t n, const char *fmt, void *ap)'),
  strerror: libc.func('const char *strerror(int errnum)'),
  close: libc.func('int close(int fd)'),
  mallocTrim: libc.func('int malloc_trim(size_t pad)'),
};

export const libbpfVersion: string = f.versionString();
export const possibleCpus: number = f.numPossibleCpus();

// BPF map types whose lookups return one value per possible CPU (include/uapi/linux/bpf.h).
export const BPF_MAP_TYPE_PERCPU_HASH = 5;
export const BPF_F_NO_PREALLOC = 1;
const PERCPU_MAP_TYPES = new Set([BPF_MAP_TYPE_PERCPU_HASH, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */, 21 /* PERCPU_CGROUP_STORAGE */]);

export function errnoMessage(err: number): string {
  const e = Math.abs(err);
  return `${f.strerror(e)} (errno ${e})`;
}

// ---- libbpf's log: captured into a bounded ring so errors can carry its last words ----

const LOG_LINES = 400;
const logRing: string[] = [];
const printBuf = Buffer.alloc(8192);
let printCb: unknown;

function installPrint(): void {
  if (printCb) return;
  printCb = koffi.register((level: number, fmt: string, args: unknown) => {
    const n = f.vsnprintf(printBuf, printBuf.length, fmt, args);
    const text = printBuf.subarray(0, Math.max(0, Math.min(n, printBuf.length - 1))).toString('utf8');
    for (const line of text.split('\n')) {
      if (line === '' ) continue;
      logRing.push(line);
      if (logRing.length > LOG_LINES) logRing.shift();
    }
    if (process.env.HVWATCH_LIBBPF_DEBUG && level <= 2) process.stderr.write(`libbpf: ${text}`);
    return 0;
  }, koffi.pointer(PrintFn));
  f.setPrint(printCb);
}
installPrint();

function logMark(): number {
  return logRing.length === LOG_LINES ? -1 : logRing.length;
}

function logSince(mark: number): string[] {
  return mark < 0 ? logRing.slice() : logRing.slice(mark);
}

export class BpfError extends Error {
  constructor(message: string, readonly errno: number, readonly log: string[] = []) {
    super(message);
    this.name = 'BpfError';
  }
  // The verifier's own conclusion is the last lines of its log; libbpf wraps it in markers.
  verifierTail(lines = 12): string[] {
    const end = this.log.findLastIndex((l) => l.includes('-- END PROG LOAD LOG --'));
    const begin = this.log.findLastIndex((l) => l.includes('-- BEGIN PROG LOAD LOG --'));
    if (end > begin && begin >= 0) return this.log.slice(Math.max(begin + 1, end - lines), end);
    return this.log.slice(-lines);
  }
}

function fail(what: string, ret: number, mark: number): never {
  const errno = ret < 0 ? -ret : koffi.errno();
  throw new BpfError(`${what}: ${errnoMessage(errno)}`, errno, logSince(mark));
}

// ---- objects, programs, links ----

export interface OpenOptions {
  btfCustomPath?: string;
}

type Ptr = unknown;

export class BpfProgram {
  constructor(private readonly ptr: Ptr, readonly name: string, readonly section: string) {}
  setAutoload(on: boolean): void {
    const r = f.progSetAutoload(this.ptr, on);
    if (r < 0) fail(`set autoload on ${this.name}`, r, logMark());
  }
  setAttachTarget(target: string): void {
    const mark = logMark();
    const r = f.progSetAttachTarget(this.ptr, 0, target);
    if (r < 0) fail(`set attach target ${target} on ${this.name}`, r, mark);
  }
  get fd(): number {
    return f.progFd(this.ptr);
  }

  attach(kind: AttachKind, target: string): BpfLink {
    const mark = logMark();
    let link: Ptr;
    switch (kind) {
      case 'fentry':
      case 'fexit':
      case 'tp_btf':
        link = f.attachTrace(this.ptr);
        break;
      case 'kprobe':
      case 'kretprobe':
        link = f.attachKprobe(this.ptr, kind === 'kretprobe', target);
        break;
      case 'tracepoint': {
        const [cat, name] = target.split('/');
        link = f.attachTracepoint(this.ptr, cat ?? '', name ?? '');
        break;
      }
      case 'raw_tracepoint':
        link = f.attachRawTracepoint(this.ptr, target);
        break;
    }
    if (!link) fail(`attach ${kind}:${target}`, 0, mark);
    return new BpfLink(link);
  }

  // BPF_PROG_TEST_RUN for SEC("syscall") programs: ctx is the argument struct, written back.
  testRun(ctx: Buffer): { retval: number; ctx: Buffer } {
    const opts = {
      sz: koffi.sizeof(TestRunOpts), data_in: null, data_out: null, data_size_in: 0, data_size_out: 0,
      ctx_in: ctx, ctx_out: null, ctx_size_in: ctx.length, ctx_size_out: 0,
      retval: 0, repeat: 0, duration: 0, flags: 0, cpu: 0, batch_size: 0,
    };
    const r = f.testRun(this.fd, opts);
    if (r < 0) fail(`test run ${this.name}`, r, logMark());
    return { retval: opts.retval | 0, ctx };
  }

  /** BPF_PROG_TEST_RUN with `repeat` on a packet program: the kernel's mean ns per run. */
  benchRun(repeat: number, packet: Buffer = Buffer.alloc(64)): { retval: number; nsPerRun: number } {
    const opts = {
      sz: koffi.sizeof(TestRunOpts), data_in: packet, data_out: null, data_size_in: packet.length, data_size_out: 0,
      ctx_in: null, ctx_out: null, ctx_size_in: 0, ctx_size_out: 0,
      retval: 0, repeat, duration: 0, flags: 0, cpu: 0, batch_size: 0,
    };
    const r = f.testRun(this.fd, opts);
    if (r < 0) fail(`test run ${this.name}`, r, logMark());
    return { retval: opts.retval | 0, nsPerRun: opts.duration };
  }

  stats(): ProgStats {
    return progStats(this.fd);
  }
}

export const ATTACH_KINDS = ['fentry', 'fexit', 'kprobe', 'kretprobe', 'tp_btf', 'tracepoint', 'raw_tracepoint'] as const;
export type AttachKind = (typeof ATTACH_KINDS)[number];

export class BpfLink {
  constructor(private ptr: Ptr | null) {}
  destroy(): void {
    if (this.ptr) f.linkDestroy(this.ptr);
    this.ptr = null;
  }
}

export class BpfObject {
  private closed = false;
  private constructor(private readonly ptr: Ptr, readonly path: string) {}

  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const mark = logMark();
    const o = {
      sz: koffi.sizeof(OpenOpts), object_name: null, relaxed_maps: false, pin_root_path: null,
      _pad_attach_prog_fd: 0, kconfig: null, btf_custom_path: opts.btfCustomPath ?? null,
      kernel_log_buf: null, kernel_log_size: 0, kernel_log_level: 0,
    };
    const ptr = f.openFile(path, o);
    if (!ptr) fail(`open ${path}`, 0, mark);
    return new BpfObject(ptr, path);
  }

  programs(): BpfProgram[] {
    const out: BpfProgram[] = [];
    for (let p = f.nextProgram(this.ptr, null); p; p = f.nextProgram(this.ptr, p)) {
      out.push(new BpfProgram(p, f.progName(p), f.progSection(p)));
    }
    return out;
  }

  program(name: string): BpfProgram {
    const p = this.programs().find((x) => x.name === name);
    if (!p) throw new BpfError(`program ${name} not in ${this.path}`, 2);
    return p;
  }

  maps(): BpfMap[] {
    const out: BpfMap[] = [];
    for (let m = f.nextMap(this.ptr, null); m; m = f.nextMap(this.ptr, m)) out.push(new BpfMap(m));
    return out;
  }

  map(name: string): BpfMap {
    const m = this.maps().find((x) => x.name === name);
    if (!m) throw new BpfError(`map ${name} not in ${this.path}`, 2);
    return m;
  }

  // On failure the error carries libbpf's log, including the verifier's.
  load(): void {
    const mark = logMark();
    const r = f.objLoad(this.ptr);
    if (r < 0) fail(`load ${this.path}`, r, mark);
  }

  // The object's BTF as raw bytes: the source of truth for shared struct layouts.
  rawBtf(): Buffer {
    const btf = f.objBtf(this.ptr);
    if (!btf) throw new BpfError(`${this.path} has no BTF`, 2);
    const size = [0];
    const p = f.btfRaw(btf, size);
    return Buffer.from(koffi.view(p, size[0]!).slice(0));
  }

  close(): void {
    if (!this.closed) f.objClose(this.ptr);
    this.closed = true;
  }
}

// ---- maps ----

export class BpfMap {
  readonly name: string;
  private readonly handle: Ptr;
  constructor(ptr: Ptr) {
    this.handle = ptr;
    this.name = f.mapName(ptr);
  }
  get fd(): number { return f.mapFd(this.handle); }
  get type(): number { return f.mapType(this.handle); }
  get keySize(): number { return f.mapKeySize(this.handle); }
  get valueSize(): number { return f.mapValueSize(this.handle); }
  get maxEntries(): number { return f.mapMaxEntries(this.handle); }
  get btfKeyTypeId(): number { return f.mapBtfKeyTypeId(this.handle); }
  get btfValueTypeId(): number { return f.mapBtfValueTypeId(this.handle); }
  setMaxEntries(n: number): void {
    const r = f.mapSetMaxEntries(this.handle, n);
    if (r < 0) fail(`resize map ${this.name}`, r, logMark());
  }
  get flags(): number { return f.mapFlags(this.handle); }
  setFlags(flags: number): void {
    const r = f.mapSetFlags(this.handle, flags);
    if (r < 0) fail(`set flags of map ${this.name}`, r, logMark());
  }
  // Share one kernel map between object instances (every attach candidate is its own
  // object instance; the family's maps are created once).
  reuseFd(fd: number): void {
    const r = f.mapReuseFd(this.handle, fd);
    if (r < 0) fail(`reuse fd for map ${this.name}`, r, logMark());
  }
  handleForFd(): MapFd {
    return new MapFd(this.fd, this.keySize, this.valueSize, PERCPU_MAP_TYPES.has(this.type), this.maxEntries, this.name);
  }
}

// A loaded map addressed by fd: what the aggregation layer reads at scrape time.
export class MapFd {
  private readonly rawSize: number;
  constructor(
    readonly fd: number, readonly keySize: number, readonly valueSize: number,
    readonly percpu: boolean, readonly maxEntries: number, readonly name: string,
  ) {
    // Per-CPU lookups fill one 8-byte-aligned slot per possible CPU (kernel/bpf/syscall.c).
    this.rawSize = percpu ? Math.ceil(valueSize / 8) * 8 * possibleCpus : valueSize;
  }

  lookupRaw(key: Buffer): Buffer | undefined {
    const out = Buffer.alloc(this.rawSize);
    const r = f.lookup(this.fd, key, out);
    if (r < 0) {
      if (-r === 2) return undefined; // ENOENT
      fail(`lookup in ${this.name}`, r, logMark());
    }
    return out;
  }

  // Per-CPU values summed as u64 words; every hvwatch per-CPU value is a struct of u64
  // counters, so the fold keeps the single-value layout that BTF describes.
  lookup(key: Buffer): Buffer | undefined {
    const raw = this.lookupRaw(key);
    return raw && this.percpu ? foldPerCpuU64(raw, this.valueSize, possibleCpus) : raw;
  }

  keys(): Buffer[] {
    const keys: Buffer[] = [];
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      const r = f.nextKey(this.fd, prev, next);
      if (r < 0) {
        if (-r === 2) break; // ENOENT: end of map
        fail(`iterate ${this.name}`, r, logMark());
      }
      keys.push(next);
      prev = next;
      if (keys.length > this.maxEntries * 2) break; // a map mutating under us must not loop us
    }
    return keys;
  }

  *entries(): Generator<[Buffer, Buffer]> {
    for (const k of this.keys()) {
      const v = this.lookup(k);
      if (v) yield [k, v]; // deleted between the key walk and the lookup: skip
    }
  }

  update(key: Buffer, value: Buffer, flags = 0): void {
    const r = f.update(this.fd, key, value, flags);
    if (r < 0) fail(`update ${this.name}`, r, logMark());
  }

  delete(key: Buffer): boolean {
    const r = f.del(this.fd, key);
    if (r < 0 && -r !== 2) fail(`delete from ${this.name}`, r, logMark());
    return r === 0;
  }

  count(): number {
    return this.keys().length;
  }

  /** Entry i of an array of u64 counters (per-CPU ones summed); 0 when absent. */
  counter(i: number): number {
    const k = Buffer.alloc(4);
    k.writeUInt32LE(i);
    return Number(this.lookup(k)?.readBigUInt64LE(0) ?? 0n);
  }
}

export function foldPerCpuU64(raw: Buffer, valueSize: number, cpus: number): Buffer {
  const stride = Math.ceil(valueSize / 8) * 8;
  const words = Math.floor(valueSize / 8);
  const out = Buffer.alloc(valueSize);
  for (let w = 0; w < words; w++) {
    let sum = 0n;
    for (let c = 0; c < cpus; c++) sum += raw.readBigUInt64LE(c * stride + w * 8);
    out.writeBigUInt64LE(BigInt.asUintN(64, sum), w * 8);
  }
  return out;
}

// ---- kernel statistics ----

export interface ProgStats {
  runCount: number;
  runTimeNs: number;
}

// struct bpf_prog_info (include/uapi/linux/bpf.h): run_time_ns and run_cnt were appended in
// v5.1 at byte offsets 192 and 200 and uapi structs only grow, so the offsets hold on every
// kernel that has them; test/libbpf.test.ts checks them against this kernel's BTF. Asking for
// 208 bytes is valid on any kernel: the kernel copies min(its size, ours).
export const PROG_INFO_OFFSETS = { runTimeNs: 192, runCnt: 200, size: 208 } as const;

export function progStats(fd: number): ProgStats {
  const info = Buffer.alloc(PROG_INFO_OFFSETS.size);
  const len = [info.length];
  const r = f.objInfo(fd, info, len);
  if (r < 0) fail('bpf_obj_get_info_by_fd', r, logMark());
  return {
    runTimeNs: Number(info.readBigUInt64LE(PROG_INFO_OFFSETS.runTimeNs)),
    runCount: Number(info.readBigUInt64LE(PROG_INFO_OFFSETS.runCnt)),
  };
}

// BPF_ENABLE_STATS (v5.8+): run-time accounting stays on while the returned fd is open
// and switches itself off when the agent exits, unlike the kernel.bpf_stats_enabled sysctl.
/**
 * Return the C heap libbpf freed to the OS: opening and loading every candidate object
 * parses the kernel BTF again and again, and glibc keeps the freed arenas (27 MB of RSS
 * here after attach, measured with process.memoryUsage()).
 */
export function releaseFreedMemory(): void {
  f.mallocTrim(0);
}

export function enableRunTimeStats(): { close(): void } {
  const fd = f.enableStats(0 /* BPF_STATS_RUN_TIME */);
  if (fd < 0) fail('enable BPF run-time stats', fd, logMark());
  return { close: () => void f.close(fd) };
}

export function recentLibbpfLog(): string[] {
  return logRing.slice();
}
