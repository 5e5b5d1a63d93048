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

// struct bpf_map_create_opts, libbpf 1.1 src/bpf.h (48 bytes, ends at map_ifindex).
const MapCreateOpts = koffi.struct('bpf_map_create_opts', {
  sz: 'size_t',
  btf_fd: 'uint32_t',
  btf_key_type_id: 'uint32_t',
  btf_value_type_id: 'uint32_t',
  btf_vmlinux_value_type_id: 'uint32_t',
  inner_map_fd: 'uint32_t',
  map_flags: 'uint32_t',
  map_extra: 'uint64_t',
  numa_node: 'uint32_t',
  map_ifindex: 'uint32_t',
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
  mapSetAutocreate: lib.func('int bpf_map__set_autocreate(bpf_map *map, bool autocreate)'),
  probeMapType: lib.func('int libbpf_probe_bpf_map_type(int map_type, const void *opts)'),
  mapReuseFd: lib.func('int bpf_map__reuse_fd(bpf_map *map, int fd)'),
  mapBtfKeyTypeId: lib.func('uint32_t bpf_map__btf_key_type_id(bpf_map *map)'),
  mapBtfValueTypeId: lib.func('uint32_t bpf_map__btf_value_type_id(bpf_map *map)'),
  lookup: lib.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)'),
  update: lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  del: lib.func('int bpf_map_delete_elem(int fd, const void *key)'),
  nextKey: lib.func('int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next)'),
  // Plain pointers, not _Out_: koffi hands a Buffer's or Uint32Array's own memory to C, so
  // the kernel writes straight into the reused read buffers (no per-call copy).
  // opts (struct bpf_map_batch_opts) is always NULL: elem_flags and flags stay 0.
  lookupBatch: lib.func('int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, uint32_t *count, void *opts)'),
  mapCreate: lib.func(
    'int bpf_map_create(int type, const char *name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const bpf_map_create_opts *opts)',
  ),
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
export const BPF_MAP_TYPE_PROG_ARRAY = 3;
export const BPF_MAP_TYPE_TASK_STORAGE = 29;

const mapTypeSupport = new Map<number, boolean>();
/** Whether this kernel creates maps of this type (libbpf_probe_bpf_map_type: 1 yes, 0 no). */
export function mapTypeSupported(type: number): boolean {
  let ok = mapTypeSupport.get(type);
  if (ok === undefined) mapTypeSupport.set(type, (ok = f.probeMapType(type, null) === 1));
  return ok;
}
const PERCPU_MAP_TYPES = new Set([BPF_MAP_TYPE_PERCPU_HASH, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */, 21 /* PERCPU_CGROUP_STORAGE */]);
// Deterministic bucket placement (hash seed 0), CAP_SYS_ADMIN only; tests use it to build
// bucket-heavy hash maps (kernel/bpf/hashtab.c htab_map_alloc_check, include/uapi/linux/bpf.h).
export const BPF_F_ZERO_SEED = 1 << 6;
/** enum bpf_map_type, include/uapi/linux/bpf.h. */
export const MAP_TYPE = {
  HASH: 1,
  ARRAY: 2,
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  STACK_TRACE: 7,
  LRU_HASH: 9,
  LRU_PERCPU_HASH: 10,
  LPM_TRIE: 11,
} as const;

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
      if (line === '') continue;
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
  constructor(
    message: string,
    readonly errno: number,
    readonly log: string[] = [],
  ) {
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
  constructor(
    private readonly ptr: Ptr,
    readonly name: string,
    readonly section: string,
  ) {}
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
      sz: koffi.sizeof(TestRunOpts),
      data_in: null,
      data_out: null,
      data_size_in: 0,
      data_size_out: 0,
      ctx_in: ctx,
      ctx_out: null,
      ctx_size_in: ctx.length,
      ctx_size_out: 0,
      retval: 0,
      repeat: 0,
      duration: 0,
      flags: 0,
      cpu: 0,
      batch_size: 0,
    };
    const r = f.testRun(this.fd, opts);
    if (r < 0) fail(`test run ${this.name}`, r, logMark());
    return { retval: opts.retval | 0, ctx };
  }

  /** BPF_PROG_TEST_RUN with `repeat` on a packet program: the kernel's mean ns per run. */
  benchRun(repeat: number, packet: Buffer = Buffer.alloc(64)): { retval: number; nsPerRun: number } {
    const opts = {
      sz: koffi.sizeof(TestRunOpts),
      data_in: packet,
      data_out: null,
      data_size_in: packet.length,
      data_size_out: 0,
      ctx_in: null,
      ctx_out: null,
      ctx_size_in: 0,
      ctx_size_out: 0,
      retval: 0,
      repeat,
      duration: 0,
      flags: 0,
      cpu: 0,
      batch_size: 0,
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
  private constructor(
    private readonly ptr: Ptr,
    readonly path: string,
  ) {}

  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const mark = logMark();
    const o = {
      sz: koffi.sizeof(OpenOpts),
      object_name: null,
      relaxed_maps: false,
      pin_root_path: null,
      _pad_attach_prog_fd: 0,
      kconfig: null,
      btf_custom_path: opts.btfCustomPath ?? null,
      kernel_log_buf: null,
      kernel_log_size: 0,
      kernel_log_level: 0,
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
  get fd(): number {
    return f.mapFd(this.handle);
  }
  get type(): number {
    return f.mapType(this.handle);
  }
  get keySize(): number {
    return f.mapKeySize(this.handle);
  }
  get valueSize(): number {
    return f.mapValueSize(this.handle);
  }
  get maxEntries(): number {
    return f.mapMaxEntries(this.handle);
  }
  get btfKeyTypeId(): number {
    return f.mapBtfKeyTypeId(this.handle);
  }
  get btfValueTypeId(): number {
    return f.mapBtfValueTypeId(this.handle);
  }
  setMaxEntries(n: number): void {
    const r = f.mapSetMaxEntries(this.handle, n);
    if (r < 0) fail(`resize map ${this.name}`, r, logMark());
  }
  get flags(): number {
    return f.mapFlags(this.handle);
  }
  setFlags(flags: number): void {
    const r = f.mapSetFlags(this.handle, flags);
    if (r < 0) fail(`set flags of map ${this.name}`, r, logMark());
  }
  /** Leave this map out of the object's load (its type is missing on this kernel): the
   * programs that use it fail to load, the others load. */
  setAutocreate(on: boolean): void {
    const r = f.mapSetAutocreate(this.handle, on);
    if (r < 0) fail(`set autocreate of map ${this.name}`, r, logMark());
  }
  // Share one kernel map between object instances (every attach candidate is its own
  // object instance; the family's maps are created once).
  reuseFd(fd: number): void {
    const r = f.mapReuseFd(this.handle, fd);
    if (r < 0) fail(`reuse fd for map ${this.name}`, r, logMark());
  }
  handleForFd(): MapFd {
    const type = this.type;
    return new MapFd(this.fd, this.keySize, this.valueSize, PERCPU_MAP_TYPES.has(type), this.maxEntries, this.name, type);
  }
}

// ---- reading whole maps ----

/** How a MapFd reads a whole map: BPF_MAP_LOOKUP_BATCH, or get_next_key + lookup per entry. */
export type MapReadMode = 'batch' | 'walk';

/**
 * One read of a whole map. Entry i's key is keys[i * keySize, (i + 1) * keySize) and its value
 * values[i * valueStride, (i + 1) * valueStride). Both are views of buffers the MapFd owns and
 * reuses: the next readAll() on the same MapFd overwrites them, so copy what must outlive it.
 */
export interface MapRead {
  readonly count: number;
  readonly keys: Buffer;
  readonly values: Buffer;
  readonly keySize: number;
  /** Bytes per value in `values`: valueSize, except for a per-CPU map read without `fold`:
   * roundup(valueSize, 8) * possibleCpus, one 8-byte-aligned slot per possible CPU. */
  readonly valueStride: number;
  readonly mode: MapReadMode;
}

export interface MapReadStats {
  /** undefined until the first read decides it; then fixed for the life of the MapFd. */
  mode: MapReadMode | undefined;
  /** Why the map is walked: 'forced', or the batch op's refusal by this kernel. */
  walkReason: string | undefined;
  reads: number;
  lastEntries: number;
  /** libbpf map calls, one bpf() syscall each, of the last read and of all reads. */
  lastCalls: number;
  calls: number;
  /** Batch calls repeated with a bigger count because one hash bucket did not fit (ENOSPC). */
  bucketRetries: number;
  /** Walk: keys met again after a deleted key sent get_next_key back to the first bucket. */
  duplicatesSkipped: number;
  /** Walk: keys deleted between get_next_key and their lookup. */
  vanished: number;
  /** Reads cut short by the loop guard (a map churning faster than it can be walked). */
  truncated: number;
}

const ENOENT = 2;
const EINTR = 4;
const ENOSPC = 28;
// What BPF_MAP_LOOKUP_BATCH answers where it does not exist: EINVAL for the unknown command
// before 5.6, ENOTSUPP (524, include/linux/errno.h) from BPF_DO_BATCH for a map type without
// map_lookup_batch (kernel/bpf/syscall.c; measured here: stack_trace and queue maps), and
// EOPNOTSUPP, the userland spelling, should a kernel or map type answer with that instead.
const BATCH_REFUSED = new Set([22 /* EINVAL */, 524 /* ENOTSUPP */, 95 /* EOPNOTSUPP */]);
const ARRAY_TYPES = new Set<number>([MAP_TYPE.ARRAY, MAP_TYPE.PERCPU_ARRAY]);
const EMPTY = Buffer.alloc(0);

/** Contiguous key and value storage for whole-map reads, grown on demand and reused. */
class ReadBuffers {
  cap = 0;
  keys: Buffer = EMPTY;
  values: Buffer = EMPTY;
  folded: Buffer = EMPTY;
  last = -1; // entries of the previous read, the size hint for the next
  // Walk dedupe: open addressing over entry indexes (i + 1; 0 = empty), keyed by the key bytes.
  private seen = new Int32Array(0);
  private seenCount = 0;

  constructor(
    readonly keySize: number,
    readonly stride: number,
  ) {}

  /** Before a read: size for about the last count, giving back memory after a big shrink. */
  begin(firstGuess: number): void {
    const hint = this.last < 0 ? firstGuess : this.last + (this.last >> 3) + 8;
    if (this.cap > 256 && hint * 4 < this.cap) this.cap = 0;
    if (this.cap === 0) this.keys = this.values = this.folded = EMPTY;
    this.ensure(Math.max(hint, 1));
  }

  ensure(n: number): void {
    if (n <= this.cap) return;
    const cap = Math.max(n, this.cap * 2, 16);
    const keys = Buffer.alloc(cap * this.keySize);
    const values = Buffer.alloc(cap * this.stride);
    this.keys.copy(keys);
    this.values.copy(values);
    this.keys = keys;
    this.values = values;
    this.cap = cap;
  }

  foldedView(count: number, valueSize: number): Buffer {
    if (this.folded.length < count * valueSize) this.folded = Buffer.alloc(this.cap * valueSize);
    return this.folded.subarray(0, count * valueSize);
  }

  resetSeen(): void {
    this.seenCount = 0;
    this.seen.fill(0);
  }

  /** -1 when the key in slot n equals one already kept, else where to remember it. */
  seenSlot(n: number): number {
    const ks = this.keySize;
    if ((this.seenCount + 1) * 2 > this.seen.length) this.rehash(Math.max(64, this.seen.length * 2));
    const mask = this.seen.length - 1;
    for (let h = this.hash(n) & mask; ; h = (h + 1) & mask) {
      const i = this.seen[h]!;
      if (i === 0) return h;
      if (this.keys.compare(this.keys, (i - 1) * ks, i * ks, n * ks, (n + 1) * ks) === 0) return -1;
    }
  }

  remember(slot: number, n: number): void {
    this.seen[slot] = n + 1;
    this.seenCount++;
  }

  private hash(n: number): number {
    let h = 0x811c9dc5; // FNV-1a
    for (let o = n * this.keySize, end = o + this.keySize; o < end; o++) h = Math.imul(h ^ this.keys[o]!, 0x01000193);
    return h >>> 0;
  }

  private rehash(size: number): void {
    const old = this.seen;
    this.seen = new Int32Array(size);
    const mask = size - 1;
    for (const i of old) {
      if (i === 0) continue;
      let h = this.hash(i - 1) & mask;
      while (this.seen[h] !== 0) h = (h + 1) & mask;
      this.seen[h] = i;
    }
  }
}

// A loaded map addressed by fd: what the aggregation layer reads at scrape time.
export class MapFd {
  private readonly rawSize: number;
  /** Upper bound on entries per BPF_MAP_LOOKUP_BATCH call (one call can need more: a
   * hash bucket is copied whole). Bounds the work one syscall does; tests lower it. */
  batchChunk = 4096;
  private mode: MapReadMode | undefined;
  private readonly stats: MapReadStats = {
    mode: undefined,
    walkReason: undefined,
    reads: 0,
    lastEntries: 0,
    lastCalls: 0,
    calls: 0,
    bucketRetries: 0,
    duplicatesSkipped: 0,
    vanished: 0,
    truncated: 0,
  };
  private shared: ReadBuffers | undefined; // readAll()'s
  private legacy: ReadBuffers | undefined; // keys()/entries()/count()'s, so they never clobber readAll's
  private tokens: [Buffer, Buffer] | undefined;
  private walkScratch: { a: Buffer; b: Buffer; value: Buffer } | undefined;
  private readonly countCell = new Uint32Array(1);

  constructor(
    readonly fd: number,
    readonly keySize: number,
    readonly valueSize: number,
    readonly percpu: boolean,
    readonly maxEntries: number,
    readonly name: string,
    /** enum bpf_map_type when known: arrays are read in one call sized to max_entries. */
    readonly type?: number,
  ) {
    // Per-CPU lookups fill one 8-byte-aligned slot per possible CPU (kernel/bpf/syscall.c).
    this.rawSize = percpu ? Math.ceil(valueSize / 8) * 8 * possibleCpus : valueSize;
  }

  /** Whether user space can walk this map's entries. Not a prog array (its values are
   * program fds, unreadable) nor task storage (keyed by pidfd, no get_next_key:
   * kernel/bpf/bpf_task_storage.c). */
  get walkable(): boolean {
    return this.type !== BPF_MAP_TYPE_PROG_ARRAY && this.type !== BPF_MAP_TYPE_TASK_STORAGE;
  }

  /** The read mode this map uses: undefined until the first whole-map read. */
  get readMode(): MapReadMode | undefined {
    return this.mode;
  }

  get readStats(): Readonly<MapReadStats> {
    return { ...this.stats, mode: this.mode };
  }

  /** Pin the read mode, e.g. 'walk' to exercise or measure the fallback on a kernel that batches. */
  forceReadMode(mode: MapReadMode): void {
    this.mode = mode;
    this.stats.walkReason = mode === 'walk' ? 'forced' : undefined;
  }

  /**
   * Every entry of the map into contiguous, reused buffers (see MapRead): one
   * BPF_MAP_LOOKUP_BATCH call per batchChunk entries, or where this kernel or map type has no
   * batch op, a get_next_key + lookup walk into the same buffers. With `fold`, per-CPU values
   * come back summed as u64 words (as lookup() folds them) with stride valueSize.
   */
  readAll(opts: { fold?: boolean } = {}): MapRead {
    return this.readInto((this.shared ??= new ReadBuffers(this.keySize, this.rawSize)), opts.fold ?? false);
  }

  private readInto(b: ReadBuffers, fold: boolean): MapRead {
    const calls0 = this.stats.calls;
    b.begin(this.type !== undefined && ARRAY_TYPES.has(this.type) ? this.maxEntries : Math.min(this.maxEntries, 1024));
    let n = this.mode === 'walk' ? -1 : this.readBatch(b);
    if (n < 0) n = this.readWalk(b);
    b.last = n;
    this.stats.reads++;
    this.stats.lastEntries = n;
    this.stats.lastCalls = this.stats.calls - calls0;
    const raw = b.values.subarray(0, n * this.rawSize);
    let values: Buffer = raw;
    let valueStride = this.rawSize;
    if (fold && this.percpu) {
      values = b.foldedView(n, this.valueSize);
      foldPerCpuInto(raw, n, this.valueSize, possibleCpus, values);
      valueStride = this.valueSize;
    }
    return { count: n, keys: b.keys.subarray(0, n * this.keySize), values, keySize: this.keySize, valueStride, mode: this.mode! };
  }

  /** Entries read, or -1 when this kernel refused the batch op on the first call (mode is
   * then 'walk' for good). */
  private readBatch(b: ReadBuffers): number {
    const ks = this.keySize;
    const vs = this.rawSize;
    // Hash maps resume from a u32 bucket index, arrays (generic_map_lookup_batch) from the
    // last key: room for either (kernel/bpf/hashtab.c, kernel/bpf/syscall.c).
    const [t0, t1] = (this.tokens ??= [Buffer.alloc(Math.max(ks, 8)), Buffer.alloc(Math.max(ks, 8))]);
    const cnt = this.countCell;
    const isArray = this.type !== undefined && ARRAY_TYPES.has(this.type);
    let inTok: Buffer | null = null;
    let n = 0;
    let need = 1;
    let stalls = 0;
    for (;;) {
      if (b.cap - n < need) b.ensure(n + need);
      const want = Math.min(b.cap - n, Math.max(this.batchChunk, need));
      const outTok: Buffer = inTok === t0 ? t1 : t0;
      cnt[0] = want;
      const r = f.lookupBatch(this.fd, inTok, outTok, n ? b.keys.subarray(n * ks) : b.keys, n ? b.values.subarray(n * vs) : b.values, cnt, null);
      this.stats.calls++;
      // ENOENT: the end of the map, with the last entries in count (both implementations).
      if (r === 0 || r === -ENOENT) {
        n += cnt[0]!;
        if (r === -ENOENT) break;
        // An array always holds max_entries entries: stop there rather than grow the buffers
        // for a last call that would only answer ENOENT.
        if (isArray && n >= this.maxEntries) break;
        if (cnt[0] === 0 && ++stalls > 16) fail(`batch lookup in ${this.name} makes no progress`, -EINTR, logMark());
        inTok = outTok;
        need = 1;
        continue;
      }
      // ENOSPC: the next hash bucket holds more entries than count; nothing was copied and
      // out_batch still names that bucket (__htab_map_lookup_and_delete_batch).
      if (r === -ENOSPC) {
        this.stats.bucketRetries++;
        need = want * 2;
        if (need > 1 << 24) fail(`batch lookup in ${this.name}: a bucket of more than ${want} entries`, r, logMark());
        continue;
      }
      if (this.mode === undefined && inTok === null && BATCH_REFUSED.has(-r)) {
        this.mode = 'walk';
        this.stats.walkReason = `BPF_MAP_LOOKUP_BATCH: ${errnoMessage(r)}`;
        return -1;
      }
      // EINTR: generic_map_lookup_batch (kernel/bpf/syscall.c) before the 2025 fix "bpf: skip
      // non exist keys in generic_map_lookup_batch" gave up after a key vanished three times;
      // what it copied is valid and out_batch is the last key copied.
      if (r === -EINTR && cnt[0]! > 0) {
        n += cnt[0]!;
        inTok = outTok;
        continue;
      }
      fail(`batch lookup in ${this.name}`, r, logMark());
    }
    this.mode ??= 'batch';
    return n;
  }

  // A hash map's get_next_key restarts from the first bucket when the previous key was
  // deleted meanwhile (htab_map_get_next_key: key not found -> find_first_elem), so keys can
  // come back: they are recognized and skipped, and a guard bounds a walk under heavy churn.
  private readWalk(b: ReadBuffers): number {
    const ks = this.keySize;
    const vs = this.rawSize;
    const s = (this.walkScratch ??= { a: Buffer.alloc(ks), b: Buffer.alloc(ks), value: Buffer.alloc(vs) });
    let prev = s.a;
    let next = s.b;
    let first = true;
    let n = 0;
    let steps = 0;
    const limit = this.maxEntries * 2 + 16;
    b.resetSeen();
    for (;;) {
      const r = f.nextKey(this.fd, first ? null : prev, next);
      this.stats.calls++;
      if (r < 0) {
        if (-r === ENOENT) break;
        fail(`iterate ${this.name}`, r, logMark());
      }
      first = false;
      if (++steps > limit) {
        this.stats.truncated++;
        break;
      }
      [prev, next] = [next, prev];
      if (b.cap < n + 1) b.ensure(n + 1);
      prev.copy(b.keys, n * ks);
      const slot = b.seenSlot(n);
      if (slot < 0) {
        this.stats.duplicatesSkipped++;
        continue;
      }
      const lr = f.lookup(this.fd, prev, s.value);
      this.stats.calls++;
      if (lr < 0) {
        if (-lr === ENOENT) {
          this.stats.vanished++;
          continue;
        }
        fail(`lookup in ${this.name}`, lr, logMark());
      }
      s.value.copy(b.values, n * vs);
      b.remember(slot, n);
      n++;
    }
    this.mode ??= 'walk';
    return n;
  }

  private legacyRead(fold: boolean): MapRead {
    return this.readInto((this.legacy ??= new ReadBuffers(this.keySize, this.rawSize)), fold);
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

  /** Every key, each its own Buffer (a whole-map read underneath). */
  keys(): Buffer[] {
    const r = this.legacyRead(false);
    const out = new Array<Buffer>(r.count);
    for (let i = 0; i < r.count; i++) out[i] = copyOut(r.keys, i * r.keySize, r.keySize);
    return out;
  }

  /** Every entry as its own key and (folded) value Buffers, read whole before the first
   * yield so the caller may delete or update while iterating. */
  *entries(): Generator<[Buffer, Buffer]> {
    const r = this.legacyRead(true);
    const out = new Array<[Buffer, Buffer]>(r.count);
    for (let i = 0; i < r.count; i++) {
      out[i] = [copyOut(r.keys, i * r.keySize, r.keySize), copyOut(r.values, i * r.valueStride, r.valueStride)];
    }
    yield* out;
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
    return this.legacyRead(false).count;
  }

  /** Entry i of an array of u64 counters (per-CPU ones summed); 0 when absent. */
  counter(i: number): number {
    const k = Buffer.alloc(4);
    k.writeUInt32LE(i);
    return Number(this.lookup(k)?.readBigUInt64LE(0) ?? 0n);
  }
}

function copyOut(src: Buffer, off: number, len: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  src.copy(b, 0, off, off + len);
  return b;
}

/** A map this process created (tests, benchmarks): closing it frees the kernel map. */
export class OwnedMapFd extends MapFd {
  close(): void {
    f.close(this.fd);
  }
}

export interface MapSpec {
  type: number;
  name: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags?: number;
}

export function createMap(spec: MapSpec): OwnedMapFd {
  const mark = logMark();
  const fd = f.mapCreate(spec.type, spec.name, spec.keySize, spec.valueSize, spec.maxEntries, {
    sz: koffi.sizeof(MapCreateOpts),
    btf_fd: 0,
    btf_key_type_id: 0,
    btf_value_type_id: 0,
    btf_vmlinux_value_type_id: 0,
    inner_map_fd: 0,
    map_flags: spec.flags ?? 0,
    map_extra: 0,
    numa_node: 0,
    map_ifindex: 0,
  });
  if (fd < 0) fail(`create map ${spec.name}`, fd, mark);
  return new OwnedMapFd(fd, spec.keySize, spec.valueSize, PERCPU_MAP_TYPES.has(spec.type), spec.maxEntries, spec.name, spec.type);
}

/**
 * Sum `count` per-CPU values (one roundup(valueSize, 8) slot per CPU, as lookups and batch
 * lookups return them) word by word as u64, modulo 2^64, into `out` (count * valueSize
 * bytes). A u64 is added as two u32 halves in doubles, exact up to 2^21 CPUs, to avoid a
 * BigInt per word. Bytes past the last whole u64 word are zeroed. Little-endian host, as
 * every map read here assumes.
 */
export function foldPerCpuInto(raw: Buffer, count: number, valueSize: number, cpus: number, out: Buffer): void {
  const slot = Math.ceil(valueSize / 8) * 8;
  const words = Math.floor(valueSize / 8);
  const aligned = raw.byteOffset % 4 === 0 && out.byteOffset % 4 === 0 && valueSize % 4 === 0;
  if (aligned) {
    const src = new Uint32Array(raw.buffer, raw.byteOffset, (count * slot * cpus) >> 2);
    const dst = new Uint32Array(out.buffer, out.byteOffset, (count * valueSize) >> 2);
    const slotW = slot >> 2;
    for (let e = 0; e < count; e++) {
      const inBase = e * slotW * cpus;
      const outBase = (e * valueSize) >> 2;
      for (let w = 0; w < words; w++) {
        let lo = 0;
        let hi = 0;
        for (let c = 0, o = inBase + 2 * w; c < cpus; c++, o += slotW) {
          lo += src[o]!;
          hi += src[o + 1]!;
        }
        dst[outBase + 2 * w] = lo >>> 0;
        dst[outBase + 2 * w + 1] = (hi + Math.floor(lo / 4294967296)) >>> 0;
      }
      if (valueSize % 8) dst[outBase + 2 * words] = 0;
    }
    return;
  }
  for (let e = 0; e < count; e++) {
    const inBase = e * slot * cpus;
    const outBase = e * valueSize;
    for (let w = 0; w < words; w++) {
      let lo = 0;
      let hi = 0;
      for (let c = 0; c < cpus; c++) {
        lo += raw.readUInt32LE(inBase + c * slot + w * 8);
        hi += raw.readUInt32LE(inBase + c * slot + w * 8 + 4);
      }
      out.writeUInt32LE(lo >>> 0, outBase + w * 8);
      out.writeUInt32LE((hi + Math.floor(lo / 4294967296)) >>> 0, outBase + w * 8 + 4);
    }
    out.fill(0, outBase + words * 8, outBase + valueSize);
  }
}

export function foldPerCpuU64(raw: Buffer, valueSize: number, cpus: number): Buffer {
  const out = Buffer.alloc(valueSize);
  foldPerCpuInto(raw, 1, valueSize, cpus, out);
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
