// Shared pieces of the benchmark: the C workload driver, a scratch memory cgroup, the
// machine description and small statistics helpers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { findMemoryHierarchy } from '../agent/cgroups.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BENCH_DIR = path.join(REPO_ROOT, 'bench');
export const BPF_BUILD = path.join(REPO_ROOT, 'bpf', 'build');

export function progress(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

// ---- scratch space: temp dir (driver binary, data files) and a memory cgroup ----

/** Where the fsync'd writes go: ext4 on a RAM-backed loop device when the host allows. */
export interface DataDir {
  path: string;
  description: string;
  cleanup(): void;
}

const RAMDISK_MIB = 384;

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/**
 * ext4 on a loop device over a file in /dev/shm: the whole writeback path (dirty pages,
 * writeback, bio submission and completion, waits) without the host disk, whose latency on a
 * shared VM swings by several times between runs and would drown a 1 % effect. A RAM-speed
 * device is also the hard case for relative overhead: the slower the disk, the smaller the
 * share of the time the probes take.
 */
function ramBackedExt4(dir: string): DataDir | undefined {
  const img = `/dev/shm/hvwatch-bench-${process.pid}.img`;
  const mnt = path.join(dir, 'mnt');
  let loop: string | undefined;
  let mounted = false;
  const cleanup = (): void => {
    if (mounted) spawnSync('umount', [mnt]);
    if (loop) spawnSync('losetup', ['-d', loop]);
    fs.rmSync(img, { force: true });
  };
  try {
    fs.writeFileSync(img, '');
    fs.truncateSync(img, RAMDISK_MIB << 20);
    run('mkfs.ext4', ['-q', '-F', img]);
    loop = run('losetup', ['-f', '--show', img]);
    fs.mkdirSync(mnt);
    run('mount', [loop, mnt]);
    mounted = true;
    return { path: mnt, description: `ext4 on a ${RAMDISK_MIB} MiB loop device backed by /dev/shm (${loop})`, cleanup };
  } catch (e) {
    cleanup();
    progress(`RAM-backed ext4 not available (${(e as Error).message.split('\n')[0]}); fsync'd writes go to ${dir}`);
    return undefined;
  }
}

export class Scratch {
  readonly dir: string;
  readonly driver: string;
  readonly cgroup: string;
  readonly data: DataDir;
  private cleaned = false;

  private constructor(dir: string, driver: string, cgroup: string, data: DataDir) {
    this.dir = dir;
    this.driver = driver;
    this.cgroup = cgroup;
    this.data = data;
  }

  /** Compiles bench/hvbench.c and creates a memory cgroup for the workloads. */
  static create(): Scratch {
    // Data files go on the root filesystem (a real block device), not a tmpfs /tmp.
    const base = fs.statfsSync('/tmp').type === 0x01021994 /* TMPFS_MAGIC */ ? '/var/tmp' : os.tmpdir();
    const dir = fs.mkdtempSync(path.join(base, 'hvwatch-bench-'));
    const driver = path.join(dir, 'hvbench');
    try {
      execFileSync('clang', ['-O2', '-Wall', '-o', driver, path.join(BENCH_DIR, 'hvbench.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error(`compiling bench/hvbench.c with clang failed: ${(e as Error).message}`);
    }
    const h = findMemoryHierarchy();
    if (!h) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw new Error('no memory cgroup hierarchy mounted');
    }
    const data = ramBackedExt4(dir) ?? { path: dir, description: `${dir} (root filesystem)`, cleanup: () => {} };
    const cgroup = path.join(h.mountPoint, `hvwatch-bench-${process.pid}`);
    try {
      fs.mkdirSync(cgroup);
    } catch (e) {
      data.cleanup();
      fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    return new Scratch(dir, driver, cgroup, data);
  }

  cleanup(): void {
    if (this.cleaned) return;
    this.cleaned = true;
    this.data.cleanup();
    fs.rmSync(this.dir, { recursive: true, force: true });
    // Every driver process has exited by now; an empty cgroup can be removed right away
    // (its page cache charges move to the parent on cgroup v1).
    for (let i = 0; i < 20; i++) {
      try {
        fs.rmdirSync(this.cgroup);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        spawnSync('sleep', ['0.1']);
      }
    }
    progress(`warning: could not remove cgroup ${this.cgroup}`);
  }
}

export interface DriverResult {
  /** Wall-clock ns of the measured loop. */
  ns: number;
  /** CPU ns (user + system) the driver spent in the loop (CLOCK_PROCESS_CPUTIME_ID). */
  cpu_ns: number;
  pages: number;
}

export interface FaultLoad { kind: 'fault'; mib: number; iters: number }
export interface FsyncLoad { kind: 'fsync'; mib: number; chunkKib: number; passes: number }
export type Load = FaultLoad | FsyncLoad;

export function describeLoad(l: Load): string {
  return l.kind === 'fault'
    ? `${l.iters} x (mmap ${l.mib} MiB anonymous, touch every page, munmap)`
    : `${l.passes} x ${l.mib} MiB pwrite in ${l.chunkKib} KiB chunks, fsync after each`;
}

/** Runs the C driver in the scratch cgroup; it times itself after joining the cgroup. */
export function runLoad(s: Scratch, l: Load): DriverResult {
  const args = l.kind === 'fault'
    ? ['fault', s.cgroup, String(l.mib), String(l.iters)]
    : ['fsync', s.cgroup, path.join(s.data.path, 'fsync.dat'), String(l.mib), String(l.chunkKib), String(l.passes)];
  const r = spawnSync(s.driver, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`hvbench ${args.join(' ')} failed (status ${r.status}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as DriverResult;
}

// ---- machine description ----

export interface Machine {
  cpus: number;
  kernel: string;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  date: string;
}

export function machine(): Machine {
  let cpuModel = 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) cpuModel = m[1].trim();
  } catch { /* keep unknown */ }
  return {
    cpus: os.availableParallelism(),
    kernel: fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    cpuModel,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  };
}

export function bpfStatsSysctl(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim();
  } catch {
    return '?';
  }
}

// ---- statistics ----

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
