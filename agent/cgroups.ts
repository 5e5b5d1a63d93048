// Memory-cgroup discovery and cgroup-id -> path resolution.
//
// BPF programs report a memory cgroup as `cgroup_id(memcg->css.cgroup)`: the
// kernfs node id of the cgroup's directory in the hierarchy the memory
// controller is attached to. On 64-bit kernels that id equals the directory's
// inode number (st_ino), and the root cgroup's id is 1. We therefore resolve
// ids by walking the memory hierarchy and mapping st_ino -> path.
//
// Works with cgroup v1 (memory controller on its own `cgroup` mount, e.g.
// /sys/fs/cgroup/memory) and cgroup v2 (`cgroup2` mount whose root
// cgroup.controllers lists `memory`), including hybrid hosts where a cgroup2
// mount exists without the memory controller.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { NO_KUBE_LABELS, type KubeLabeler, type KubeLabels } from './k8s.js';
import { FORGET, KeyChecks, RefreshOrder, type RefreshJob } from './sources/refresh.js';

export interface MemoryHierarchy {
  version: 1 | 2;
  /** Where the hierarchy is mounted, e.g. /sys/fs/cgroup/memory or /sys/fs/cgroup. */
  mountPoint: string;
}

export interface MountinfoEntry {
  mountPoint: string;
  fsType: string;
  superOptions: string[];
  /** Root of the mount within its filesystem ('/' unless a subtree is bind-mounted). */
  root: string;
}

/** Decode the octal escapes (\040 space, \011 tab, \012 newline, \134 backslash) the kernel uses in mountinfo. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * Parse /proc/<pid>/mountinfo text. Format (proc(5)):
 *   id parent major:minor root mount-point mount-options [optional-fields...] - fstype source super-options
 * Malformed lines are skipped.
 */
export function parseMountinfo(text: string): MountinfoEntry[] {
  const out: MountinfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const fields = line.split(' ');
    const sep = fields.indexOf('-', 6);
    if (sep < 0 || fields.length < sep + 3) continue;
    const root = fields[3];
    const mountPoint = fields[4];
    const fsType = fields[sep + 1];
    const superOpts = fields[sep + 3] ?? '';
    if (root === undefined || mountPoint === undefined || fsType === undefined) continue;
    out.push({
      mountPoint: unescapeMountinfo(mountPoint),
      fsType: unescapeMountinfo(fsType),
      superOptions: superOpts === '' ? [] : superOpts.split(',').map(unescapeMountinfo),
      root: unescapeMountinfo(root),
    });
  }
  return out;
}

/** Default v2 check: does the hierarchy's root cgroup.controllers list `memory`? */
export function hasMemoryControllerV2(mountPoint: string): boolean {
  try {
    const text = fs.readFileSync(path.join(mountPoint, 'cgroup.controllers'), 'utf8');
    return text.split(/\s+/).includes('memory');
  } catch {
    return false;
  }
}

/**
 * Find the hierarchy the memory controller is attached to.
 * @param mountinfo mountinfo text; defaults to reading /proc/self/mountinfo.
 * @param hasMemoryController predicate for cgroup2 mounts (default reads <mountPoint>/cgroup.controllers).
 * Prefers cgroup v2 when a cgroup2 mount has the memory controller; otherwise the
 * cgroup v1 mount whose super options contain `memory`. Among several mounts of the
 * same hierarchy, one mounting the hierarchy root ('/') wins; otherwise the first.
 */
export function findMemoryHierarchy(
  mountinfo?: string,
  hasMemoryController: (mountPoint: string) => boolean = hasMemoryControllerV2,
): MemoryHierarchy | undefined {
  const text = mountinfo ?? fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const entries = parseMountinfo(text);
  const pick = (cands: MountinfoEntry[]): MountinfoEntry | undefined => cands.find((e) => e.root === '/') ?? cands[0];

  const v2 = pick(entries.filter((e) => e.fsType === 'cgroup2' && hasMemoryController(e.mountPoint)));
  if (v2) return { version: 2, mountPoint: v2.mountPoint };
  const v1 = pick(entries.filter((e) => e.fsType === 'cgroup' && e.superOptions.includes('memory')));
  if (v1) return { version: 1, mountPoint: v1.mountPoint };
  return undefined;
}

/**
 * The hierarchy id of the memory controller's hierarchy, as the kernel numbers it in
 * /proc/PID/cgroup (`ID:controllers:path`; cgroup v2 is `0::path`) and in the
 * cgroup:cgroup_mkdir record's `root` field (cgrp->root->hierarchy_id,
 * include/trace/events/cgroup.h v6.18). Undefined when no line names it.
 */
export function memoryHierarchyId(h: MemoryHierarchy, procCgroup?: string): number | undefined {
  let text = procCgroup;
  if (text === undefined) {
    try {
      text = fs.readFileSync('/proc/self/cgroup', 'utf8');
    } catch {
      return undefined;
    }
  }
  for (const line of text.split('\n')) {
    const m = /^(\d+):([^:]*):/.exec(line);
    if (!m) continue;
    if (h.version === 1 && m[2]!.split(',').includes('memory')) return Number(m[1]);
    if (h.version === 2 && m[1] === '0' && m[2] === '') return 0;
  }
  return undefined;
}

/** Absolute directory of a cgroup path ('/' or '/a/b') in a hierarchy ('..' cannot climb above the mount point). */
export function cgroupDir(h: MemoryHierarchy, cgPath: string): string {
  const norm = path.posix.normalize('/' + cgPath); // absolute: leading '..' segments are dropped
  return norm === '/' ? h.mountPoint : h.mountPoint.replace(/\/+$/, '') + norm;
}

export interface WalkResult {
  /** st_ino (== cgroup id on 64-bit kernels) -> cgroup path relative to the hierarchy root. */
  byId: Map<bigint, string>;
  durationMs: number;
}

function errCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

/**
 * Walk a cgroup hierarchy iteratively (explicit stack, no recursion), visiting
 * directories only (one stat per cgroup, one readdir per non-leaf cgroup). Directories vanishing mid-walk (ENOENT/ENOTDIR) are skipped;
 * unreadable ones (e.g. EACCES) are skipped as well.
 */
export function walkHierarchy(h: MemoryHierarchy): WalkResult {
  const w = new HierarchyWalk(h);
  w.step(Infinity);
  return { byId: w.byId, durationMs: w.durationMs };
}

/** A walk of the hierarchy that can be done a few directories at a time (the background
 * refresher's: agent/sources/refresh.ts); durationMs counts the time spent stepping. */
export class HierarchyWalk {
  readonly byId = new Map<bigint, string>();
  durationMs = 0;
  // Stack of [absolute dir, cgroup path].
  private readonly stack: [string, string][];

  constructor(h: MemoryHierarchy) {
    this.stack = [[h.mountPoint.replace(/\/+$/, '') || '/', '/']];
  }

  /** Visits up to `maxDirs` directories; true once the walk is complete. */
  step(maxDirs: number): boolean {
    const t0 = performance.now();
    const { byId, stack } = this;
    for (let n = 0; n < maxDirs && stack.length > 0; n++) {
      const [abs, rel] = stack.pop()!;
      let st: fs.BigIntStats | undefined;
      try {
        st = fs.statSync(abs, { bigint: true, throwIfNoEntry: false });
      } catch {
        st = undefined; // ENOTDIR etc.: vanished/replaced
      }
      if (!st || !st.isDirectory()) continue;
      byId.set(st.ino, rel);
      // kernfs reports nlink = 2 + number of subdirectories, so nlink == 2 is a leaf
      // cgroup: skip its readdir (most cgroups are leaves, and readdir of a v1
      // memcg's ~30 control files is the dominant cost of a walk).
      if (st.nlink === 2n) continue;
      let ents: fs.Dirent[];
      try {
        ents = fs.readdirSync(abs, { withFileTypes: true });
      } catch (e) {
        const c = errCode(e);
        if (c === 'ENOENT' || c === 'ENOTDIR' || c === 'EACCES' || c === 'EPERM' || c === 'ENODEV') continue;
        throw e;
      }
      for (const d of ents) {
        // kernfs fills d_type, so this filters out the (many) control files without a stat.
        if (!d.isDirectory()) continue;
        const childAbs = abs === '/' ? '/' + d.name : abs + '/' + d.name;
        stack.push([childAbs, rel === '/' ? '/' + d.name : rel + '/' + d.name]);
      }
    }
    this.durationMs += performance.now() - t0;
    return stack.length === 0;
  }
}

export interface CgroupResolverOptions {
  /** Minimum time between two tree walks triggered by cache misses (default 2000 ms). */
  rescanIntervalMs?: number;
  /** How long an id not found by a walk is remembered as unknown (default 10000 ms). */
  negativeTtlMs?: number;
  /** Clock, for tests (default Date.now). */
  now?: () => number;
  /** Upper bound on remembered unknown ids (default 65536). */
  maxNegativeEntries?: number;
  /** Kubernetes labels for paths (agent/k8s.ts); without it every path has none. */
  kube?: KubeLabeler;
}

export interface CgroupResolverStats {
  /** Lookups answered from the cache. */
  hits: number;
  /** Lookups not in the cache (resolved by a walk, or unresolved). */
  misses: number;
  /** Lookups that ended unresolved (caller labels them 'unknown'). */
  unresolved: number;
  /** Tree walks performed. */
  rescans: number;
}

/**
 * Resolves BPF memory-cgroup ids to paths relative to the hierarchy root ('/' for
 * the root, '/a/b' otherwise). Positive results are cached; a miss triggers a full
 * tree walk at most once per rescanIntervalMs, and ids a walk did not find are
 * remembered for negativeTtlMs, so a flood of unknown ids (e.g. pages still
 * charged to deleted, "dying" memcgs) costs no extra walks.
 */
/** Directories a background walk step visits (~12 us each: ~3 ms of a 100 ms tick). */
const WALK_DIRS_PER_TICK = 256;
/** Bound of CgroupResolver.gone: removed cgroups awaiting their liveness check (~10 s). */
const MAX_GONE = 65536;
/** Bound of the first-sight paths and removal times kept for removed cgroups (oldest first). */
const MAX_NOTED = 65536;

/** A cgroup's series life (README "Series lifecycle"): alive, removed but lingering, or
 * past its linger (its map entries and series go, its budget slot is freed). */
export type CgroupLife = 'alive' | 'lingering' | 'expired';

export class CgroupResolver {
  readonly hierarchy: MemoryHierarchy;
  private readonly rescanIntervalMs: number;
  private readonly negativeTtlMs: number;
  private readonly now: () => number;
  private readonly maxNegative: number;
  private kube: KubeLabeler | undefined;
  private byId = new Map<bigint, string>();
  /** Ids a walk no longer found, with their last path, until a liveness check retires them:
   * their map entries and budget slots must still be freed by path (bounded, oldest first). */
  private readonly gone = new Map<bigint, string>();
  /** id -> expiry time of its negative entry. */
  private readonly negative = new Map<bigint, number>();
  /** Paths the BPF side reported at mkdir/rmdir (first sight), for cgroups a walk may never see. */
  private readonly noted = new Map<bigint, string>();
  /** When each removed cgroup was first known removed: the start of its linger. */
  private readonly removedAt = new Map<bigint, number>();
  private lingerMs = 60_000;
  /** Background liveness checks by id (aliveJob). */
  private alive: KeyChecks<bigint, boolean> | undefined;
  /** The background walk under way (walkJob), when it started, and the ids that missed. */
  private walk: HierarchyWalk | undefined;
  private walkStartedAt = 0;
  private readonly walkMisses = new Set<bigint>();
  private walkJobOn = false;
  private walkJobRef: RefreshJob | undefined;
  private lastRescanAt = -Infinity;
  private _lastWalk: { durationMs: number; cgroups: number } | undefined;
  private readonly _stats: CgroupResolverStats = { hits: 0, misses: 0, unresolved: 0, rescans: 0 };

  constructor(h: MemoryHierarchy, opts: CgroupResolverOptions = {}) {
    this.hierarchy = h;
    this.rescanIntervalMs = opts.rescanIntervalMs ?? 2000;
    this.negativeTtlMs = opts.negativeTtlMs ?? 10000;
    this.now = opts.now ?? Date.now;
    this.maxNegative = opts.maxNegativeEntries ?? 65536;
    this.kube = opts.kube;
  }

  /** The labels every cgroup-labelled series carries besides `cgroup` (the catalog's CG):
   * namespace/pod/container for kubelet-made paths when Kubernetes labels are on, else ''. */
  setKubeLabeler(kube: KubeLabeler | undefined): void {
    this.kube = kube;
  }

  labelsOf(cgPath: string): KubeLabels {
    return this.kube && cgPath.startsWith('/') ? this.kube.labels(cgPath) : NO_KUBE_LABELS;
  }

  /** How long a removed cgroup's series stay (config cgroups.removedSeconds). */
  setLinger(seconds: number): void {
    this.lingerMs = seconds * 1000;
  }

  /**
   * What the BPF side saw when a cgroup was made or removed (families/memcg/memcg.bpf.c
   * cgroup_seen): its path while it existed, so ids of cgroups gone before any scrape or
   * walk still resolve, and its removal without a stat. `path` undefined: not readable or
   * truncated (the walk's path, if any, is kept).
   */
  learn(id: bigint, path: string | undefined, removed: boolean, now: number): void {
    if (path !== undefined && !this.byId.has(id)) {
      this.noted.delete(id);
      this.noted.set(id, path);
      this.negative.delete(id);
      for (const old of this.noted.keys()) {
        if (this.noted.size <= MAX_NOTED) break;
        this.noted.delete(old);
      }
    }
    if (removed) this.markRemoved(id, now);
  }

  /** Whether the last walk found the cgroup (learn() then has no use for its path). */
  walked(id: bigint): boolean {
    return this.byId.has(id);
  }

  private markRemoved(id: bigint, now: number): void {
    if (this.removedAt.has(id)) return;
    const p = this.byId.get(id) ?? this.gone.get(id);
    if (p !== undefined && !this.noted.has(id)) this.noted.set(id, p); // keep its name through the linger
    this.removedAt.set(id, now);
    for (const old of this.removedAt.keys()) {
      if (this.removedAt.size <= MAX_NOTED) break;
      this.removedAt.delete(old);
    }
  }

  /** Whether the cgroup was removed (known from rmdir or a failed liveness check). */
  isRemoved(id: bigint): boolean {
    return this.removedAt.has(id);
  }

  /**
   * Where a cgroup is in its series life at `now`. With `check`, a cgroup not yet known
   * removed is stat'ed (the throttled GC: cgroups that predate the rmdir probe, or hosts
   * where it cannot attach).
   */
  life(id: bigint, now: number, check: boolean): CgroupLife {
    if (!this.removedAt.has(id) && check && !this.isAlive(id)) this.markRemoved(id, now);
    const at = this.removedAt.get(id);
    if (at === undefined) return 'alive';
    return now - at < this.lingerMs ? 'lingering' : 'expired';
  }

  /** Forgets a cgroup whose linger ended (its series are removed). */
  retire(id: bigint): void {
    this.alive?.checks?.delete(id);
    this.byId.delete(id);
    this.gone.delete(id);
    this.noted.delete(id);
    this.removedAt.delete(id);
  }

  resolve(id: bigint): string | undefined {
    const cached = this.byId.get(id) ?? this.gone.get(id) ?? this.noted.get(id);
    if (cached !== undefined) {
      this._stats.hits++;
      return cached;
    }
    this._stats.misses++;
    const now = this.now();
    const negUntil = this.negative.get(id);
    if (negUntil !== undefined) {
      if (now < negUntil) {
        this._stats.unresolved++;
        return undefined;
      }
      this.negative.delete(id);
    }
    if (now - this.lastRescanAt < this.rescanIntervalMs || this.walk) {
      // Rate-limited (or a background walk is under way): not confirmed absent by a walk,
      // so no negative entry; a later lookup retries once the interval has passed.
      if (this.walk && this.walkMisses.size < this.maxNegative) this.walkMisses.add(id);
      this._stats.unresolved++;
      return undefined;
    }
    if (this.walkJobOn && this.lastRescanAt !== -Infinity) {
      // A walk costs ~12 us a cgroup (74 ms at 6,000): on a scrape it was the p99 tail
      // (ids of dying memcgs come back every negativeTtlMs). The first walk is made here;
      // later ones in the background, a few hundred directories a tick (walkJob), and the
      // id stays unresolved until it ends, as when rate-limited.
      this.walk = new HierarchyWalk(this.hierarchy);
      this.walkStartedAt = now;
      this.walkMisses.add(id);
      this._stats.unresolved++;
      return undefined;
    }
    this.rescan();
    const found = this.byId.get(id);
    if (found !== undefined) return found;
    this.rememberUnknown(id, now);
    this._stats.unresolved++;
    return undefined;
  }

  /** Cached path of an id, without walking or touching the stats. */
  pathOf(id: bigint): string | undefined {
    return this.byId.get(id) ?? this.noted.get(id);
  }

  /** Absolute directory of a resolved id (for reading its control files). */
  dirOf(id: bigint): string | undefined {
    const p = this.byId.get(id);
    return p === undefined ? undefined : cgroupDir(this.hierarchy, p);
  }

  /**
   * True while the id's directory exists. Checks the cached path with one stat
   * (inode must still equal the id, so a re-created cgroup with the same name is
   * a different, new id); ids that are not known (never resolved, or dropped by
   * a walk) are not alive. A dead id is evicted from the cache.
   */
  isAlive(id: bigint): boolean {
    if (this.removedAt.has(id)) return false;
    const p = this.byId.get(id) ?? this.gone.get(id) ?? this.noted.get(id);
    if (p === undefined) return false;
    // Alive at the background job's last check (at most an interval old): no stat here. A
    // failed check is confirmed by the stat below, at the collection, so a removal is
    // marked when a collection asks, as without the job (record/replay stay exact).
    if (this.alive?.checks?.get(id) === true) return true;
    if (this.statAlive(id, p)) {
      this.alive?.checks?.set(id, true, this.now());
      return true;
    }
    this.alive?.checks?.delete(id);
    // Removed: the path stays resolvable until the linger ends (retire).
    this.markRemoved(id, this.now());
    if (!this.noted.has(id)) this.noted.set(id, p);
    this.byId.delete(id);
    this.gone.delete(id);
    return false;
  }

  private statAlive(id: bigint, p: string): boolean {
    let st: fs.BigIntStats | undefined;
    try {
      st = fs.statSync(cgroupDir(this.hierarchy, p), { bigint: true, throwIfNoEntry: false });
    } catch {
      st = undefined;
    }
    return !!st && st.isDirectory() && st.ino === id;
  }

  /**
   * The liveness checks as a background job (agent/sources/refresh.ts): each cgroup a
   * collection checked is stat'ed again about every intervalMs, and isAlive answers from
   * its last result. Without it (tests, replays) isAlive stats on every call.
   */
  aliveJob(intervalMs = 10_000): RefreshJob {
    return (this.alive ??= new KeyChecks(
      'cgroup_alive',
      intervalMs,
      128,
      (id) => {
        const p = this.removedAt.has(id) ? undefined : (this.byId.get(id) ?? this.gone.get(id) ?? this.noted.get(id));
        return p === undefined ? FORGET : this.statAlive(id, p);
      },
      MAX_NOTED,
    ));
  }

  /**
   * Walks the hierarchy in the background when a lookup missed (agent/sources/refresh.ts):
   * WALK_DIRS_PER_TICK directories a tick; at its end the cache is replaced as by rescan()
   * and the ids that missed meanwhile and were not found are remembered as unknown.
   */
  walkJob(): RefreshJob {
    return (this.walkJobRef ??= {
      fact: 'cgroup_walk',
      intervalMs: this.rescanIntervalMs,
      maxPerTick: 1,
      running: (on) => {
        this.walkJobOn = on;
        this.walk = undefined;
        this.walkMisses.clear();
      },
      size: () => (this.walk ? 1 : 0),
      oldest: () => undefined,
      refresh: () => {
        const w = this.walk;
        if (!w || !w.step(WALK_DIRS_PER_TICK)) return;
        this.walk = undefined;
        this.applyWalk(w.byId, w.durationMs, this.walkStartedAt);
        const now = this.now();
        for (const id of this.walkMisses) if (!this.byId.has(id) && !this.noted.has(id)) this.rememberUnknown(id, now);
        this.walkMisses.clear();
      },
    });
  }

  /** Walk the tree now (ignoring the rate limit) and replace the cache with its result. */
  rescan(): void {
    const now = this.now();
    const { byId, durationMs } = walkHierarchy(this.hierarchy);
    this.applyWalk(byId, durationMs, now);
  }

  private applyWalk(byId: Map<bigint, string>, durationMs: number, now: number): void {
    for (const [id, path] of this.byId) if (!byId.has(id)) this.gone.set(id, path);
    for (const id of byId.keys()) this.gone.delete(id);
    for (const id of this.gone.keys()) {
      if (this.gone.size <= MAX_GONE) break;
      this.gone.delete(id);
    }
    this.byId = byId;
    this.lastRescanAt = now;
    this._stats.rescans++;
    this._lastWalk = { durationMs, cgroups: byId.size };
    for (const [id, until] of this.negative) {
      if (until <= now || byId.has(id)) this.negative.delete(id);
    }
  }

  get stats(): CgroupResolverStats {
    return { ...this._stats };
  }

  /** Duration and size of the last walk (undefined before the first one). */
  get lastWalk(): { durationMs: number; cgroups: number } | undefined {
    return this._lastWalk;
  }

  /** Number of cgroups currently known. */
  get size(): number {
    return this.byId.size;
  }

  private rememberUnknown(id: bigint, now: number): void {
    if (this.negativeTtlMs <= 0) return;
    this.negative.set(id, now + this.negativeTtlMs);
    // Bound memory under a flood of distinct ids: drop the oldest entries.
    while (this.negative.size > this.maxNegative) {
      const oldest = this.negative.keys().next();
      if (oldest.done) break;
      this.negative.delete(oldest.value);
    }
  }
}

export interface MemoryStat {
  dirtyBytes: number;
  writebackBytes: number;
}

/**
 * Parse memory.stat. v1: 'dirty'/'writeback' (this cgroup only, not the
 * hierarchical total_* keys); v2: 'file_dirty'/'file_writeback'. Values are bytes;
 * missing keys read as 0.
 */
export function parseMemoryStat(text: string, version: 1 | 2): MemoryStat {
  const dirtyKey = version === 1 ? 'dirty' : 'file_dirty';
  const wbKey = version === 1 ? 'writeback' : 'file_writeback';
  let dirtyBytes = 0;
  let writebackBytes = 0;
  for (const line of text.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp <= 0) continue;
    const key = line.slice(0, sp);
    if (key !== dirtyKey && key !== wbKey) continue;
    const v = Number(line.slice(sp + 1).trim());
    if (!Number.isFinite(v)) continue;
    if (key === dirtyKey) dirtyBytes = v;
    else writebackBytes = v;
  }
  return { dirtyBytes, writebackBytes };
}

/** The two memory.stat lines parseMemoryStat reads, as a trace carries them. */
export function formatMemoryStat(st: MemoryStat, version: 1 | 2): string {
  return version === 1 ? `dirty ${st.dirtyBytes}\nwriteback ${st.writebackBytes}\n` : `file_dirty ${st.dirtyBytes}\nfile_writeback ${st.writebackBytes}\n`;
}

/** Read <cgroup>/memory.stat; undefined if the cgroup (or the file) is gone. */
export function readMemoryStat(h: MemoryHierarchy, cgPath: string): MemoryStat | undefined {
  let text: string;
  try {
    text = fs.readFileSync(path.join(cgroupDir(h, cgPath), 'memory.stat'), 'utf8');
  } catch (e) {
    const c = errCode(e);
    // ENODEV: file was open/being read while the cgroup was removed.
    if (c === 'ENOENT' || c === 'ENOTDIR' || c === 'ENODEV') return undefined;
    throw e;
  }
  return parseMemoryStat(text, h.version);
}

/** memory.stat as a collection reads it: live, the background refresher's cache
 * (MemoryStatCache); replayed, a trace's tables (agent/sources/host.ts). */
export interface MemoryStatSource {
  /** The cgroup's memory.stat (undefined when unreadable: the cgroup is gone). */
  get(cgPath: string): MemoryStat | undefined;
  /** Ends a collection: cgroups it did not ask for are forgotten. */
  endCollection(): void;
}

/** Most cgroups one refresher tick reads (~28 us each: ~1.8 ms of a 100 ms tick at most). */
const STAT_MAX_PER_TICK = 64;

/**
 * memory.stat of the cgroups a collection asks for, re-read in the background every
 * intervalMs (agent/sources/refresh.ts): a scrape reads only the cgroups it has never asked
 * for (first sight), every other value is at most one interval (plus a tick) old.
 */
export class MemoryStatCache implements MemoryStatSource, RefreshJob {
  readonly fact = 'memory_stat';
  readonly maxPerTick = STAT_MAX_PER_TICK;
  /** Each cgroup's last read (null: unreadable) and the collection that last asked for it. */
  private readonly order = new RefreshOrder<string, { st: MemoryStat | null; asked: number }>();
  private collection = 0;

  constructor(
    private readonly hierarchy: MemoryHierarchy,
    readonly intervalMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether the refresher runs (RefreshJob.running); without it every get() reads. */
  private background = false;

  running(on: boolean): void {
    this.background = on;
  }

  get(cgPath: string): MemoryStat | undefined {
    // First sight, or no refresher to keep it fresh: read now.
    let e = this.order.get(cgPath);
    if (!e || !this.background) this.order.set(cgPath, (e = { st: readMemoryStat(this.hierarchy, cgPath) ?? null, asked: 0 }), this.now());
    e.asked = this.collection;
    return e.st ?? undefined;
  }

  endCollection(): void {
    for (const p of this.order.keys()) if (this.order.get(p)!.asked !== this.collection) this.order.delete(p);
    this.collection++;
  }

  size(): number {
    return this.order.size;
  }

  refresh(n: number, now: number): void {
    for (const p of this.order.stalest(n)) {
      const e = this.order.get(p)!;
      e.st = readMemoryStat(this.hierarchy, p) ?? null;
      this.order.set(p, e, now);
    }
  }

  oldest(): number | undefined {
    return this.order.oldest();
  }
}
