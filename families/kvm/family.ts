// kvm family (seed 000): exits per VM and reason with their handling latency, userspace
// exits and time, I/O and emulation, nested exits split L0/L1 with L1's handling latency,
// nested VM-entry failures, and nested-state save/restore (families/kvm/kvm.bpf.c).
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { KVM_METRICS as M } from './metrics.js';
import { inStateTiers, type Decoder, type EnumDecl, type FamilySpec, type ProbeSpec, type Services } from '../../agent/model/family.js';
import { enumLabels, type EnumLabels } from '../../agent/aggregate/enums.js';
import type { Config } from '../../agent/config.js';
import { ISA, SVM_EXIT_REASONS, VMX_EXIT_REASONS } from './reasons.js';

export const name = 'kvm';
export { KVM_METRICS as metrics } from './metrics.js';
const family = name;

// Parameter names of the raw tracepoints, from btf_trace_<name> (arch/x86/kvm/trace.h,
// include/trace/events/kvm.h). The loader checks them before trying a tp_btf candidate.
const LEGACY_EXIT = ['exit_reason', 'vcpu', 'isa']; // v5.10-v5.15; (vcpu, isa) since v5.16

/* kvm_emulate_insn fires 3x per port write on this host (bench/RESULTS.md, 6.18): for every
 * PIO/MMIO exit it says again what kvm_io says: 3 x 97-123 ns per write, measured under
 * contention, about a fifth of the exit path's in-kernel cost before issue 16. */
const HOT_EMULATE = 'kvm:kvm_emulate_insn fires ~3x per port write, repeating what kvm_io counts; 290-370 ns per write (bench/RESULTS.md)';

const NESTED_PROGRAMS = {
  tp_kvm_nested_vmexit: 'kvm/kvm_nested_vmexit',
  tp_kvm_nested_vmexit_inject: 'kvm/kvm_nested_vmexit_inject',
  tp_kvm_nested_vmenter: 'kvm/kvm_nested_vmenter',
  tp_kvm_nested_intr_vmexit: 'kvm/kvm_nested_intr_vmexit',
  tp_kvm_nested_vmenter_failed: 'kvm/kvm_nested_vmenter_failed',
};

const probes: ProbeSpec[] = [
  {
    name: 'kvm_exit',
    family,
    description: "VM-exits per VM and reason, and the time from each exit to the vCPU's next entry",
    // The pending exit per thread: task storage, else the exit_pending hash.
    candidates: inStateTiers([
      {
        attach: 'tp_btf',
        target: 'kvm_exit',
        programs: ['btf_kvm_exit_legacy', 'btf_kvm_entry'],
        targets: { btf_kvm_entry: 'kvm_entry' },
        params: { kvm_exit: LEGACY_EXIT },
      },
      {
        attach: 'tracepoint',
        target: 'kvm/kvm_exit',
        programs: ['tp_kvm_exit', 'btf_kvm_entry'],
        targets: { btf_kvm_entry: 'kvm_entry' },
      },
      {
        attach: 'tracepoint',
        target: 'kvm/kvm_exit',
        programs: ['tp_kvm_exit', 'tp_kvm_entry'],
        targets: { tp_kvm_entry: 'kvm/kvm_entry' },
      },
    ]),
  },
  {
    name: 'kvm_userspace_exit',
    family,
    description: 'Returns from KVM_RUN to the VMM per VM and KVM_EXIT_* reason',
    // The pending return is closed by kvm_ioctl's KVM_RUN: both keep it in the same tier.
    candidates: inStateTiers([
      { attach: 'tp_btf', target: 'kvm_userspace_exit', programs: ['btf_kvm_userspace_exit'], params: { kvm_userspace_exit: ['reason', 'errno'] } },
      { attach: 'tracepoint', target: 'kvm/kvm_userspace_exit', programs: ['tp_kvm_userspace_exit'] },
    ]),
  },
  {
    name: 'kvm_ioctl',
    family,
    description: "KVM_RUN (ends the VMM's userspace time) and KVM_GET/SET_NESTED_STATE with result, latency and saved flags",
    // Both hooks are shared with kvm_irq_ioctl: one program runs per hook (agent/hook-chain.ts).
    candidates: inStateTiers([
      {
        attach: 'tracepoint',
        target: 'syscalls/sys_enter_ioctl',
        programs: ['tp_sys_enter_ioctl', 'tp_sys_exit_ioctl'],
        targets: { tp_sys_exit_ioctl: 'syscalls/sys_exit_ioctl' },
      },
    ]),
  },
  {
    name: 'kvm_io',
    family,
    description: 'Port I/O and MMIO exits per VM',
    candidates: [
      {
        attach: 'tp_btf',
        target: 'kvm_pio',
        programs: ['btf_kvm_pio', 'btf_kvm_mmio'],
        targets: { btf_kvm_mmio: 'kvm_mmio' },
        params: { kvm_pio: ['rw'], kvm_mmio: ['type'] },
      },
      {
        attach: 'tracepoint',
        target: 'kvm/kvm_pio',
        programs: ['tp_kvm_pio', 'tp_kvm_mmio'],
        targets: { tp_kvm_mmio: 'kvm/kvm_mmio' },
      },
    ],
  },
  {
    name: 'kvm_emulate',
    family,
    hot: HOT_EMULATE,
    description: 'Instructions emulated by KVM per VM, and the ones that failed',
    candidates: [
      { attach: 'tp_btf', target: 'kvm_emulate_insn', programs: ['btf_kvm_emulate_insn'], params: { kvm_emulate_insn: ['vcpu', 'failed'] } },
      { attach: 'tracepoint', target: 'kvm/kvm_emulate_insn', programs: ['tp_kvm_emulate_insn'] },
    ],
  },
  {
    name: 'kvm_nested',
    family,
    description: 'Nested VM-exits handled by L0 or reflected to L1, L1 handling latency, nested VM-entries and their failures',
    // Classic records only: the raw kvm_nested_vmexit arguments carry no reason since v5.16.
    candidates: [{ attach: 'tracepoint', target: 'kvm/kvm_nested_vmexit', programs: Object.keys(NESTED_PROGRAMS), targets: NESTED_PROGRAMS }],
  },
];

/** KVM_EXIT_* in include/uapi/linux/kvm.h (v6.18), by number. */
export const KVM_EXIT_NAMES = [
  'UNKNOWN',
  'EXCEPTION',
  'IO',
  'HYPERCALL',
  'DEBUG',
  'HLT',
  'MMIO',
  'IRQ_WINDOW_OPEN',
  'SHUTDOWN',
  'FAIL_ENTRY',
  'INTR',
  'SET_TPR',
  'TPR_ACCESS',
  'S390_SIEIC',
  'S390_RESET',
  'DCR',
  'NMI',
  'INTERNAL_ERROR',
  'OSI',
  'PAPR_HCALL',
  'S390_UCONTROL',
  'WATCHDOG',
  'S390_TSCH',
  'EPR',
  'SYSTEM_EVENT',
  'S390_STSI',
  'IOAPIC_EOI',
  'HYPERV',
  'ARM_NISV',
  'X86_RDMSR',
  'X86_WRMSR',
  'DIRTY_RING_FULL',
  'AP_RESET_HOLD',
  'X86_BUS_LOCK',
  'XEN',
  'RISCV_SBI',
  'RISCV_CSR',
  'NOTIFY',
  'LOONGARCH_IOCSR',
  'MEMORY_FAULT',
  'TDX',
] as const;
// UEXIT_RESTART / UEXIT_ERROR in kvm.bpf.c: KVM_RUN returned an error, no reason.
const UEXIT_SPECIAL: Record<number, string> = { 0x10000: 'restart', 0x10001: 'error' };

export function exitReasonName(isa: number, reason: number): string {
  // VMX: the low 16 bits are the basic reason; bit 31 marks a failed VM-entry.
  if (isa === 1) {
    const base = VMX_EXIT_REASONS[reason & 0xffff] ?? `vmx_${reason & 0xffff}`;
    return reason & 0x80000000 ? `${base}_FAILED_VMENTRY` : base;
  }
  if (isa === 2) return SVM_EXIT_REASONS[reason >>> 0] ?? `svm_0x${(reason >>> 0).toString(16)}`;
  return `isa${isa}_${reason}`;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(osConstants.errno).map(([k, v]) => [v, k]));

export function errnoName(err: number): string {
  return err === 0 ? 'ok' : (ERRNO_NAMES.get(err) ?? `errno_${err}`);
}

const isaDecoder: Decoder = (raw) => ISA[Number(raw) as 1 | 2] ?? `isa${raw}`;
const reasonDecoder: Decoder = (raw, _ctx, field) => exitReasonName(Number(field('isa')), Number(raw));
const uexitDecoder: Decoder = (raw) => KVM_EXIT_NAMES[Number(raw)] ?? UEXIT_SPECIAL[Number(raw)] ?? `exit_${raw}`;
const errDecoder: Decoder = (raw) => errnoName(Number(raw));

/** enum nstate_op in kvm.bpf.c: KVM_GET/SET_NESTED_STATE (the op label). */
const NSTATE_OPS = { enum: 'nstate_op', labels: { OP_GET: 'get', OP_SET: 'set' } } as const satisfies EnumDecl;
/** enum unpaired in kvm.bpf.c (the pairing label). */
const UNPAIRED = {
  enum: 'unpaired',
  labels: { UNPAIRED_EXIT_ENTRY: 'exit_entry', UNPAIRED_NESTED_L1: 'nested_l1', UNPAIRED_USERSPACE: 'userspace' },
} as const satisfies EnumDecl;

export function create(_config: Config, services: Services): FamilySpec {
  // The consistency-check messages the BPF side interned, by hash (bounded: 512).
  const messages = new Map<bigint, string>();
  const messageDecoder: Decoder = (raw) => messages.get(raw) ?? `message_${raw.toString(16)}`;
  const VM = { label: 'vm', field: 'tgid', decoder: services.vms.decoder };
  // Op names by the object's enum, resolved by prepare before the maps are decoded.
  let ops: EnumLabels | undefined;
  const opDecoder: Decoder = (raw) => ops?.label(raw, `op${raw}`) ?? `op${raw}`;
  return {
    name: family,
    object: 'kvm.bpf.o',
    probes,
    sizes: { kvm_exits: 'perObject', kvm_uexits: 'perObject', kvm_nested: 'perObject', kvm_vcpu_exits: 'perObject' },
    maps: [
      {
        map: 'kvm_exits',
        labels: [VM, { label: 'isa', field: 'isa', decoder: isaDecoder }, { label: 'reason', field: 'reason', decoder: reasonDecoder }],
        fields: [
          { field: 'exits', metric: M.kvmExits },
          { field: 'handling_slots', metric: M.kvmExitHandling, sumField: 'handling_sum_ns' },
        ],
      },
      {
        map: 'kvm_vcpu_exits',
        labels: [VM, { label: 'vcpu', field: 'vcpu_id', decoder: 'number' }],
        fields: [{ field: 'value', metric: M.kvmVcpuExits }],
      },
      {
        map: 'kvm_uexits',
        labels: [VM, { label: 'reason', field: 'reason', decoder: uexitDecoder }],
        fields: [
          { field: 'exits', metric: M.kvmUserspaceExits },
          { field: 'user_slots', metric: M.kvmUserspaceTime, sumField: 'user_sum_ns' },
        ],
      },
      {
        map: 'kvm_vms',
        labels: [VM],
        fields: [
          { field: 'pio_in', metric: M.kvmPio, labels: { direction: 'in' } },
          { field: 'pio_out', metric: M.kvmPio, labels: { direction: 'out' } },
          { field: 'mmio_unsat_read', metric: M.kvmMmio, labels: { type: 'unsatisfied_read' } },
          { field: 'mmio_read', metric: M.kvmMmio, labels: { type: 'read' } },
          { field: 'mmio_write', metric: M.kvmMmio, labels: { type: 'write' } },
          { field: 'emulated_ok', metric: M.kvmEmulated, labels: { result: 'ok' } },
          { field: 'emulated_failed', metric: M.kvmEmulated, labels: { result: 'failed' } },
          { field: 'nested_vmenters', metric: M.kvmNestedVmenters },
          { field: 'nested_intr_exits', metric: M.kvmNestedIntrExits },
        ],
      },
      {
        map: 'kvm_nested',
        labels: [VM, { label: 'isa', field: 'isa', decoder: isaDecoder }, { label: 'reason', field: 'reason', decoder: reasonDecoder }],
        fields: [
          { field: 'l0', metric: M.kvmNestedExits, labels: { handler: 'l0' } },
          { field: 'l1', metric: M.kvmNestedExits, labels: { handler: 'l1' } },
          { field: 'l1_slots', metric: M.kvmNestedL1Handling, sumField: 'l1_sum_ns' },
        ],
      },
      {
        map: 'kvm_vmenter_failures',
        labels: [VM, { label: 'message', field: 'msg_hash', decoder: messageDecoder }],
        fields: [{ field: 'value', metric: M.kvmNestedVmenterFailures }],
      },
      {
        map: 'kvm_nstate',
        labels: [VM, { label: 'op', field: 'op', decoder: opDecoder }, { label: 'result', field: 'err', decoder: errDecoder }],
        fields: [
          { field: 'ops', metric: M.kvmNestedStateOps },
          { field: 'slots', metric: M.kvmNestedStateOpTime, sumField: 'sum_ns' },
          { field: 'saves_guest_mode', metric: M.kvmNestedStateSaves, labels: { flag: 'guest_mode' } },
          { field: 'saves_run_pending', metric: M.kvmNestedStateSaves, labels: { flag: 'run_pending' } },
        ],
      },
    ],
    watchMaps: ['hv_vm_seen', 'exit_pending', 'nested_pending', 'user_pending'],
    enums: [NSTATE_OPS, UNPAIRED],
    // /sys/module/kvm exists when kvm is loaded or built in. Probes are attached at start:
    // an agent started before `modprobe kvm` needs a restart to see VMs.
    present: () => (existsSync('/sys/module/kvm') ? undefined : 'kvm is not loaded (no /sys/module/kvm)'),
    setup(fam, cfg) {
      const k = Buffer.alloc(4);
      const v = Buffer.alloc(4);
      v.writeUInt32LE(cfg.kvm.vcpuLabel ? 1 : 0);
      fam.maps.get('kvm_cfg')!.update(k, v);
    },
    prepare(ctx, fam) {
      services.vms.learn(fam, ctx); // names at first sight (agent/services/vm-labels.ts)
      ops = enumLabels(fam.btf, NSTATE_OPS);
      for (const [k, v] of fam.maps.get('vmenter_msgs')?.entries() ?? []) {
        const h = k.readBigUInt64LE(0);
        if (!messages.has(h)) messages.set(h, v.toString('latin1', 0, Math.max(0, v.indexOf(0))).replace(/[^\x20-\x7e]/g, '?'));
      }
    },
    collect(_ctx, store, fam) {
      const un = fam.maps.get('unpaired');
      if (un) for (const [i, pairing] of enumLabels(fam.btf, UNPAIRED).byValue) store.set(M.kvmUnpaired, { pairing }, un.counter(i));
    },
  };
}
