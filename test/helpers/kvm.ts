// Real KVM guests for tests and benchmarks, through test/helpers/build/kvm-guest (a tiny C
// VMM: N port writes then HLT per vCPU; see kvm-guest.c). Built by `make -C test/helpers`.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './agent.js';

export const KVM_GUEST = join(ROOT, 'test/helpers/build/kvm-guest');
export const KVM_DEV = '/dev/kvm';

export interface GuestOptions {
  /** `out` writes per vCPU (default 1000). */
  writes?: number;
  /** vCPUs, each running the same code (default 1). */
  vcpus?: number;
  /** I/O port written (default 0x3f8). */
  port?: number;
  /** Keep the VM open this long after the result line (default 0). */
  holdMs?: number;
  /** Try KVM_GET/SET_NESTED_STATE on vCPU 0 after the run. */
  nestedState?: boolean;
  /** Passed as QEMU's `-name guest=NAME,debug-threads=on`, so it is in /proc/PID/cmdline. */
  name?: string;
  /** Extra raw arguments (e.g. `--kvm /path`). */
  args?: string[];
}

export interface NestedStateCall {
  ret: number;
  errno: string | null; // e.g. "EINVAL"; null when ret >= 0
  errno_num: number;
}

export interface GuestResult {
  pid: number;
  vcpus: number;
  writes: number;
  port: number;
  io_exits: number;
  hlt_exits: number;
  /** Exit reasons other than IO and HLT by name (e.g. mmio), plus io_unexpected. */
  other_exits: Record<string, number>;
  per_vcpu: { io_exits: number; hlt_exits: number }[];
  /** From releasing the vCPUs to the last HLT. */
  run_ns: number;
  /** KVM_CHECK_EXTENSION(KVM_CAP_NESTED_STATE): 0 when unsupported, else the state size. */
  cap_nested_state: number;
  nested_state?: {
    get: NestedStateCall;
    set: NestedStateCall;
    get_state?: { flags: number; format: number; size: number };
  };
}

export interface GuestHandle {
  pid: number;
  /** Starts the guest (it is waiting on stdin after its ready line). */
  go(): void;
  /** The result line, as soon as every vCPU has halted: with holdMs the VM still exists then. */
  result: Promise<GuestResult>;
  /** Process exit: resolves with the code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** Kills the process (default SIGKILL) and waits for it. Safe to call twice. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** A skip reason when real guests cannot run here, else undefined. */
export function kvmUsable(): string | undefined {
  try {
    accessSync(KVM_DEV, constants.R_OK | constants.W_OK);
  } catch (e) {
    return `${KVM_DEV} not usable (${(e as NodeJS.ErrnoException).code})`;
  }
  try {
    accessSync(KVM_GUEST, constants.X_OK);
  } catch {
    return `${KVM_GUEST} not built (run: make -C test/helpers)`;
  }
  return undefined;
}

export function guestArgs(opts: GuestOptions = {}): string[] {
  const a: string[] = [];
  if (opts.name !== undefined) a.push('-name', `guest=${opts.name.replaceAll(',', ',,')},debug-threads=on`);
  if (opts.writes !== undefined) a.push('--writes', String(opts.writes));
  if (opts.vcpus !== undefined) a.push('--vcpus', String(opts.vcpus));
  if (opts.port !== undefined) a.push('--port', String(opts.port));
  if (opts.holdMs !== undefined) a.push('--hold-ms', String(opts.holdMs));
  if (opts.nestedState) a.push('--nested-state');
  return [...a, ...(opts.args ?? [])];
}

/** Calls onLine for each complete stdout line. */
function lines(proc: ChildProcess, onLine: (line: string) => void): void {
  let buf = '';
  proc.stdout!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
}

/** Runs a guest to completion; rejects with kvm-guest's stderr line if it fails. */
export async function runGuest(opts: GuestOptions = {}, timeoutMs = 60_000): Promise<GuestResult> {
  const proc = spawn(KVM_GUEST, guestArgs(opts), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let result: GuestResult | undefined;
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  lines(proc, (l) => (result = JSON.parse(l) as GuestResult));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    proc.on('error', reject);
    proc.on('close', (c) => resolve(c));
  }).finally(() => clearTimeout(timer));
  if (code !== 0 || !result) throw new Error(`kvm-guest exited ${code}: ${stderr.trim() || 'no result line'}`);
  return result;
}

/** Starts a guest that waits for go(); resolves once its VM and vCPU threads exist. */
export async function startGuest(opts: GuestOptions = {}, readyTimeoutMs = 10_000): Promise<GuestHandle> {
  const proc = spawn(KVM_GUEST, [...guestArgs(opts), '--wait-start'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  // Writing go() to a guest that already died must not crash the test process.
  proc.stdin!.on('error', () => {});

  const exited = new Promise<number | null>((resolve) => proc.on('close', (c) => resolve(c)));
  let onReady!: () => void;
  let onResult!: (r: GuestResult) => void;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  const gotResult = new Promise<GuestResult>((resolve) => (onResult = resolve));
  lines(proc, (l) => {
    const msg = JSON.parse(l) as GuestResult & { ready?: boolean };
    if (msg.ready) onReady();
    else onResult(msg);
  });
  const fail = (what: string) => exited.then((c) => Promise.reject(new Error(`kvm-guest ${what} (exit ${c}): ${stderr.trim()}`)));
  const result = Promise.race([gotResult, fail('exited without a result')]);
  result.catch(() => {}); // a killed guest has no result; only a caller that awaits it sees the error

  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      ready,
      fail('exited before it was ready'),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('kvm-guest not ready in time')), readyTimeoutMs))),
    ]);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  } finally {
    clearTimeout(timer);
  }

  return {
    pid: proc.pid!,
    go: () => {
      proc.stdin!.end('g');
    },
    result,
    exited,
    kill: async (signal: NodeJS.Signals = 'SIGKILL') => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}
