// Pure-TypeScript reader of raw BTF (kernel Documentation/bpf/btf.rst).
// We read BTF ourselves instead of shelling out to bpftool or binding libbpf so the
// agent can check struct layouts, enum values and tracepoint signatures of the
// running kernel before loading programs, with no native dependency.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export type BtfKind =
  | 'int'
  | 'ptr'
  | 'array'
  | 'struct'
  | 'union'
  | 'enum'
  | 'fwd'
  | 'typedef'
  | 'volatile'
  | 'const'
  | 'restrict'
  | 'func'
  | 'func_proto'
  | 'var'
  | 'datasec'
  | 'float'
  | 'decl_tag'
  | 'type_tag'
  | 'enum64';

export interface BtfType {
  id: number;
  kind: BtfKind;
  name: string;
  size?: number;
  type?: number;
  members?: { name: string; type: number; bitOffset: number; bitSize: number }[];
  params?: { name: string; type: number }[];
  values?: { name: string; value: bigint }[];
  array?: { type: number; indexType: number; nelems: number };
  intInfo?: { signed: boolean; bits: number; bitOffset: number };
  // The remaining kind-specific fields exist so no part of the format is silently dropped.
  vars?: { type: number; offset: number; size: number }[]; // datasec
  linkage?: number; // func (stored in vlen) and var
  componentIdx?: number; // decl_tag: -1 tags the type itself, else a member/param index
  vlen: number;
  kindFlag: boolean;
}

export interface FieldLayout {
  name: string;
  offset: number; // bytes; for bitfields the byte holding the first bit
  size: number; // bytes; 0 for bitfields, which cannot be read as whole bytes
  kind: 'int' | 'array' | 'struct' | 'union' | 'ptr' | 'enum' | 'float';
  signed: boolean;
  elemSize?: number;
  nelems?: number;
  typeName: string;
  bitOffset?: number; // bitfields only, absolute from the start of the outer struct
  bitSize?: number; // bitfields only
}

export interface StructLayout {
  name: string;
  size: number;
  fields: FieldLayout[];
}

const KINDS: readonly (BtfKind | undefined)[] = [
  undefined,
  'int',
  'ptr',
  'array',
  'struct',
  'union',
  'enum',
  'fwd',
  'typedef',
  'volatile',
  'const',
  'restrict',
  'func',
  'func_proto',
  'var',
  'datasec',
  'float',
  'decl_tag',
  'type_tag',
  'enum64',
];
const MODIFIERS = new Set<BtfKind>(['typedef', 'const', 'volatile', 'restrict', 'type_tag']);
const LAYOUT_KINDS = new Set<string>(['int', 'array', 'struct', 'union', 'ptr', 'enum', 'float']);
const HDR_LEN = 24;
// Corrupt input can make the type graph cyclic (a typedef of itself) or exponentially
// shared (a prototype whose thousands of params point back at it), so recursive walks are
// bounded in depth, and those that branch also share one step budget per public call.
const MAX_DEPTH = 64;
const MAX_STEPS = 100_000;
interface Walk {
  steps: number;
}
function step(walk: Walk, id: number): void {
  if (++walk.steps > MAX_STEPS) fail(`walking type id ${id} takes over ${MAX_STEPS} steps; the type graph is cyclic or corrupt`);
}
const utf8 = new TextDecoder();

// Only the kind and vlen decide how many bytes follow the 12-byte btf_type, so the
// whole type section can be indexed without decoding anything.
function extraLen(kind: number, vlen: number): number {
  switch (kind) {
    case 1:
    case 14:
    case 17:
      return 4; // int, var, decl_tag
    case 3:
      return 12; // array
    case 4:
    case 5:
    case 15:
    case 19:
      return 12 * vlen; // struct, union, datasec, enum64
    case 6:
    case 13:
      return 8 * vlen; // enum, func_proto
    default:
      return 0;
  }
}

function fail(msg: string): never {
  throw new Error(`BTF: ${msg}`);
}

/** Every string in a BTF blob's string section that starts with `prefix` (function, type,
 * member and parameter names alike), found by scanning that section alone: no type is
 * parsed, so asking whether a kernel has a family of functions (KVMI's kvmi_*) costs one
 * file read, not a parse of vmlinux and every module that would then have to be dropped. */
export function btfNamesWithPrefix(buf: Uint8Array, prefix: string): Set<string> {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < HDR_LEN) fail(`truncated header: ${b.length} bytes at byte offset 0, need ${HDR_LEN}`);
  if (b.readUInt16LE(0) !== 0xeb9f) fail(`bad magic 0x${b.readUInt16LE(0).toString(16)} at byte offset 0, expected 0xeb9f`);
  const hdrLen = b.readUInt32LE(4);
  const start = hdrLen + b.readUInt32LE(16);
  const end = start + b.readUInt32LE(20);
  if (hdrLen < HDR_LEN || end > b.length) fail(`string section (${start}..${end}) runs past the end of the buffer (${b.length} bytes)`);
  const out = new Set<string>();
  // Every string but the first follows a NUL (the section starts with the empty string).
  const needle = Buffer.from(`\0${prefix}`, 'latin1');
  for (let at = b.indexOf(needle, start); at >= 0 && at < end; at = b.indexOf(needle, at + 1)) {
    const stop = b.indexOf(0, at + 1);
    if (stop < 0 || stop >= end) break;
    out.add(b.toString('latin1', at + 1, stop));
  }
  return out;
}

export class Btf {
  private static readonly cache = new Map<string, Btf>();
  private readonly strCache = new Map<number, string>();
  private text?: string | null; // whole string section once decoded; null if it is not ASCII
  private readonly types: (BtfType | undefined)[] = [];
  private nameIndex?: Map<string, number[]>;
  private enumIndex?: Map<string, bigint>;

  private constructor(
    private readonly bytes: Uint8Array,
    private readonly dv: DataView,
    private readonly offsets: Uint32Array, // byte offset of each local type record
    private readonly firstId: number, // split BTF continues the base's id space
    private readonly strStart: number,
    private readonly strLen: number,
    private readonly strBase: number, // split BTF continues the base's string offsets
    private readonly base?: Btf,
  ) {}

  static parse(buf: Uint8Array, base?: Btf): Btf {
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (buf.length < HDR_LEN) fail(`truncated header: ${buf.length} bytes at byte offset 0, need ${HDR_LEN}`);
    const magic = dv.getUint16(0, true);
    if (magic !== 0xeb9f) {
      fail(
        magic === 0x9feb ? 'big-endian BTF is not supported (magic at byte offset 0)' : `bad magic 0x${magic.toString(16)} at byte offset 0, expected 0xeb9f`,
      );
    }
    if (buf[2] !== 1) fail(`unsupported version ${buf[2]} at byte offset 2, expected 1`);
    const hdrLen = dv.getUint32(4, true);
    if (hdrLen < HDR_LEN || hdrLen > buf.length) fail(`bad header length ${hdrLen} at byte offset 4 (buffer is ${buf.length} bytes)`);
    const [typeOff, typeLen, strOff, strLen] = [8, 12, 16, 20].map((o) => dv.getUint32(o, true)) as [number, number, number, number];
    const section = (what: string, off: number, len: number, at: number): number => {
      const start = hdrLen + off;
      if (start + len > buf.length)
        fail(`truncated ${what} section: ${len} bytes at byte offset ${start} (header field at ${at}) run past end of buffer (${buf.length} bytes)`);
      return start;
    };
    const typeStart = section('type', typeOff, typeLen, 8);
    const strStart = section('string', strOff, strLen, 16);
    // Checking the terminating NUL once lets every later string decode stop without a bounds test.
    if (strLen > 0 && buf[strStart + strLen - 1] !== 0) fail(`string section at byte offset ${strStart} is not NUL-terminated`);
    if (!base && (strLen === 0 || buf[strStart] !== 0)) fail(`string section at byte offset ${strStart} must start with the empty string`);

    const firstId = base ? base.typeCount : 1;
    const offsets = new Uint32Array(Math.floor(typeLen / 12));
    const end = typeStart + typeLen;
    let n = 0;
    for (let p = typeStart; p < end; n++) {
      if (end - p < 12) fail(`truncated type section: type id ${firstId + n} at byte offset ${p} needs 12 bytes, ${end - p} left`);
      const info = dv.getUint32(p + 4, true);
      const kind = (info >>> 24) & 0x1f;
      if (!KINDS[kind]) fail(`unknown kind ${kind} for type id ${firstId + n} at byte offset ${p}`);
      const next = p + 12 + extraLen(kind, info & 0xffff);
      if (next > end) fail(`truncated type section: type id ${firstId + n} (${KINDS[kind]}) at byte offset ${p} needs ${next - p} bytes, ${end - p} left`);
      offsets[n] = p;
      p = next;
    }
    const strBase = base ? base.strBase + base.strLen : 0;
    return new Btf(buf, dv, offsets.slice(0, n), firstId, strStart, strLen, strBase, base);
  }

  static vmlinux(path = '/sys/kernel/btf/vmlinux'): Btf {
    let btf = Btf.cache.get(path);
    if (!btf) {
      let buf: Uint8Array;
      try {
        buf = readFileSync(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
          throw new Error(`no kernel BTF at ${path} (kernel built without CONFIG_DEBUG_INFO_BTF, or sysfs not mounted)`, { cause: e });
        }
        throw e;
      }
      btf = Btf.parse(buf);
      Btf.cache.set(path, btf);
    }
    return btf;
  }

  /** Forget the parsed kernel BTF; the next vmlinux() reads it again. */
  static releaseCache(): void {
    Btf.cache.clear();
  }

  // Not cached: module BTF disappears or changes when the module is reloaded.
  static module(name: string, dir = '/sys/kernel/btf'): Btf | undefined {
    if (!name || name.includes('/') || name === 'vmlinux') throw new Error(`invalid kernel module name '${name}'`);
    let buf: Uint8Array;
    try {
      buf = readFileSync(join(dir, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    return Btf.parse(buf, Btf.vmlinux(join(dir, 'vmlinux')));
  }

  get typeCount(): number {
    return this.firstId + this.offsets.length;
  }

  // Id 0 is void, which has no record; throwing keeps BtfKind free of a pseudo-kind.
  typeById(id: number): BtfType {
    if (!Number.isInteger(id) || id < 0 || id >= this.typeCount) fail(`type id ${id} out of range (type count ${this.typeCount})`);
    if (id < this.firstId) return this.base ? this.base.typeById(id) : fail('type id 0 is void and has no type record');
    const i = id - this.firstId;
    const cached = this.types[i];
    if (cached) return cached;
    const o = this.offsets[i]!;
    const u32 = (at: number) => this.dv.getUint32(at, true);
    const info = u32(o + 4);
    const vlen = info & 0xffff;
    const kindFlag = info >>> 31 === 1;
    const kind = KINDS[(info >>> 24) & 0x1f]!;
    const t: BtfType = { id, kind, name: this.str(u32(o)), vlen, kindFlag };
    const sizeOrType = u32(o + 8);
    const x = o + 12;
    const each = <T>(stride: number, f: (at: number) => T): T[] => Array.from({ length: vlen }, (_, k) => f(x + k * stride));
    switch (kind) {
      case 'int': {
        const v = u32(x);
        t.size = sizeOrType;
        t.intInfo = { signed: ((v >>> 24) & 1) === 1, bits: v & 0xff, bitOffset: (v >>> 16) & 0xff };
        break;
      }
      case 'float':
        t.size = sizeOrType;
        break;
      case 'array':
        t.array = { type: u32(x), indexType: u32(x + 4), nelems: u32(x + 8) };
        break;
      case 'struct':
      case 'union':
        t.size = sizeOrType;
        t.members = each(12, (a) => {
          const off = u32(a + 8);
          return { name: this.str(u32(a)), type: u32(a + 4), bitOffset: kindFlag ? off & 0xffffff : off, bitSize: kindFlag ? off >>> 24 : 0 };
        });
        break;
      // kind_flag marks a signed enum; bpftool prints values the same way.
      case 'enum':
        t.size = sizeOrType;
        t.values = each(8, (a) => ({ name: this.str(u32(a)), value: BigInt(kindFlag ? this.dv.getInt32(a + 4, true) : u32(a + 4)) }));
        break;
      case 'enum64':
        t.size = sizeOrType;
        t.values = each(12, (a) => {
          const v = (BigInt(u32(a + 8)) << 32n) | BigInt(u32(a + 4));
          return { name: this.str(u32(a)), value: kindFlag ? BigInt.asIntN(64, v) : v };
        });
        break;
      case 'func_proto':
        t.type = sizeOrType;
        t.params = each(8, (a) => ({ name: this.str(u32(a)), type: u32(a + 4) }));
        break;
      case 'datasec':
        t.size = sizeOrType;
        t.vars = each(12, (a) => ({ type: u32(a), offset: u32(a + 4), size: u32(a + 8) }));
        break;
      case 'var':
        t.type = sizeOrType;
        t.linkage = u32(x);
        break;
      case 'func':
        t.type = sizeOrType;
        t.linkage = vlen;
        break;
      case 'decl_tag':
        t.type = sizeOrType;
        t.componentIdx = this.dv.getInt32(x, true);
        break;
      case 'fwd':
        break;
      default:
        t.type = sizeOrType; // ptr and the modifiers
    }
    this.types[i] = t;
    return t;
  }

  // Base types come first so a module cannot shadow a vmlinux type of the same name.
  find(name: string, kind?: BtfKind): BtfType | undefined {
    const hit = this.base?.find(name, kind);
    if (hit) return hit;
    for (const id of this.names().get(name) ?? []) {
      if (!kind || this.kindOf(id) === kind) return this.typeById(id);
    }
    return undefined;
  }

  resolve(id: number): BtfType {
    let t = this.typeById(id);
    for (let hops = 0; MODIFIERS.has(t.kind); hops++) {
      if (hops > MAX_DEPTH) fail(`modifier chain from type id ${id} is too long or cyclic`);
      t = this.typeById(t.type!);
    }
    return t;
  }

  sizeOf(id: number): number {
    return this.sizeAt(id, 0);
  }

  private sizeAt(id: number, depth: number): number {
    if (depth > MAX_DEPTH) fail(`array nesting from type id ${id} is too deep or cyclic`);
    const t = this.resolve(id);
    switch (t.kind) {
      case 'ptr':
        return 8; // the agent only targets 64-bit kernels
      case 'array':
        return t.array!.nelems * this.sizeAt(t.array!.type, depth + 1);
      case 'int':
      case 'struct':
      case 'union':
      case 'enum':
      case 'enum64':
      case 'float':
      case 'datasec':
        return t.size!;
      default:
        return fail(`type id ${id} (${t.kind} '${t.name}') has no size`);
    }
  }

  structLayout(name: string): StructLayout | undefined {
    const t = this.find(name, 'struct') ?? this.find(name, 'union');
    if (!t) return undefined;
    const fields: FieldLayout[] = [];
    this.flatten(t, 0, fields, { steps: 0 }, 0);
    return { name, size: t.size!, fields };
  }

  hasFunc(name: string): boolean {
    return this.find(name, 'func') !== undefined;
  }

  enumValue(enumName: string, valueName: string): bigint | undefined {
    if (enumName === '') return this.enumerators().get(valueName);
    const t = this.find(enumName, 'enum') ?? this.find(enumName, 'enum64');
    return t?.values!.find((v) => v.name === valueName)?.value;
  }

  // Raw tracepoints are described by the `btf_trace_<tp>` typedef the kernel emits for
  // each one, but its FUNC_PROTO params are anonymous; the per-event __probestub_/__traceiter_
  // functions share the same TP_PROTO with names, so names are borrowed when the types agree.
  tracepointParams(tpName: string): { name: string; typeName: string }[] | undefined {
    const td = this.find(`btf_trace_${tpName}`, 'typedef');
    if (!td) return undefined;
    const ptr = this.resolve(td.type!);
    const proto = ptr.kind === 'ptr' && ptr.type ? this.resolve(ptr.type) : undefined;
    if (proto?.kind !== 'func_proto') return fail(`btf_trace_${tpName} (type id ${td.id}) is not a pointer to a function prototype`);
    const params = proto.params!;
    const fn = this.find(`__probestub_${tpName}`, 'func') ?? this.find(`__traceiter_${tpName}`, 'func');
    const named = fn?.type ? this.resolve(fn.type).params : undefined;
    const same = named?.length === params.length && named.every((q, i) => q.type === params[i]!.type);
    const walk = { steps: 0 };
    return params.slice(1).map((p, i) => ({ name: p.name || (same ? named![i + 1]!.name : ''), typeName: this.typeName(p.type, walk) }));
  }

  private str(off: number): string {
    if (off < this.strBase) return this.base!.str(off);
    const rel = off - this.strBase;
    if (rel >= this.strLen) fail(`string offset ${off} is past the end of the string section (${this.strBase + this.strLen} bytes)`);
    if (this.text === undefined) {
      // Kernel strings are ASCII, so one decode of the whole section keeps byte offsets
      // valid as string indices and makes each name a cheap slice. Equal lengths prove
      // every byte became exactly one UTF-16 unit (multi-byte sequences would shrink it).
      const text = utf8.decode(this.bytes.subarray(this.strStart, this.strStart + this.strLen));
      this.text = text.length === this.strLen ? text : null;
    }
    if (this.text !== null) return this.text.slice(rel, this.text.indexOf('\0', rel));
    let s = this.strCache.get(off);
    if (s === undefined) {
      const start = this.strStart + rel;
      s = utf8.decode(this.bytes.subarray(start, this.bytes.indexOf(0, start)));
      this.strCache.set(off, s);
    }
    return s;
  }

  private kindOf(id: number): BtfKind | undefined {
    const o = this.offsets[id - this.firstId];
    return o === undefined ? undefined : KINDS[(this.dv.getUint32(o + 4, true) >>> 24) & 0x1f];
  }

  // Built on first lookup because decoding every name costs more than the parse itself.
  private names(): Map<string, number[]> {
    if (!this.nameIndex) {
      const m = new Map<string, number[]>();
      for (let i = 0; i < this.offsets.length; i++) {
        const off = this.dv.getUint32(this.offsets[i]!, true);
        if (off === 0) continue;
        const name = this.str(off);
        const ids = m.get(name);
        if (ids) ids.push(this.firstId + i);
        else m.set(name, [this.firstId + i]);
      }
      this.nameIndex = m;
    }
    return this.nameIndex;
  }

  private enumerators(): Map<string, bigint> {
    if (!this.enumIndex) {
      const m = new Map(this.base?.enumerators());
      for (let id = this.firstId; id < this.typeCount; id++) {
        const k = this.kindOf(id);
        if (k !== 'enum' && k !== 'enum64') continue;
        for (const v of this.typeById(id).values!) if (!m.has(v.name)) m.set(v.name, v.value);
      }
      this.enumIndex = m;
    }
    return this.enumIndex;
  }

  private flatten(t: BtfType, byteBase: number, out: FieldLayout[], walk: Walk, depth: number): void {
    if (depth > MAX_DEPTH) fail(`anonymous member nesting in type id ${t.id} is too deep or cyclic`);
    for (const m of t.members!) {
      step(walk, t.id);
      const r = this.resolve(m.type);
      const offset = byteBase + Math.floor(m.bitOffset / 8);
      if (!m.name && (r.kind === 'struct' || r.kind === 'union')) {
        this.flatten(r, offset, out, walk, depth + 1);
        continue;
      }
      const kind = r.kind === 'enum64' ? 'enum' : r.kind;
      if (!LAYOUT_KINDS.has(kind)) fail(`member '${m.name}' of type id ${t.id} has unsized kind ${r.kind}`);
      // Without kind_flag a bitfield is encoded in the INT itself (legacy pahole).
      const intBits = r.intInfo && (r.intInfo.bits !== r.size! * 8 || r.intInfo.bitOffset) ? r.intInfo.bits : 0;
      const bitSize = m.bitSize || intBits;
      const f: FieldLayout = {
        name: m.name,
        offset,
        size: 0,
        kind: kind as FieldLayout['kind'],
        signed: r.intInfo?.signed ?? (r.kind.startsWith('enum') && r.kindFlag),
        typeName: this.typeName(m.type, walk),
      };
      if (bitSize || m.bitOffset % 8) {
        f.bitOffset = byteBase * 8 + m.bitOffset + (r.intInfo?.bitOffset ?? 0);
        f.bitSize = bitSize;
      } else {
        f.size = this.sizeOf(m.type);
      }
      if (r.array) {
        f.elemSize = this.sizeOf(r.array.type);
        f.nelems = r.array.nelems;
      }
      out.push(f);
    }
  }

  // A C-ish spelling for humans and error messages, not a full C declarator printer.
  private typeName(id: number, walk: Walk, depth = 0): string {
    if (id === 0) return 'void';
    if (depth > MAX_DEPTH) fail(`type id ${id} nests too deeply or is cyclic`);
    step(walk, id);
    const t = this.typeById(id);
    const sub = (tid: number) => this.typeName(tid, walk, depth + 1);
    const proto = (p: BtfType, inner: string) => `${sub(p.type!)} ${inner}(${p.params!.map((q) => (q.type ? sub(q.type) : '...')).join(', ') || 'void'})`;
    switch (t.kind) {
      case 'struct':
      case 'union':
        return `${t.kind} ${t.name || '{...}'}`;
      case 'enum':
      case 'enum64':
        return `enum ${t.name || '{...}'}`;
      case 'fwd':
        return `${t.kindFlag ? 'union' : 'struct'} ${t.name}`;
      case 'ptr': {
        const target = t.type ? this.typeById(t.type) : undefined;
        if (target?.kind === 'func_proto') return proto(target, '(*)');
        const s = sub(t.type!);
        return s.endsWith('*') ? `${s}*` : `${s} *`;
      }
      case 'const':
      case 'volatile':
      case 'restrict': {
        const s = sub(t.type!);
        return s.endsWith('*') ? `${s} ${t.kind}` : `${t.kind} ${s}`;
      }
      case 'type_tag':
        return sub(t.type!);
      case 'array':
        return `${sub(t.array!.type)}[${t.array!.nelems}]`;
      case 'func_proto':
        return proto(t, '');
      default:
        return t.name;
    }
  }
}
