// VM identity: which VM a VMM process (its tgid) is, for the `vm` label.
//
// The name comes from the VMM's command line, the way an operator named the VM:
//   QEMU             -name guest=NAME[,debug-threads=on]  or  -name NAME  (also --name)
//   libvirt's QEMU   the same -name, recognised as libvirt by -uuid plus a libvirt domain
//                    path in the arguments, or by a machine-qemu / .libvirt-qemu cgroup
//   Firecracker      --id ID (the firecracker binary, or the jailer that execs it)
//   cloud-hypervisor --api-socket [path=]/run/NAME.sock  -> NAME
// and otherwise `pid-<PID>`. Names are label values: control and format characters are
// removed and the length is bounded (a hash suffix keeps long names distinct).
//
// A pid is reused once its process is gone, so the cache is keyed by pid *and* process
// start time (/proc/PID/stat field 22): an entry is only trusted while both match (a generation
// check: a reused identifier must never inherit its predecessor's state).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KeyChecks, type RefreshJob } from './sources/refresh.js';

export type VmSource = 'qemu' | 'libvirt' | 'firecracker' | 'cloud-hypervisor' | 'pid';

export interface VmIdentity {
  name: string;
  source: VmSource;
}

/** Longest VM name we emit, in code points. */
export const MAX_VM_NAME = 64;

/** Removes control/format characters (newlines, NUL, bidi overrides, ...) and bounds the
 * length. Names longer than `max` keep a prefix plus `~` and a hash of the whole name, so
 * two long names that share a prefix stay two VMs. Returns '' when nothing is left. */
export function sanitizeVmName(raw: string, max = MAX_VM_NAME): string {
  const s = raw.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '').trim();
  const cps = [...s];
  if (cps.length <= max) return s;
  let h = 0x811c9dc5; // FNV-1a, 32 bits
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return `${cps
    .slice(0, max - 9)
    .join('')
    .trimEnd()}~${h.toString(16).padStart(8, '0')}`;
}

/** Parses a QEMU option string (QemuOpts): `key=value,key=value`, `,,` is a literal comma,
 * and a first element without `=` is the value of the implied key (for -name: guest). */
export function parseQemuOpts(s: string, implied?: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  for (let first = true; i < s.length; first = false) {
    let end = i;
    while (end < s.length && s[end] !== '=' && s[end] !== ',') end++;
    let key: string;
    if (s[end] === '=') {
      key = s.slice(i, end);
      i = end + 1;
    } else if (first && implied) {
      key = implied;
    } else {
      // A bare flag ("foo" means foo=on); QEMU has no ,, inside option names.
      out.set(s.slice(i, end), 'on');
      i = end + 1;
      continue;
    }
    let v = '';
    while (i < s.length) {
      if (s[i] === ',') {
        if (s[i + 1] !== ',') break;
        i++;
      }
      v += s[i++];
    }
    i++; // the separating comma
    out.set(key, v);
  }
  return out;
}

/** The value of the last occurrence of any of `names` (`-x V`, or `--x=V` for `--` names). */
function optionValue(argv: string[], names: string[]): string | undefined {
  let v: string | undefined;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (names.includes(a) && i + 1 < argv.length) v = argv[++i];
    else if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0 && names.includes(a.slice(0, eq))) v = a.slice(eq + 1);
    }
  }
  return v;
}

/** Basenames of argv[0] and of /proc/PID/exe (argv[0] can be rewritten; exe cannot). */
function binaryNames(argv: string[], exe?: string): string[] {
  const out: string[] = [];
  if (argv[0]) out.push(path.basename(argv[0]));
  if (exe) out.push(path.basename(exe.replace(/ \(deleted\)$/, '')));
  return out;
}

// Release binaries carry versions: firecracker-v1.7.0-x86_64, jailer-v1.7.0-x86_64.
const isBinary = (names: string[], base: string) => names.some((n) => n === base || n.startsWith(`${base}-`) || n.startsWith(`${base}.`));

// Paths libvirt puts on a QEMU command line it builds: the per-domain directory
// /var/lib/libvirt/qemu/domain-<id>-<name>/ (system) or ~/.config/libvirt/qemu/lib/domain-...
// (session), e.g. for master-key.aes and the monitor socket.
const LIBVIRT_ARG = /\/libvirt\/qemu\/(?:lib\/)?domain-\d+-/;
// systemd-machined scopes (machine-qemu\x2d3\x2dweb01.scope) and libvirt's own layout
// (/machine/qemu-3-web01.libvirt-qemu).
const LIBVIRT_CGROUP = /machine-qemu|\.libvirt-qemu/;

/**
 * The VM identity a VMM command line names, or undefined when it names none (the caller
 * then uses pidIdentity). Pure: argv is /proc/PID/cmdline split on NUL, exe the target of
 * /proc/PID/exe, cgroup the text of /proc/PID/cgroup.
 */
export function parseVmIdentity(argv: string[], exe?: string, cgroup?: string): VmIdentity | undefined {
  const bins = binaryNames(argv, exe);
  const named = (raw: string | undefined, source: VmSource): VmIdentity | undefined => {
    const name = raw === undefined ? '' : sanitizeVmName(raw);
    return name ? { name, source } : undefined;
  };

  // Firecracker without --id calls itself "anonymous-instance": not a name, every such VM has it.
  if (isBinary(bins, 'firecracker') || isBinary(bins, 'jailer')) return named(optionValue(argv, ['--id']), 'firecracker');

  if (isBinary(bins, 'cloud-hypervisor')) {
    const sock = optionValue(argv, ['--api-socket']);
    if (sock === undefined) return undefined;
    const parts = sock.split(',');
    const p = parts.find((x) => x.startsWith('path='))?.slice(5) ?? (parts[0]?.includes('=') ? undefined : parts[0]);
    return p ? named(path.basename(p).replace(/\.sock$/, ''), 'cloud-hypervisor') : undefined;
  }

  const nameOpt = optionValue(argv, ['-name', '--name']);
  if (nameOpt === undefined) return undefined;
  const guest = parseQemuOpts(nameOpt, 'guest').get('guest');
  const byLibvirt = (argv.includes('-uuid') && argv.some((a) => LIBVIRT_ARG.test(a))) || (cgroup !== undefined && LIBVIRT_CGROUP.test(cgroup));
  return named(guest, byLibvirt ? 'libvirt' : 'qemu');
}

export function pidIdentity(pid: number): VmIdentity {
  return { name: `pid-${pid}`, source: 'pid' };
}

export interface ProcStat {
  comm: string;
  state: string;
  ppid: number;
  /** Field 22: clock ticks after boot. Together with the pid it names one process. */
  startTime: number;
}

/** Parses /proc/PID/stat. comm (field 2) may hold spaces and parentheses, so the fields
 * after it are counted from the last ')'. */
export function parseProcStat(text: string): ProcStat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const f = text
    .slice(close + 1)
    .trim()
    .split(/\s+/); // f[0] is field 3
  const state = f[0];
  const ppid = Number(f[1]);
  const startTime = Number(f[19]);
  if (!state || !Number.isSafeInteger(ppid) || f[19] === undefined || !Number.isSafeInteger(startTime)) return undefined;
  return { comm: text.slice(open + 1, close), state, ppid, startTime };
}

export interface VmResolverOptions {
  /** Where procfs is (tests use a fake tree). Default $HVWATCH_PROC_ROOT, else /proc: in a
   * pod, the host's /proc mounted elsewhere (deploy/: /host/proc), since BPF reports host
   * pids and the pod's own /proc shows only its pid namespace. */
  procRoot?: string;
  /** Cache bound; the least recently resolved pid is dropped first. Default 4096. */
  maxEntries?: number;
}

interface Entry {
  startTime: number;
  identity: VmIdentity;
}

export class VmResolver {
  private readonly procRoot: string;
  private readonly maxEntries: number;
  private readonly cache = new Map<number, Entry>();
  /** pid -> start time at the background job's last check (null: gone): livenessJob. */
  private job: KeyChecks<number, number | null> | undefined;

  constructor(opts: VmResolverOptions = {}) {
    this.procRoot = opts.procRoot ?? (process.env.HVWATCH_PROC_ROOT || '/proc');
    this.maxEntries = Math.max(1, opts.maxEntries ?? 4096);
  }

  get size(): number {
    return this.cache.size;
  }

  /** The process's start time, or null when it is gone. A zombie counts as gone: it has
   * already closed its VM fds. */
  startTime(pid: number): number | null {
    if (!Number.isSafeInteger(pid) || pid <= 0) return null;
    const st = parseProcStat(this.read(pid, 'stat') ?? '');
    return st && st.state !== 'Z' && st.state !== 'X' ? st.startTime : null;
  }

  /** The VM a VMM process is, or null when the process is gone. */
  resolve(pid: number): VmIdentity | null {
    // Checked in the background (livenessJob) at most an interval ago: same start time as
    // the cached identity, so no /proc read here. A pid the check found gone or reused goes
    // through the reads below, which confirm it.
    const checks = this.job?.checks;
    const bg = checks?.get(pid);
    if (bg === null) return null; // gone at the last check (an exited VM lingers: no read per scrape)
    if (bg !== undefined) {
      const hit = this.cache.get(pid);
      if (hit?.startTime === bg) return hit.identity;
    }
    const id = this.resolveNow(pid);
    if (checks) {
      const hit = id && this.cache.get(pid);
      if (id === null) checks.set(pid, null, Date.now());
      else if (hit) checks.set(pid, hit.startTime, Date.now());
      else checks.delete(pid); // named by pid only: asked again next time
      checks.bound(this.maxEntries);
    }
    return id;
  }

  /**
   * The processes resolve() has named, re-checked in the background (agent/sources/
   * refresh.ts): one /proc/PID/stat read each about every intervalMs. A VMM's exit or a
   * reused pid is then seen by resolve() within that interval instead of at once, and a
   * gone one answers null without a read until forget().
   */
  livenessJob(intervalMs = 2_000): RefreshJob {
    // Gone ones too (null): a new process that reuses the pid is then seen. They leave with
    // forget() (the vm label's linger ended) or resolve()'s bound.
    return (this.job ??= new KeyChecks('vmm_alive', intervalMs, 64, (pid) => this.startTime(pid)));
  }

  private resolveNow(pid: number): VmIdentity | null {
    // Re-check the start time after reading: if the pid was reused meanwhile, the command
    // line may belong to the new process, so read again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const start = this.startTime(pid);
      if (start === null) {
        this.cache.delete(pid);
        return null;
      }
      const hit = this.cache.get(pid);
      if (hit?.startTime === start) {
        this.cache.delete(pid); // most recently used goes last
        this.cache.set(pid, hit);
        return hit.identity;
      }
      const cmdline = this.read(pid, 'cmdline');
      if (cmdline === undefined) continue;
      const argv = cmdline.split('\0');
      if (argv.at(-1) === '') argv.pop();
      let exe: string | undefined;
      try {
        exe = fs.readlinkSync(path.join(this.procRoot, String(pid), 'exe'));
      } catch {
        /* no permission, or a kernel thread */
      }
      const cgroup = this.read(pid, 'cgroup');
      if (this.startTime(pid) !== start) continue;

      const identity = parseVmIdentity(argv, exe, cgroup) ?? pidIdentity(pid);
      this.cache.delete(pid);
      this.cache.set(pid, { startTime: start, identity });
      while (this.cache.size > this.maxEntries) this.cache.delete(this.cache.keys().next().value!);
      return identity;
    }
    return this.startTime(pid) === null ? null : pidIdentity(pid);
  }

  /** Whether the same process still exists: same pid and start time (the given one, else
   * the one cached by resolve; with neither, any live process with this pid). */
  alive(pid: number, startTime?: number): boolean {
    const now = this.startTime(pid);
    if (now === null) return false;
    const want = startTime ?? this.cache.get(pid)?.startTime;
    return want === undefined || want === now;
  }

  forget(pid: number): void {
    this.job?.checks?.delete(pid);
    this.cache.delete(pid);
  }

  /** Forgets every cached process that is gone or was replaced; returns their pids (so
   * their series can be removed). */
  prune(): number[] {
    const gone: number[] = [];
    for (const [pid, e] of this.cache) if (!this.alive(pid, e.startTime)) gone.push(pid);
    for (const pid of gone) this.cache.delete(pid);
    return gone;
  }

  private read(pid: number, file: string): string | undefined {
    try {
      return fs.readFileSync(path.join(this.procRoot, String(pid), file), 'utf8');
    } catch {
      return undefined;
    }
  }
}
