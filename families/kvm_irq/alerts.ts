// The hvwatch.irq alert group (alerts/hvwatch.rules.yml, alerts/README.md): the alerts of this
// family's metrics. alerts/rules.ts gathers every registered family's
// group (families/<name>/alerts.ts) in registry order.
import { M } from '../../agent/catalog.js';
import { IRQ_AFTER_TEARDOWN } from './family.js';
import { EVENT_WINDOW, increased, shared, type AlertRule, type RuleGroup } from '../../alerts/lib.js';

const rules: AlertRule[] = [
  shared(IRQ_AFTER_TEARDOWN, {
    expr: increased(M.kvmIrqAfterTeardown, EVENT_WINDOW),
    for: '0m',
    runbook: {
      meaning:
        `\`${M.kvmIrqAfterTeardown.name}\` rose: an interrupt was injected (KVM_IRQ_LINE, MSI, irqfd, or an APIC path) into a VM after its irqchip or device teardown began. ` +
        'This is the race the probe exists for: the injection reached an irqchip already freed. It needs the function-tier teardown probes (fentry/kprobe), so it cannot fire on kernels without them.',
      check: [
        'The agent log on the node and `hvwatch_kvm_irq_teardowns_total` for that VM: which teardown step (device_release, destroy_devices, free_irq_routing) came first.',
        'The VMM of that VM: was it being destroyed, hot-unplugging a device, or restarting? Which thread still injected (`path` label)?',
        '`dmesg` on the node for KASAN or general-protection reports in the irqchip code.',
      ],
      act: [
        'Treat the node as at risk of memory corruption: migrate its remaining VMs and reboot it if dmesg shows a fault.',
        'Report the kernel version, the path and the VMM to the kernel and VMM teams: the injection path needs RCU (or the VM fd reference) held across the whole injection.',
      ],
    },
  }),
];

export const group: RuleGroup<AlertRule> = { name: 'hvwatch.irq', rules };
