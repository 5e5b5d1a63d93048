// What this kernel offers, asked before any load so a candidate that cannot work is
// skipped with a precise reason instead of a generic load error.
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { Btf, btfNamesWithPrefix } from '../bpf/btf.js';
import type { Candidate, KernelFacts } from './model/family.js';
import { KernelSymbols } from './symbols.js';

export const TRACEFS_CANDIDATES = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'];

export function tracefsRoot(): string | undefined {
  return TRACEFS_CANDIDATES.find((p) => fs.existsSync(`${p}/events`));
}

/** libbpf resolves tracepoint ids through tracefs; mount it when the host has not. */
export function ensureTracefs(): string | undefined {
  const have = tracefsRoot();
  if (have) return have;
  try {
    execFileSync('mount', ['-t', 'tracefs', 'nodev', '/sys/kernel/tracing'], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  return tracefsRoot();
}

function kprobesAvailable(): boolean {
  const root = tracefsRoot();
  return fs.existsSync('/sys/bus/event_source/devices/kprobe') || (root !== undefined && fs.existsSync(`${root}/kprobe_events`));
}

export const VMLINUX_BTF = '/sys/kernel/btf/vmlinux';

/** How many arguments this kernel's BPF trampoline (fentry/fexit) passes, where it is known
 * to be fewer than a function may have: x86-64 refuses more than 6 before 6.6
 * (arch/x86/net/bpf_jit_comp.c v6.1 arch_prepare_bpf_trampoline: "if (nr_regs > 6) return
 * -ENOTSUPP"), and takes MAX_BPF_FUNC_ARGS (12) from 6.6 (v6.12 same file). */
export function trampolineMaxArgs(arch: string, atLeast66: boolean): number | undefined {
  if (arch !== 'x64') return undefined;
  return atLeast66 ? 12 : 6;
}

/** Function symbols (types t, T, w, W) starting with `prefix` in /proc/kallsyms, found in
 * one scan of the file without building the symbol table (agent/symbols.ts keeps that,
 * some 100,000 names, for the stacks it symbolizes). Lines are "addr type name" with
 * "\t[module]" after module symbols (kernel/kallsyms.c s_show). */
export function kallsymsWithPrefix(prefix: string, file = '/proc/kallsyms'): Set<string> {
  let b: Buffer;
  try {
    b = fs.readFileSync(file);
  } catch {
    return new Set();
  }
  return kallsymsPrefixIn(b, prefix);
}

/** kallsymsWithPrefix over the file's bytes, read once (agent/symbols.ts KernelSymbols.text). */
export function kallsymsPrefixIn(b: Buffer, prefix: string): Set<string> {
  const out = new Set<string>();
  const needle = Buffer.from(` ${prefix}`, 'latin1');
  for (let at = b.indexOf(needle); at >= 0; at = b.indexOf(needle, at + 1)) {
    const type = b[at - 1];
    if (b[at - 2] !== 0x20 || (type !== 0x74 && type !== 0x54 && type !== 0x77 && type !== 0x57)) continue;
    let stop = at + 1;
    while (stop < b.length && b[stop] !== 0x0a && b[stop] !== 0x09 && b[stop] !== 0x20) stop++;
    out.add(b.toString('latin1', at + 1, stop));
  }
  return out;
}

function loadedModulesWithBtf(): string[] {
  try {
    return fs.readdirSync('/sys/kernel/btf').filter((n) => n !== 'vmlinux');
  } catch {
    return [];
  }
}

export function kernelRelease(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** Whether a kernel release (the running one by default) is at least major.minor. */
export function kernelAtLeast(major: number, minor: number, release = kernelRelease()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (!m) return false;
  const [ma, mi] = [Number(m[1]), Number(m[2])];
  return ma > major || (ma === major && mi >= minor);
}

/**
 * This kernel's facts for one agent (services.kernel, agent/services/index.ts): its release,
 * the BTF the prechecks read (vmlinux, or config bpf.btfPath on kernels without their own,
 * plus every loaded module's split BTF: kvm, kvm_amd, ...), and the one /proc/kallsyms read
 * every family's detection shares (symbols).
 */
export class Kernel implements KernelFacts {
  readonly release = kernelRelease();
  private readonly vmlinuxPath: string;

  constructor(
    readonly symbols: KernelSymbols = new KernelSymbols(),
    btfPath?: string,
  ) {
    this.vmlinuxPath = btfPath ?? VMLINUX_BTF;
  }

  atLeast(major: number, minor: number): boolean {
    return kernelAtLeast(major, minor, this.release);
  }

  /** vmlinux first, then each module's BTF, parsed only when the ones before did not answer. */
  private *btfs(): Generator<Btf | undefined> {
    yield Btf.vmlinux(this.vmlinuxPath);
    for (const m of loadedModulesWithBtf()) yield Btf.module(m);
  }

  private btfHasFunc(name: string): boolean {
    for (const b of this.btfs()) if (b?.hasFunc(name)) return true;
    return false;
  }

  /** The parameter count of a kernel function, from the BTF that has it (undefined if none). */
  private btfFuncArgs(name: string): number | undefined {
    for (const btf of this.btfs()) {
      const f = btf?.find(name, 'func');
      if (f?.type) return btf!.resolve(f.type).params?.length;
    }
    return undefined;
  }

  private btfHasTracepoint(name: string): boolean {
    const t = `btf_trace_${name}`;
    for (const b of this.btfs()) if (b?.find(t, 'typedef')) return true;
    return false;
  }

  /** Parameter names of a raw tracepoint, from vmlinux or the module that defines it (kvm). */
  tracepointParams(name: string): string[] | undefined {
    for (const btf of this.btfs()) {
      const p = btf?.tracepointParams(name);
      if (p) return p.map((x) => x.name);
    }
    return undefined;
  }

  private paramsMismatch(tp: string, want: readonly string[]): string | undefined {
    const have = this.tracepointParams(tp);
    if (!have) return undefined; // absent: the existence check says so
    // Unnamed parameters (no __probestub_ in BTF) cannot be checked: let the load decide.
    if (have.every((n) => n === '')) return undefined;
    const ok = want.every((n, i) => have[i] === n);
    return ok ? undefined : `tracepoint ${tp} has parameters (${have.join(', ')}); this program expects (${want.join(', ')}, ...)`;
  }

  /** Every kernel BTF file there is: vmlinux (bpf.btfPath if set) and each loaded module's
   * (the files themselves: callers that only need names scan them without a parse). */
  btfFiles(): string[] {
    return [this.vmlinuxPath, ...loadedModulesWithBtf().map((m) => `/sys/kernel/btf/${m}`)];
  }

  /** Names starting with `prefix` in any kernel BTF's strings (bpf/btf.ts btfNamesWithPrefix);
   * files that are missing or unreadable are skipped. */
  btfNamesWithPrefix(prefix: string): Set<string> {
    const out = new Set<string>();
    for (const file of this.btfFiles()) {
      try {
        for (const n of btfNamesWithPrefix(fs.readFileSync(file), prefix)) out.add(n);
      } catch {
        /* no BTF there, or a module unloading under us */
      }
    }
    return out;
  }

  kallsymsWithPrefix(prefix: string): Set<string> {
    const text = this.symbols.text();
    return text ? kallsymsPrefixIn(text, prefix) : new Set();
  }

  /** undefined if the candidate may work; otherwise why it cannot. */
  precheck(c: Candidate): string | undefined {
    switch (c.attach) {
      case 'fentry':
      case 'fexit': {
        if (!this.btfHasFunc(c.target)) return `function ${c.target} not in kernel BTF`;
        const max = trampolineMaxArgs(process.arch, this.atLeast(6, 6));
        const n = max === undefined ? undefined : this.btfFuncArgs(c.target);
        return n !== undefined && max !== undefined && n > max
          ? `function ${c.target} has ${n} arguments; this kernel's BPF trampoline takes at most ${max} (x86-64 before 6.6)`
          : undefined;
      }
      case 'kprobe':
      case 'kretprobe':
        if (!kprobesAvailable()) return 'kernel has no kprobes (CONFIG_KPROBES off)';
        return this.symbols.has(c.target) ? undefined : `symbol ${c.target} not in /proc/kallsyms`;
      case 'tp_btf':
      case 'raw_tracepoint': {
        if (!this.btfHasTracepoint(c.target)) return `tracepoint ${c.target} not in kernel BTF (no btf_trace_${c.target})`;
        const want = c.params?.[c.target];
        return want ? this.paramsMismatch(c.target, want) : undefined;
      }
      case 'tracepoint': {
        const root = tracefsRoot();
        if (!root) return 'tracefs is not mounted and could not be mounted';
        return fs.existsSync(`${root}/events/${c.target}`) ? undefined : `tracepoint ${c.target} not found in ${root}/events`;
      }
    }
  }
}
