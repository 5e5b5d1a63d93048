// kvm_irq family (seed 003): interrupt injections per VM and path, the time from a local
// APIC's acceptance to the injection into the vCPU, irqchip/device teardown steps, and
// injections that reach a VM after its teardown began (kvm_irq.bpf.c explains how
// an injection is tied to its VM, and the generation that keeps a reused struct kvm
// address from matching).
import { existsSync } from 'node:fs';
import { KVM_IRQ_METRICS as M } from './metrics.js';
import { inStateTiers, type Decoder, type EnumDecl, type FamilySpec, type ProbeSpec, type Services } from '../../agent/model/family.js';
import { enumLabels, labelsOf } from '../../agent/aggregate/enums.js';
import type { Config } from '../../agent/config.js';
import type { Condition } from '../../agent/model/alert.js';

export const name = 'kvm_irq';
export { KVM_IRQ_METRICS as metrics } from './metrics.js';
const family = name;

/** enum irq_path in kvm_irq.bpf.c, as label values (the kvm:kvm_<path> tracepoints) and the
 * suffixes of struct irq_vm_stats' inj_/after_ fields. */
const PATHS = {
  enum: 'irq_path',
  labels: { P_SET_IRQ: 'set_irq', P_MSI: 'msi', P_IOAPIC: 'ioapic', P_PIC: 'pic', P_APIC_ACCEPT: 'apic_accept', P_INJ_VIRQ: 'inj_virq' },
} as const satisfies EnumDecl;
/** enum td_kind (its td_ fields). */
const TEARDOWNS = {
  enum: 'td_kind',
  labels: { TD_DEVICE_RELEASE: 'device_release', TD_DESTROY_DEVICES: 'destroy_devices', TD_FREE_IRQ_ROUTING: 'free_irq_routing' },
} as const satisfies EnumDecl;
/** enum irq_counter: what the BPF side did not count as asked, and why (hvwatch_kvm_irq_state_events_total). */
const COUNTERS = {
  enum: 'irq_counter',
  labels: { C_REAPED: 'reaped', C_STALE_CONTEXT: 'stale_context', C_UNPAIRED: 'unpaired', C_NO_VM: 'no_vm' },
} as const satisfies EnumDecl;
export const IRQ_PATHS = labelsOf(PATHS);
export const TEARDOWN_KINDS = labelsOf(TEARDOWNS);
export const IRQ_COUNTERS = labelsOf(COUNTERS);

/** Raised in process too (agent/alerting), and the rule of the same name (families/kvm_irq/alerts.ts). */
export const IRQ_AFTER_TEARDOWN: Condition = {
  name: 'HvwatchKvmIrqAfterTeardown',
  severity: 'critical',
  metric: M.kvmIrqAfterTeardown,
  kind: 'increase',
  summary: (l) => `interrupt injected into VM ${l.vm} after its irqchip teardown began, on ${l.instance}`,
  description: (l) =>
    `hvwatch saw an interrupt injection (${l.path}) into VM ${l.vm} on ${l.instance} after that VM's irqchip or device teardown had begun. ` +
    'An injection that reaches a destroyed irqchip is a use-after-free in the host kernel.',
};

/** The conditions the agent evaluates in process for this family. */
export const conditions: readonly Condition[] = [IRQ_AFTER_TEARDOWN];

// One probe per tracepoint: each exists on its own set of kernels (the PIC, IOAPIC and MSI
// ones on x86 only), so one missing never takes the others down. tp_btf first (no record
// is formatted for it); parameter names are checked only where the program reads them.
// Signatures and their history: the comment above the attach points in kvm_irq.bpf.c.
function tracepointProbe(name: string, tp: string, description: string, params?: string[]): ProbeSpec {
  return {
    name,
    family,
    description,
    // Each reads the thread's ioctl context that kvm_irq_ioctl writes: the same tier for all.
    candidates: inStateTiers([
      { attach: 'tp_btf', target: tp, programs: [`btf_${tp}`], ...(params ? { params: { [tp]: params } } : {}) },
      { attach: 'tracepoint', target: `kvm/${tp}`, programs: [`tp_${tp}`] },
    ]),
  };
}

// Optional: a teardown function the compiler inlined (kvm_destroy_devices is, in 6.1 and
// 6.12 Debian builds: no BTF entry, no symbol) is absent from the kernel, not a failure.
function functionProbe(name: string, fn: string, description: string): ProbeSpec {
  return {
    name,
    family,
    description,
    optional: true,
    candidates: [
      { attach: 'fentry', target: fn, programs: [`fentry_${fn}`] },
      { attach: 'kprobe', target: fn, programs: [`kprobe_${fn}`] },
    ],
  };
}

const probes: ProbeSpec[] = [
  tracepointProbe('kvm_irq_set_irq', 'kvm_set_irq', 'Interrupt requests on a GSI (KVM_IRQ_LINE, irqfd, in-kernel devices), per VM'),
  tracepointProbe('kvm_irq_msi', 'kvm_msi_set_irq', 'MSIs signalled to the VM (KVM_SIGNAL_MSI, MSI routes), per VM'),
  tracepointProbe('kvm_irq_ioapic', 'kvm_ioapic_set_irq', 'Pin changes seen by the in-kernel IOAPIC, per VM'),
  tracepointProbe('kvm_irq_pic', 'kvm_pic_set_irq', 'Pin changes seen by the in-kernel 8259 PIC, per VM'),
  tracepointProbe('kvm_irq_apic_accept', 'kvm_apic_accept_irq', "Interrupts accepted by a vCPU's local APIC; opens the delivery latency", [
    'apicid',
    'dm',
    'tm',
    'vec',
  ]),
  tracepointProbe('kvm_irq_inj_virq', 'kvm_inj_virq', 'Interrupts injected into a vCPU; closes the delivery latency', ['vector', 'soft', 'reinjected']),
  {
    name: 'kvm_irq_ioctl',
    family,
    description: 'The VM behind KVM_IRQ_LINE / KVM_IRQ_LINE_STATUS / KVM_SIGNAL_MSI, and each KVM_CREATE_VM (a new generation for its struct kvm)',
    // Both hooks are shared with the kvm family's kvm_ioctl: one program runs per hook.
    candidates: inStateTiers([
      {
        attach: 'tracepoint',
        target: 'syscalls/sys_enter_ioctl',
        programs: ['tp_irq_sys_enter_ioctl', 'tp_irq_sys_exit_ioctl'],
        targets: { tp_irq_sys_exit_ioctl: 'syscalls/sys_exit_ioctl' },
      },
    ]),
  },
  functionProbe(
    'kvm_irq_device_release',
    'kvm_device_release',
    "A KVM device fd's last close (an irqchip device goes away while its VM lives): teardown begins",
  ),
  functionProbe('kvm_irq_destroy_devices', 'kvm_destroy_devices', "The VM's devices destroyed in kvm_destroy_vm(): teardown begins"),
  functionProbe('kvm_irq_free_irq_routing', 'kvm_free_irq_routing', "The VM's irq routing freed in kvm_destroy_vm(): teardown begins"),
];

/** Injections with no VM known (kernel threads, interrupt context) carry tgid 0. */
export const UNKNOWN_VM = 'unknown';

export function create(_config: Config, services: Services): FamilySpec {
  const vmDecoder = services.vms.decoder;
  const irqVmDecoder: Decoder = (raw, ctx, field) => (raw === 0n ? UNKNOWN_VM : vmDecoder(raw, ctx, field));
  return {
    name: family,
    object: 'kvm_irq.bpf.o',
    probes,
    sizes: { irq_vms: 'perObject' },
    maps: [
      {
        map: 'irq_vms',
        labels: [{ label: 'vm', field: 'tgid', decoder: irqVmDecoder }],
        fields: [
          ...IRQ_PATHS.map((path) => ({ field: `inj_${path}`, metric: M.kvmIrqInjections, labels: { path } })),
          ...IRQ_PATHS.map((path) => ({ field: `after_${path}`, metric: M.kvmIrqAfterTeardown, labels: { path } })),
          ...TEARDOWN_KINDS.map((kind) => ({ field: `td_${kind}`, metric: M.kvmIrqTeardowns, labels: { kind } })),
          { field: 'delivery_slots', metric: M.kvmIrqDelivery, sumField: 'delivery_sum_ns' },
        ],
      },
    ],
    watchMaps: ['hv_vm_seen', 'irq_vm_state', 'irq_ctx', 'irq_deliv'],
    enums: [PATHS, TEARDOWNS, COUNTERS],
    present: () => (existsSync('/sys/module/kvm') ? undefined : 'kvm is not loaded (no /sys/module/kvm)'),
    prepare: (ctx, fam) => services.vms.learn(fam, ctx), // names at first sight (agent/services/vm-labels.ts)
    collect(_ctx, store, fam) {
      const c = fam.maps.get('irq_counters');
      if (c) for (const [i, kind] of enumLabels(fam.btf, COUNTERS).byValue) store.set(M.kvmIrqStateEvents, { kind }, c.counter(i));
    },
  };
}
