// The kvm_irq family's metrics: interrupt injection and irqchip teardown. agent/catalog.ts gathers every
// registered family's block into the one catalog; docs/metrics.md is generated from it.
import { def, hist, NS, type MetricDef } from '../../agent/model/metric.js';

export const KVM_IRQ_METRICS = {
  kvmIrqInjections: def(
    'kvm_irq',
    'hvwatch_kvm_irq_injections_total',
    'counter',
    ['vm', 'path'],
    'Interrupt injections per VM and path (set_irq, msi, ioapic, pic, apic_accept, inj_virq: the kvm:kvm_<path> tracepoints).',
  ),
  kvmIrqDelivery: hist(
    'kvm_irq',
    'hvwatch_kvm_irq_delivery_seconds',
    ['vm'],
    "Time from an interrupt's acceptance by a vCPU's local APIC (kvm_apic_accept_irq) to its injection into that vCPU (kvm_inj_virq), where the two pair by vector.",
    'seconds',
    NS(8, 34),
  ),
  kvmIrqTeardowns: def(
    'kvm_irq',
    'hvwatch_kvm_irq_teardowns_total',
    'counter',
    ['vm', 'kind'],
    'Irqchip and device teardown steps begun per VM (kind: device_release, destroy_devices, free_irq_routing).',
  ),
  kvmIrqAfterTeardown: def(
    'kvm_irq',
    'hvwatch_kvm_irq_after_teardown_total',
    'counter',
    ['vm', 'path'],
    'Interrupt injections on a VM after its irqchip or device teardown began: such an injection can reach a destroyed irqchip.',
  ),
  kvmIrqStateEvents: def(
    'kvm_irq',
    'hvwatch_kvm_irq_state_events_total',
    'counter',
    ['kind'],
    'Interrupt-probe state the BPF side could not use as asked, by kind: reaped (a destroyed VM\'s state dropped when its address came back, or replaced at KVM_CREATE_VM), stale_context (an injection whose ioctl saw an older generation of its VM), unpaired (kvm_inj_virq with no acceptance recorded for its vCPU and vector), no_vm (an injection outside any VM\'s ioctl: counted under vm="unknown").',
  ),
} as const satisfies Record<string, MetricDef>;
