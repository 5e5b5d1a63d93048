// Loads families and attaches probes: for each probe, the first candidate that passes the
// precheck, loads and attaches wins. A probe that cannot attach never stops the others.
// Each candidate is its own object instance sharing the family's maps (bpf_map__reuse_fd),
// because libbpf loads an object all-or-nothing: one failing program would sink the rest.
import { fileURLToPath } from 'node:url';
import {
  ATTACH_KINDS,
  BPF_F_NO_PREALLOC,
  BPF_MAP_TYPE_PERCPU_HASH,
  BpfError,
  BpfObject,
  mapTypeSupported,
  type AttachKind,
  type BpfLink,
  type BpfProgram,
  type MapFd,
} from '../bpf/libbpf.js';
import { CHAIN_MAP_PREFIX, HookChains } from './hook-chain.js';
import { Btf } from '../bpf/btf.js';
import type { Kernel } from './kernel.js';
import { checkEnums } from './aggregate/enums.js';
import { log } from './log.js';
import type { Candidate, FamilySpec, ProbeSpec } from './model/family.js';

/*
 * Per-CPU stats maps allocate entries on first use rather than all max_entries at load:
 * preallocated, they cost max_entries x value size x possible CPUs whatever the host runs
 * (93 MB of map memory for the default set with --hot all on 2 CPUs, 20 MB without
 * preallocation, measured with bpftool; x32 on a 64-CPU host). Only from 6.1: its BPF
 * allocator (kernel/bpf/memalloc.c) is safe in tracing context, while before it the
 * verifier WARN_ONCEs on a kprobe/tracepoint program using such a map
 * (check_map_prog_compatibility, kernel/bpf/verifier.c v5.10), a panic with panic_on_warn.
 * A failed allocation is a failed insert, counted like a full map. (Loader.lazyPercpuMaps)
 */

export const BPF_BUILD_DIR = fileURLToPath(new URL('../../bpf/build/', import.meta.url));

/** Why a candidate was not taken: typed, so the loader decides on this and never on the
 * wording of `error` (which is what `hvwatch probes` shows). */
export type CandidateFailure =
  /** A hot candidate of a probe that is not opted in (probes.hot): never tried. */
  | 'hot_not_opted_in'
  /** The precheck found its hook absent from this kernel (function, tracepoint, symbol). */
  | 'hook_missing'
  /** The precheck passed (or could not tell) and the load or attach failed. */
  | 'load_failed';

export interface CandidateResult {
  attach: string;
  target: string;
  ok: boolean;
  /** Set when !ok. */
  reason?: CandidateFailure;
  error?: string;
  /** The verifier's (or libbpf's) last lines, when a load failed. */
  log?: string[];
  /** Where the candidate keeps per-thread state (Candidate.state). */
  state?: string;
  /** Hooks this candidate shares with other probes: it runs after `after` there, by tail
   * call, instead of attaching another program (agent/hook-chain.ts). */
  chained?: { hook: string; after: string }[];
}

export interface ProbeStatus {
  name: string;
  family: string;
  description: string;
  enabled: boolean;
  /** Why a probe is not enabled (hot and not opted in, disabled by config). */
  skipped?: string;
  hot?: string;
  candidates: CandidateResult[];
  chosen: { attach: string; target: string; state?: string; chained?: CandidateResult['chained'] } | null;
  /** Off because this kernel lacks what it watches (FamilySpec.present, or an optional
   * probe none of whose hooks exist): not a failure. */
  absent?: boolean;
}

export interface LoadOptions {
  enabled: (p: ProbeSpec) => { on: true } | { on: false; why: string };
  candidates?: (p: ProbeSpec) => Candidate[];
  /** Whether a probe's hot candidates may be tried (the probe is opted in). */
  hotAllowed?: (p: ProbeSpec) => boolean;
  mapSizes?: { perObject: number; perFolio: number };
  btfCustomPath?: string;
  /** Whether candidates keeping per-thread state this way may be tried (config
   * bpf.threadState forces the hash tier). Default: all. */
  stateAllowed?: (state: string) => boolean;
}

interface AttachedProgram {
  probe: string;
  program: BpfProgram;
}

function isSharedMap(name: string): boolean {
  return !name.includes('.'); // .rodata/.bss/.data are per-instance
}

/**
 * Maps shared across families: the first family to load that declares one creates it, every
 * later family's object is given the same map (bpf_map__reuse_fd) instead of its own. The
 * per-thread record of the exit path (struct hv_kvm_thread, bpf/src/kvm_ioctl.h) is one: the
 * kvm and kvm_irq programs on one exit then touch one task-storage allocation. Each object
 * still declares the map itself, so it loads alone; a shared map the kernel refused for one
 * family is declared again by the next, which creates its own.
 */
export const SHARED_MAP_PREFIX = 'hv_shared_';

export class LoadedFamily {
  readonly maps = new Map<string, MapFd>();
  /** BTF type ids of each shared map's key and value, in the object's BTF. */
  readonly typeIds = new Map<string, { key: number; value: number }>();
  readonly programs: AttachedProgram[] = [];
  readonly btf: Btf;
  private readonly instances: BpfObject[] = [];
  private readonly links: BpfLink[] = [];
  private readonly testInstances = new Map<string, BpfObject>();
  private readonly sections = new Map<string, string>();

  constructor(
    readonly spec: FamilySpec,
    private readonly owner: BpfObject,
    private readonly opts: LoadOptions,
    private readonly kernel: Kernel,
    private readonly hooks = new HookChains(),
  ) {
    for (const m of owner.maps()) {
      if (!isSharedMap(m.name) || m.fd < 0) continue; // not created: a map type this kernel lacks
      this.maps.set(m.name, m.handleForFd());
      this.typeIds.set(m.name, { key: m.btfKeyTypeId, value: m.btfValueTypeId });
    }
    this.btf = Btf.parse(owner.rawBtf());
    for (const p of owner.programs()) this.sections.set(p.name, p.section);
  }

  get path(): string {
    return this.owner.path;
  }

  private openInstance(programs: string[], setup?: (p: BpfProgram) => void): BpfObject {
    const inst = BpfObject.open(this.owner.path, { btfCustomPath: this.opts.btfCustomPath });
    try {
      for (const p of inst.programs()) {
        const on = programs.includes(p.name);
        p.setAutoload(on);
        if (on) setup?.(p);
      }
      for (const m of inst.maps()) {
        const shared = this.maps.get(m.name);
        if (shared) m.reuseFd(shared.fd);
        else if (isSharedMap(m.name)) m.setAutocreate(false); // the owner could not create it either
      }
      inst.load();
      return inst;
    } catch (e) {
      inst.close();
      throw e;
    }
  }

  tryCandidate(probe: ProbeSpec, c: Candidate): CandidateResult {
    const res: CandidateResult = { attach: c.attach, target: c.target, ok: false, ...(c.state ? { state: c.state } : {}) };
    if (c.programs.length === 0) return { ...res, reason: 'load_failed', error: `probe ${probe.name} has no program for the ${c.attach} tier` };
    const targetOf = (prog: string): string => c.targets?.[prog] ?? c.target;
    const hooks = new Map(c.programs.map((n) => [`${this.kindOf(n, c.attach)} ${targetOf(n)}`, { attach: this.kindOf(n, c.attach), target: targetOf(n) }]));
    for (const h of hooks.values()) {
      const why = this.kernel.precheck({ ...c, ...h });
      if (why) return { ...res, reason: 'hook_missing', error: why };
    }
    let inst: BpfObject | undefined;
    const links: BpfLink[] = [];
    const undo: (() => void)[] = [];
    try {
      inst = this.openInstance(c.programs, (p) => {
        const sectionTarget = p.section.split('/').slice(1).join('/');
        if (['fentry', 'fexit', 'tp_btf'].includes(this.kindOf(p.name, c.attach)) && sectionTarget !== targetOf(p.name)) p.setAttachTarget(targetOf(p.name));
      });
      // A chainable program joins the chain of a hook another probe already holds; the
      // others attach. Chain links are made last, so nothing is undone but them.
      const toChain: { name: string; hook: string; next: MapFd }[] = [];
      const heads: { name: string; hook: string; next: MapFd }[] = [];
      for (const name of c.programs) {
        const hook = `${this.kindOf(name, c.attach)}:${targetOf(name)}`;
        const next = this.maps.get(`${CHAIN_MAP_PREFIX}${name}`);
        if (next && this.hooks.tail(hook)) {
          toChain.push({ name, hook, next });
          continue;
        }
        links.push(inst.program(name).attach(this.kindOf(name, c.attach), targetOf(name)));
        if (next) heads.push({ name, hook, next });
      }
      const chained: NonNullable<CandidateResult['chained']> = [];
      for (const m of toChain) {
        const after = this.hooks.tail(m.hook)!;
        undo.push(this.hooks.append(m.hook, { probe: probe.name, program: inst.program(m.name), next: m.next }));
        chained.push({ hook: m.hook, after });
      }
      for (const h of heads) this.hooks.head(h.hook, { probe: probe.name, program: inst.program(h.name), next: h.next });
      this.instances.push(inst);
      this.links.push(...links);
      for (const name of c.programs) this.programs.push({ probe: probe.name, program: inst.program(name) });
      return { ...res, ok: true, ...(chained.length ? { chained } : {}) };
    } catch (e) {
      for (const u of undo.reverse()) u();
      for (const l of links) l.destroy();
      inst?.close();
      const err = e instanceof BpfError ? e : new BpfError(String(e), 0);
      return { ...res, reason: 'load_failed', error: err.message, log: err.verifierTail() };
    }
  }

  /** A program's attach kind is its section's (a candidate may pair a classic tracepoint
   * with a tp_btf one, or fentry with fexit); sections that carry no kind (a kprobe program
   * retargeted) take the candidate's. */
  private kindOf(program: string, fallback: AttachKind): AttachKind {
    const sec = this.sections.get(program)?.split('/')[0];
    return sec && (ATTACH_KINDS as readonly string[]).includes(sec) ? (sec as AttachKind) : fallback;
  }

  /** A SEC("syscall") program sharing this family's maps, for BPF_PROG_TEST_RUN. */
  testProgram(name: string): BpfProgram {
    let inst = this.testInstances.get(name);
    if (!inst) this.testInstances.set(name, (inst = this.openInstance([name])));
    return inst.program(name);
  }

  destroy(): void {
    for (const l of this.links.splice(0)) l.destroy();
    for (const i of this.instances.splice(0)) i.close();
    for (const i of this.testInstances.values()) i.close();
    this.testInstances.clear();
    this.owner.close();
  }
}

export class Loader {
  readonly families: LoadedFamily[] = [];
  readonly status: ProbeStatus[] = [];
  readonly familyErrors: { family: string; error: string }[] = [];
  /** Hooks shared between probes of any family (agent/hook-chain.ts). */
  readonly hooks = new HookChains();
  /** Per family, where the probes chosen so far keep per-thread state (Candidate.state). */
  private readonly familyState = new Map<string, string>();
  /** Maps named SHARED_MAP_PREFIX*, by name: the first family's, given to the later ones. */
  private readonly sharedMaps = new Map<string, { family: string; map: MapFd }>();

  /** Whether per-CPU hashes are created without preallocation (the comment at the top). */
  private readonly lazyPercpuMaps: boolean;

  constructor(
    private readonly opts: LoadOptions,
    private readonly kernel: Kernel,
  ) {
    this.lazyPercpuMaps = kernel.atLeast(6, 1);
  }

  loadFamily(spec: FamilySpec): LoadedFamily | undefined {
    const absent = spec.present?.();
    if (absent) {
      log('info', 'probe family off: its subsystem is not in this kernel', { family: spec.name, reason: absent });
      for (const p of spec.probes) this.status.push({ ...this.probeStatus(p, false, absent), absent: true });
      return undefined;
    }
    let owner: BpfObject | undefined;
    try {
      owner = BpfObject.open(`${BPF_BUILD_DIR}${spec.object}`, { btfCustomPath: this.opts.btfCustomPath });
      for (const p of owner.programs()) p.setAutoload(false);
      for (const [map, kind] of Object.entries(spec.sizes ?? {})) {
        const n = this.opts.mapSizes?.[kind];
        if (n) owner.map(map).setMaxEntries(n);
      }
      if (this.lazyPercpuMaps) {
        for (const m of owner.maps()) if (m.type === BPF_MAP_TYPE_PERCPU_HASH) m.setFlags(m.flags | BPF_F_NO_PREALLOC);
      }
      // A map type this kernel lacks (task storage before 5.11) is left out: the candidates
      // using it fail to load and the next tier is taken, instead of the family failing.
      for (const m of owner.maps()) if (isSharedMap(m.name) && !mapTypeSupported(m.type)) m.setAutocreate(false);
      for (const m of owner.maps()) {
        const shared = m.name.startsWith(SHARED_MAP_PREFIX) ? this.sharedMaps.get(m.name) : undefined;
        if (!shared) continue;
        const a = shared.map;
        if (a.type !== m.type || a.keySize !== m.keySize || a.valueSize !== m.valueSize)
          throw new Error(
            `shared map ${m.name}: ${spec.object} declares type ${m.type}, key ${m.keySize} B, value ${m.valueSize} B; family ${shared.family} created it with type ${a.type}, key ${a.keySize} B, value ${a.valueSize} B`,
          );
        m.reuseFd(a.fd);
      }
      owner.load(); // creates the maps only: every program is off
    } catch (e) {
      owner?.close();
      return this.familyFailed(spec, e);
    }
    const fam = new LoadedFamily(spec, owner, this.opts, this.kernel, this.hooks);
    try {
      checkEnums(fam.btf, spec.enums ?? []); // the enums it names values of are in its BTF
    } catch (e) {
      fam.destroy();
      return this.familyFailed(spec, e);
    }
    for (const [name, map] of fam.maps)
      if (name.startsWith(SHARED_MAP_PREFIX) && !this.sharedMaps.has(name)) this.sharedMaps.set(name, { family: spec.name, map });
    this.families.push(fam);
    for (const p of spec.probes) this.attachProbe(fam, p);
    return fam;
  }

  private familyFailed(spec: FamilySpec, e: unknown): undefined {
    const msg = e instanceof Error ? e.message : String(e);
    this.familyErrors.push({ family: spec.name, error: msg });
    log('error', 'probe family failed to load; its probes are off', { family: spec.name, error: msg });
    for (const p of spec.probes) this.status.push(this.probeStatus(p, true, `family ${spec.name} failed: ${msg}`));
    return undefined;
  }

  private probeStatus(p: ProbeSpec, enabled: boolean, skipped?: string): ProbeStatus {
    return {
      name: p.name,
      family: p.family,
      description: p.description,
      enabled,
      skipped,
      hot: p.hot,
      candidates: [],
      chosen: null,
    };
  }

  private attachProbe(fam: LoadedFamily, p: ProbeSpec): void {
    const en = this.opts.enabled(p);
    if (!en.on) {
      this.status.push(this.probeStatus(p, false, en.why));
      return;
    }
    const st = this.probeStatus(p, true);
    this.status.push(st);
    // Per-thread state: the halves of a pair are written by one probe and read by another, so
    // once a probe of the family chose where it keeps them, the others keep them there too.
    const state = this.familyState.get(p.family);
    const cands = (this.opts.candidates?.(p) ?? p.candidates).filter(
      (c) => !c.state || ((state === undefined || c.state === state) && (this.opts.stateAllowed?.(c.state) ?? true)),
    );
    for (const c of cands) {
      const r: CandidateResult =
        c.hot && !this.opts.hotAllowed?.(p)
          ? { attach: c.attach, target: c.target, ok: false, reason: 'hot_not_opted_in', error: `hot, not opted in (--hot ${p.name}): ${c.hot}` }
          : fam.tryCandidate(p, c);
      st.candidates.push(r);
      if (r.ok) {
        st.chosen = { attach: c.attach, target: c.target, ...(c.state ? { state: c.state } : {}), ...(r.chained ? { chained: r.chained } : {}) };
        if (c.state) this.familyState.set(p.family, c.state);
        break;
      }
    }
    const hotSkipped = st.candidates.find((r) => r.reason === 'hot_not_opted_in');
    if (st.chosen) {
      log('info', 'probe attached', { probe: p.name, attach: st.chosen.attach, target: st.chosen.target });
    } else if (hotSkipped) {
      // Only hot hooks would work here: that is the operator's choice, not a failure.
      st.enabled = false;
      st.skipped = `only hot candidates attach on this kernel; ${hotSkipped.error}`;
      log('info', 'probe off: only hot candidates left', { probe: p.name, hot: hotSkipped.error });
    } else if (p.optional && st.candidates.length > 0 && st.candidates.every((r) => r.reason === 'hook_missing')) {
      st.enabled = false;
      st.absent = true;
      st.skipped = `not present in this kernel: ${st.candidates.map((c) => c.error).join('; ')}`;
      log('info', 'optional probe off: none of its hooks is in this kernel', { probe: p.name });
    } else {
      log('warn', 'probe did not attach', {
        probe: p.name,
        reasons: st.candidates.map((c) => `${c.attach}:${c.target}: ${c.error}`).join('; '),
      });
    }
  }

  destroy(): void {
    for (const f of this.families.splice(0)) f.destroy();
  }
}
