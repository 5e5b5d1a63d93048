// The hvwatch.kvm alert group (alerts/hvwatch.rules.yml, alerts/README.md): the alerts of this
// family's metrics. alerts/rules.ts gathers every registered family's
// group (families/<name>/alerts.ts) in registry order.
import { M } from '../../agent/catalog.js';
import { EVENT_WINDOW, increased, rate, type AlertRule, type RuleGroup } from '../../alerts/lib.js';
import { RECORDING } from '../../alerts/recording.js';
import { by, series, TARGET_LABELS } from '../../alerts/promql.js';

/** A reflected exit that L1 handles in KVM takes microseconds; milliseconds at p99 means L1 goes to its userspace or is starved. */
export const NESTED_L1_P99_SECONDS = 0.002;
/** Label value of hvwatch_kvm_nested_state_saves_total{flag} for KVM_STATE_NESTED_RUN_PENDING. */
export const FLAG_RUN_PENDING = 'run_pending';

const rules: AlertRule[] = [
  {
    alert: 'HvwatchNestedL1HandlingSlow',
    expr: `${RECORDING.nestedL1P99.record} > ${NESTED_L1_P99_SECONDS}`,
    for: '10m',
    severity: 'warning',
    summary: 'L1 takes {{ $value | humanizeDuration }} (p99) to handle reflected exits in VM {{ $labels.vm }} on {{ $labels.instance }}',
    description: `The L1 hypervisor of VM {{ $labels.vm }} on {{ $labels.instance }} has taken more than ${NESTED_L1_P99_SECONDS * 1000} ms at p99 to handle the exits its L2 guests reflected to it, for 10 minutes. Its L2 guests run that much slower.`,
    runbook: {
      meaning: `The p99 of \`${M.kvmNestedL1Handling.name}\` (kvm_nested_vmexit_inject to the vCPU's next nested VM-entry) for one VM stayed above ${NESTED_L1_P99_SECONDS * 1000} ms.`,
      check: [
        'The KVM dashboard for that VM: "Nested exits: L0 vs L1" and "L1 handling time" by reason. Which reasons are slow?',
        "I/O reasons (IO_INSTRUCTION, EPT_VIOLATION/NPF) go to L1's userspace VMM: slow there is L1's device model.",
        "The L1 VM's own vCPU steal time: an overcommitted host starves L1.",
      ],
      act: ['Host overcommit: give the L1 VM dedicated vCPUs or move it.', 'Guest-side device emulation: tell the VM owner; nothing on the host will fix it.'],
    },
  },
  {
    alert: 'HvwatchNestedVmentryFailures',
    expr: `sum ${by([...TARGET_LABELS, 'vm'], M.kvmNestedVmenterFailures)} (${rate(series(M.kvmNestedVmenterFailures))}) > 0`,
    for: '5m',
    severity: 'warning',
    summary: 'nested VM-entries keep failing in VM {{ $labels.vm }} on {{ $labels.instance }}',
    description:
      "Nested VM-entries (L1 running L2) of VM {{ $labels.vm }} on {{ $labels.instance }} have been failing KVM's consistency checks for 5 minutes ({{ $value | humanize }}/s).",
    runbook: {
      meaning: `\`${M.kvmNestedVmenterFailures.name}\` kept rising for one VM: KVM refused L1's VMLAUNCH/VMRESUME/VMRUN of an L2 guest for a failed consistency check.`,
      check: [
        `\`${M.kvmNestedVmenterFailures.name}{vm="<vm>"}\` by \`message\`: the kernel's reason (e.g. an invalid control field).`,
        'Whether the VM was just migrated or restored: a nested state restored from another kernel version can be inconsistent.',
      ],
      act: [
        'A VM that was migrated/restored: restart its L2 guests; report the host kernel pair to the kernel team.',
        'Otherwise the L1 hypervisor is buggy or probing: tell the VM owner.',
      ],
    },
  },
  {
    alert: 'HvwatchNestedStateSaveRunPending',
    expr: increased(M.kvmNestedStateSaves, EVENT_WINDOW, { flag: FLAG_RUN_PENDING }),
    for: '0m',
    severity: 'warning',
    summary: 'nested state of VM {{ $labels.vm }} was saved with RUN_PENDING on {{ $labels.instance }}',
    description:
      'KVM_GET_NESTED_STATE on VM {{ $labels.vm }} on {{ $labels.instance }} saved a vCPU with a nested VM-entry still pending (KVM_STATE_NESTED_RUN_PENDING). If the restoring side ignores that flag, the L2 guest resumes with mixed L1/L2 state.',
    runbook: {
      meaning: `\`${M.kvmNestedStateSaves.name}{flag="${FLAG_RUN_PENDING}"}\` rose: a save (live migration, snapshot) caught a vCPU between L1's VM-entry instruction and the entry itself.`,
      check: [
        'Which operation saved it: a migration or snapshot of that VM at that time (VMM logs).',
        'Whether the destination kernel and VMM restore KVM_STATE_NESTED_RUN_PENDING (KVM_CAP_NESTED_STATE, Linux >= 4.19 with the nested_run_pending fix).',
      ],
      act: [
        'If the destination does not restore the flag: watch the L2 guests of that VM for crashes, and restart them if they misbehave.',
        'Make the VMM force a VM-exit before saving, or pin migrations of nested VMs to kernels with the fix.',
      ],
    },
  },
];

export const group: RuleGroup<AlertRule> = { name: 'hvwatch.kvm', rules };
