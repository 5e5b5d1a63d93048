// Host facts the decoders need, as tables a trace carries, so a trace from another host
// still decodes its labels: cgroup id -> path (and whether it still exists), the files
// families read per cgroup (memory.stat), and VMM tgid -> VM identity.
//
// Recording taps the live lookups and writes what changed (an "ident" record) before the
// snapshot or events that used it; replay answers the same lookups from the tables.
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CgroupResolver,
  cgroupDir,
  formatMemoryStat,
  parseMemoryStat,
  type CgroupResolverStats,
  type MemoryHierarchy,
  type MemoryStatSource,
} from '../cgroups.js';
import type { VmIdentity } from '../vms.js';
import type { VmLabelService } from '../services/vm-labels.js';
import { NO_KUBE_LABELS, type KubeLabels } from '../k8s.js';

/** The per-cgroup file a trace carries (families/memcg/family.ts reads it). */
const MEMORY_STAT = 'memory.stat';

export interface IdentDelta {
  /** cgroup id (decimal) -> path, or null when it resolved to nothing. */
  cg?: [string, string | null][];
  /** cgroup id -> whether its directory still existed at a liveness check. */
  alive?: [string, boolean][];
  /** [cgroup path, file name] -> content, or null when unreadable. */
  files?: [string, string, string | null][];
  /** VMM tgid -> identity, or null when the process was gone. */
  vm?: [number, VmIdentity | null][];
  /** cgroup path -> its Kubernetes labels (agent/k8s.ts). */
  kube?: [string, KubeLabels][];
}

export class HostTables {
  readonly cg = new Map<string, string | null>();
  readonly alive = new Map<string, boolean>();
  readonly files = new Map<string, string | null>(); // key: path\0file
  readonly vm = new Map<number, VmIdentity | null>();
  readonly kube = new Map<string, KubeLabels>();
  private pending: Required<IdentDelta> = { cg: [], alive: [], files: [], vm: [], kube: [] };

  noteKube(cgPath: string, l: KubeLabels): void {
    const prev = this.kube.get(cgPath);
    if (prev && prev.namespace === l.namespace && prev.pod === l.pod && prev.container === l.container) return;
    this.kube.set(cgPath, l);
    this.pending.kube.push([cgPath, l]);
  }

  noteCgroup(id: bigint, p: string | undefined): void {
    const k = id.toString();
    const v = p ?? null;
    if (this.cg.has(k) && this.cg.get(k) === v) return;
    this.cg.set(k, v);
    this.pending.cg.push([k, v]);
  }

  noteAlive(id: bigint, alive: boolean): void {
    const k = id.toString();
    if (this.alive.get(k) === alive) return;
    this.alive.set(k, alive);
    this.pending.alive.push([k, alive]);
  }

  noteFile(cgPath: string, file: string, content: string | null): void {
    const k = `${cgPath}\0${file}`;
    if (this.files.has(k) && this.files.get(k) === content) return;
    this.files.set(k, content);
    this.pending.files.push([cgPath, file, content]);
  }

  noteVm(pid: number, id: VmIdentity | null): void {
    const prev = this.vm.get(pid);
    if (this.vm.has(pid) && (prev === id || (prev && id && prev.name === id.name && prev.source === id.source))) return;
    this.vm.set(pid, id);
    this.pending.vm.push([pid, id]);
  }

  /** What changed since the last call (undefined when nothing did). */
  takeDelta(): IdentDelta | undefined {
    const p = this.pending;
    if (!p.cg.length && !p.alive.length && !p.files.length && !p.vm.length && !p.kube.length) return undefined;
    this.pending = { cg: [], alive: [], files: [], vm: [], kube: [] };
    const out: IdentDelta = {};
    if (p.cg.length) out.cg = p.cg;
    if (p.alive.length) out.alive = p.alive;
    if (p.files.length) out.files = p.files;
    if (p.vm.length) out.vm = p.vm;
    if (p.kube.length) out.kube = p.kube;
    return out;
  }

  apply(d: IdentDelta): void {
    for (const [k, v] of d.cg ?? []) this.cg.set(k, v);
    for (const [k, v] of d.alive ?? []) this.alive.set(k, v);
    for (const [p, f, c] of d.files ?? []) this.files.set(`${p}\0${f}`, c);
    for (const [pid, id] of d.vm ?? []) this.vm.set(pid, id);
    for (const [p, l] of d.kube ?? []) this.kube.set(p, l);
  }
}

/** The live resolver, noting every answer it gives. */
export class TappingCgroupResolver extends CgroupResolver {
  constructor(
    h: MemoryHierarchy,
    private readonly tables: HostTables,
  ) {
    super(h);
  }

  override resolve(id: bigint): string | undefined {
    const p = super.resolve(id);
    this.tables.noteCgroup(id, p);
    return p;
  }

  override isAlive(id: bigint): boolean {
    const a = super.isAlive(id);
    this.tables.noteAlive(id, a);
    return a;
  }

  override labelsOf(cgPath: string): KubeLabels {
    const l = super.labelsOf(cgPath);
    if (l !== NO_KUBE_LABELS) this.tables.noteKube(cgPath, l);
    return l;
  }
}

/** Answers from a trace's tables; never touches this host's cgroupfs. */
export class TableCgroupResolver extends CgroupResolver {
  private readonly counts: CgroupResolverStats = { hits: 0, misses: 0, unresolved: 0, rescans: 0 };

  constructor(
    h: MemoryHierarchy,
    private readonly tables: HostTables,
  ) {
    super(h);
  }

  override resolve(id: bigint): string | undefined {
    const p = this.tables.cg.get(id.toString());
    if (p === undefined || p === null) {
      this.counts.misses++;
      this.counts.unresolved++;
      return undefined;
    }
    this.counts.hits++;
    return p;
  }

  override pathOf(id: bigint): string | undefined {
    return this.tables.cg.get(id.toString()) ?? undefined;
  }

  override dirOf(id: bigint): string | undefined {
    const p = this.pathOf(id);
    return p === undefined ? undefined : cgroupDir(this.hierarchy, p);
  }

  override isAlive(id: bigint): boolean {
    return this.tables.alive.get(id.toString()) ?? false;
  }

  override rescan(): void {}

  override labelsOf(cgPath: string): KubeLabels {
    return this.tables.kube.get(cgPath) ?? NO_KUBE_LABELS;
  }

  override get stats(): CgroupResolverStats {
    return { ...this.counts };
  }

  override get size(): number {
    return this.tables.cg.size;
  }
}

/**
 * A directory laid out like the memory hierarchy, holding only the per-cgroup files the
 * families read: families read `ctx.cgroups.hierarchy`, so pointing it here serves the
 * recorded (or, while recording, the just-captured) contents through the same code.
 */
export class HostFiles {
  readonly hierarchy: MemoryHierarchy;

  constructor(version: 1 | 2) {
    this.hierarchy = { version, mountPoint: fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'hvwatch-host-')) };
  }

  write(cgPath: string, file: string, content: string | null): void {
    const dir = cgroupDir(this.hierarchy, cgPath); // normalized: a trace's path cannot climb out
    try {
      if (content === null) fs.rmSync(path.join(dir, file), { force: true });
      else {
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, file), content);
      }
    } catch {
      /* a path this filesystem cannot hold: the family sees the file as missing */
    }
  }

  remove(): void {
    fs.rmSync(this.hierarchy.mountPoint, { recursive: true, force: true });
  }
}

/** memory.stat as a recording's collection was served it, noted for the trace: the two
 * lines the agent reads (formatMemoryStat), which a replay parses back the same way. */
export function tapMemoryStats(src: MemoryStatSource, tables: HostTables, version: 1 | 2): MemoryStatSource {
  return {
    endCollection: () => src.endCollection(),
    get: (p) => {
      const st = src.get(p);
      tables.noteFile(p, MEMORY_STAT, st ? formatMemoryStat(st, version) : null);
      return st;
    },
  };
}

/** memory.stat from a trace's tables (its last noted content for the path). */
export function tableMemoryStats(tables: HostTables, version: 1 | 2): MemoryStatSource {
  return {
    endCollection: () => {},
    get: (p) => {
      const c = tables.files.get(`${p}\0${MEMORY_STAT}`);
      return c === undefined || c === null ? undefined : parseMemoryStat(c, version);
    },
  };
}

/** VM identities as the recording saw them (the vm label's lookup, agent/services/vm-labels.ts). */
export function tapVms(tables: HostTables, vms: Pick<VmLabelService, 'useIdentity'>): () => void {
  return vms.useIdentity((fromProc) => (pid) => {
    const id = fromProc(pid);
    tables.noteVm(pid, id);
    return id;
  });
}

export function serveVms(tables: HostTables, vms: Pick<VmLabelService, 'useIdentity'>): () => void {
  return vms.useIdentity(() => (pid) => tables.vm.get(pid) ?? null);
}
