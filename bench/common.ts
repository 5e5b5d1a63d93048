// Shared pieces of the benchmark: the C workload driver, a scratch memory cgroup, the
// machine description and small statistics helpers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
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
      throw new Error(`compiling bench/hvbench.c with clang failed: ${(e as Error).message}`, { cause: e });
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

export interface FaultLoad {
  kind: 'fault';
  mib: number;
  iters: number;
}
export interface FsyncLoad {
  kind: 'fsync';
  mib: number;
  chunkKib: number;
  passes: number;
}
export interface ChurnLoad {
  kind: 'churn';
  cgroups: number;
  anonKib: number;
  writeKib: number;
}
export type Load = FaultLoad | FsyncLoad | ChurnLoad;
export type LoadKind = Load['kind'];

export function describeLoad(l: Load): string {
  switch (l.kind) {
    case 'fault':
      return `${l.iters} x (mmap ${l.mib} MiB anonymous, touch every page, munmap)`;
    case 'fsync':
      return `${l.passes} x ${l.mib} MiB pwrite in ${l.chunkKib} KiB chunks, fsync after each`;
    case 'churn':
      return `${l.cgroups} x (mkdir a memory cgroup, a child in it touches ${l.anonKib} KiB anonymous and writes ${l.writeKib} KiB with fsync, exits, rmdir)`;
  }
}

function loadArgs(s: Scratch, l: Load): string[] {
  switch (l.kind) {
    case 'fault':
      return ['fault', s.cgroup, String(l.mib), String(l.iters)];
    case 'fsync':
      return ['fsync', s.cgroup, path.join(s.data.path, 'fsync.dat'), String(l.mib), String(l.chunkKib), String(l.passes)];
    case 'churn':
      return ['churn', s.cgroup, String(l.cgroups), s.data.path, String(l.anonKib), String(l.writeKib)];
  }
}

/** Runs the C driver in the scratch cgroup; it times itself after joining the cgroup. */
export function runLoad(s: Scratch, l: Load): DriverResult {
  const args = loadArgs(s, l);
  const r = spawnSync(s.driver, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`hvbench ${args.join(' ')} failed (status ${r.status}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as DriverResult;
}

/** Runs a command to completion without blocking the event loop, calling `tick` every
 * `tickMs` meanwhile (an in-process agent's scrapes); resolves with stdout. */
export function runAsync(cmd: string, args: string[], tick?: () => unknown, tickMs = 1000): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const t = tick ? setInterval(() => void tick(), tickMs) : undefined;
    p.on('error', (e) => {
      if (t) clearInterval(t);
      reject(e);
    });
    p.on('close', (code) => {
      if (t) clearInterval(t);
      if (code === 0) resolve(out);
      else reject(new Error(`${path.basename(cmd)} ${args.join(' ')} failed (status ${code}): ${err.trim()}`));
    });
  });
}

/** The driver without blocking the event loop, so an in-process agent keeps scraping. */
export async function runLoadAsync(s: Scratch, l: Load, tick?: () => unknown): Promise<DriverResult> {
  return JSON.parse(await runAsync(s.driver, loadArgs(s, l), tick)) as DriverResult;
}

/** The last JSON object line of a command's stdout (tools may print other lines). */
export function lastJsonLine<T>(stdout: string): T {
  const line = stdout
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  if (!line) throw new Error(`no JSON result line in: ${stdout.slice(0, 200)}`);
  return JSON.parse(line) as T;
}

// ---- processes: CPU and memory from /proc ----

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) is 100 on every Linux target we run on

/** utime + stime of a process, ms (/proc/PID/stat fields 14 and 15, man 5 proc). */
export function procCpuMs(pid: number | 'self'): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / CLK_TCK;
}

/** VmRSS and VmHWM (peak) of a process, MiB. */
export function procRssMiB(pid: number | 'self'): { rss: number; hwm: number } {
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(st)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** Kernel memory charged for a BPF map (memlock in /proc/self/fdinfo). */
export function mapMemlockBytes(fd: number): number {
  try {
    return Number(/^memlock:\s+(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

// ---- BPF objects the benchmark builds itself (not part of the agent) ----

/** Compiles BPF C with the project's flags (bpf/Makefile) into `outDir`. */
export function compileBpf(src: string, out: string): void {
  const arch = os.arch() === 'arm64' ? 'arm64' : 'x86';
  try {
    execFileSync(
      'clang',
      [
        '-O2',
        '-g',
        '-target',
        'bpf',
        `-D__TARGET_ARCH_${arch}`,
        '-I',
        path.join(REPO_ROOT, 'bpf/include'),
        '-I',
        path.join(REPO_ROOT, 'bpf/src'),
        '-Wall',
        '-Wno-unused-function',
        '-c',
        src,
        '-o',
        out,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
  } catch (e) {
    throw new Error(`compiling ${src} failed: ${((e as { stderr?: Buffer }).stderr ?? '').toString().trim() || (e as Error).message}`, { cause: e });
  }
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
  } catch {
    /* keep unknown */
  }
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

export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
