// Checks that turn a missing privilege or kernel feature into one clear line (exit 2)
// before libbpf has a chance to print a wall of errors.
import * as fs from 'node:fs';

// include/uapi/linux/capability.h
const CAP = { SYS_ADMIN: 21, PERFMON: 38, BPF: 39 } as const;

export function effectiveCaps(status = fs.readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

const has = (caps: bigint, bit: number): boolean => ((caps >> BigInt(bit)) & 1n) === 1n;

/** undefined when privileged enough to load and attach tracing programs. */
export function missingCapability(caps = effectiveCaps()): string | undefined {
  if (has(caps, CAP.SYS_ADMIN)) return undefined;
  // Since v5.8 CAP_BPF + CAP_PERFMON suffice for tracing programs (kernel/bpf/syscall.c).
  if (!has(caps, CAP.BPF)) return 'CAP_BPF (or CAP_SYS_ADMIN)';
  if (!has(caps, CAP.PERFMON)) return 'CAP_PERFMON (or CAP_SYS_ADMIN)';
  return undefined;
}

export function btfProblem(btfPath?: string): string | undefined {
  if (btfPath) {
    return fs.existsSync(btfPath) ? undefined : `BTF file ${btfPath} (config bpf.btfPath) does not exist`;
  }
  return fs.existsSync('/sys/kernel/btf/vmlinux')
    ? undefined
    : 'kernel has no BTF (/sys/kernel/btf/vmlinux missing: CONFIG_DEBUG_INFO_BTF off); set bpf.btfPath to an external BTF file';
}
