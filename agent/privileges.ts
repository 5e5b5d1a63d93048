// Dropping every capability once the probes are attached (privileges.dropCapabilities,
// --drop-capabilities). What the agent does afterwards needs none: BPF map reads and the
// ring buffer go through fds it already holds, links detach when their fds close, and
// cgroupfs, memory.stat and /proc/PID/{cmdline,stat,cgroup} are world-readable.
//
// Capabilities belong to threads, not processes (capabilities(7)). capset() changes only
// the calling thread; threads created afterwards inherit the caller's sets. Node's own
// threads (V8 platform workers) and the ring-buffer reader threads exist before the drop,
// so capset alone leaves them privileged: they are counted (hvwatch_privileged_threads).
// Switching to an unprivileged user (privileges.user) reaches every thread, because glibc
// applies setuid/setgid to all threads of the process and the kernel clears a thread's
// permitted and effective sets when its uids all leave 0 (capabilities(7), "Effect of user
// ID changes on capabilities").
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import { kernelRelease } from './kernel.js';

const require = createRequire(import.meta.url);
const koffi = require('koffi') as typeof import('koffi');
const libc = koffi.load('libc.so.6');
const capsetFn = libc.func('int capset(void *hdrp, void *datap)');
const prctlFn = libc.func('int prctl(int option, ...)');

// include/uapi/linux/capability.h and include/uapi/linux/prctl.h (v6.18).
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const PR_CAPBSET_DROP = 24;
const PR_SET_NO_NEW_PRIVS = 38;
const PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_CLEAR_ALL = 4;

export interface CapSets {
  inh: bigint;
  prm: bigint;
  eff: bigint;
  bnd: bigint;
  amb: bigint;
}

/** The capability sets of a thread (default: the main thread) from /proc status. */
export function capSets(statusText = fs.readFileSync('/proc/self/status', 'utf8')): CapSets {
  const get = (k: string): bigint => {
    const m = new RegExp(`^Cap${k}:\\s*([0-9a-f]+)`, 'mi').exec(statusText);
    return m ? BigInt(`0x${m[1]}`) : 0n;
  };
  return { inh: get('Inh'), prm: get('Prm'), eff: get('Eff'), bnd: get('Bnd'), amb: get('Amb') };
}

/** Threads of this process whose effective set is not empty. */
export function privilegedThreads(): number {
  let n = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      if (capSets(fs.readFileSync(`/proc/self/task/${tid}/status`, 'utf8')).eff !== 0n) n++;
    } catch {
      /* thread exited */
    }
  }
  return n;
}

function prctl(option: number, arg2 = 0): number {
  return prctlFn(option, 'unsigned long', arg2, 'unsigned long', 0, 'unsigned long', 0, 'unsigned long', 0) as number;
}

function capsetArgs(): [Buffer, Buffer] {
  const hdr = Buffer.alloc(8);
  hdr.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0); // pid 0: the calling thread
  return [hdr, Buffer.alloc(24)]; // two {effective, permitted, inheritable} words, all zero
}

/** Why dropping would break map reads on this kernel, or undefined. Before 6.5 every bpf()
 * command, map lookups on an fd already held included, checked bpf_capable() whenever
 * kernel.unprivileged_bpf_disabled was set (kernel/bpf/syscall.c __sys_bpf, v6.4); 6.5 moved
 * the check into map and program creation (commit "bpf: move unprivileged checks into
 * map_create() and bpf_prog_load()"). */
export function dropBlocker(release = kernelRelease(), sysctl?: string): string | undefined {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (!m) return undefined;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  if (maj > 6 || (maj === 6 && min >= 5)) return undefined;
  let v = sysctl;
  try {
    v ??= fs.readFileSync('/proc/sys/kernel/unprivileged_bpf_disabled', 'utf8').trim();
  } catch {
    v = '1';
  }
  if (v === '0') return undefined;
  return `kernel ${release} (< 6.5) checks CAP_BPF on every bpf() call while kernel.unprivileged_bpf_disabled=${v}: map reads would fail without capabilities`;
}

function lookupUser(user: string): { uid: number; gid: number } {
  if (/^\d+$/.test(user)) return { uid: Number(user), gid: Number(user) };
  for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === user) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new Error(`user ${user} not in /etc/passwd`);
}

export interface DropResult {
  /** The main thread holds no capability in any set. */
  dropped: boolean;
  privilegedThreads: number;
  /** Why the drop did not happen or is partial. */
  problems: string[];
}

/**
 * Drops every capability: optionally switches user (every thread), empties the bounding
 * and ambient sets, sets no_new_privs (a later exec cannot regain anything, root or not),
 * then empties the main thread's sets and those of libuv's thread pool. `warm` runs first
 * and loads what needs privilege to read (kallsyms addresses).
 */
export async function dropCapabilities(opts: { user?: string; warm?: () => void } = {}): Promise<DropResult> {
  const problems: string[] = [];
  const blocker = dropBlocker();
  if (blocker) return { dropped: false, privilegedThreads: privilegedThreads(), problems: [`capabilities kept: ${blocker}`] };
  opts.warm?.();
  // Needs CAP_SETPCAP, so before anything else; without it the bounding set stays, and
  // no_new_privs still keeps an exec from gaining what the bounding set would allow.
  const last = Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
  for (let c = 0; c <= last; c++) prctl(PR_CAPBSET_DROP, c);
  if (opts.user) {
    try {
      const { uid, gid } = lookupUser(opts.user);
      process.setgroups!([gid]);
      process.setgid!(gid);
      process.setuid!(uid);
    } catch (e) {
      problems.push(`cannot switch to user ${opts.user}: ${(e as Error).message}`);
    }
  }
  prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1) !== 0) problems.push(`prctl(PR_SET_NO_NEW_PRIVS): errno ${koffi.errno()}`);
  if (capsetFn(...capsetArgs()) !== 0) problems.push(`capset: errno ${koffi.errno()}`);
  // koffi's async calls run on libuv's pool threads, which serve fs.promises and crypto:
  // enough calls that each idle pool thread takes at least one.
  const pool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  await Promise.all(
    Array.from(
      { length: pool * 4 },
      () =>
        new Promise<void>((resolve) => {
          capsetFn.async(...capsetArgs(), () => resolve());
        }),
    ),
  );
  const main = capSets();
  const dropped = main.eff === 0n && main.prm === 0n && main.inh === 0n && main.amb === 0n;
  if (!dropped) problems.push(`main thread still holds capabilities (CapEff ${main.eff.toString(16)}, CapPrm ${main.prm.toString(16)})`);
  return { dropped, privilegedThreads: privilegedThreads(), problems };
}
