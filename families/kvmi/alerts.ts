// The hvwatch.kvmi alert group (alerts/hvwatch.rules.yml, alerts/README.md): the alerts of this
// family's metrics. alerts/rules.ts gathers every registered family's
// group (families/<name>/alerts.ts) in registry order.
import { M } from '../../agent/catalog.js';
import type { AlertRule, RuleGroup } from '../../alerts/lib.js';
import { RECORDING } from '../../alerts/recording.js';

/**
 * An introspection event is a socket round trip to a local introspection process, which
 * answers in tens to hundreds of microseconds; the vCPU is paused meanwhile (seed 001), so
 * 10 ms at p99 is a guest that visibly stalls.
 */
export const KVMI_REPLY_P99_SECONDS = 0.01;

const rules: AlertRule[] = [
  {
    alert: 'HvwatchKvmiReplySlow',
    expr: `${RECORDING.kvmiReplyP99.record} > ${KVMI_REPLY_P99_SECONDS}`,
    for: '10m',
    severity: 'warning',
    summary: 'introspection replies take {{ $value | humanizeDuration }} (p99) for {{ $labels.event }} events in VM {{ $labels.vm }} on {{ $labels.instance }}',
    description: `The introspection tool has taken more than ${KVMI_REPLY_P99_SECONDS * 1000} ms at p99 to reply to {{ $labels.event }} events of VM {{ $labels.vm }} on {{ $labels.instance }} for 10 minutes. The vCPU is paused until the reply, so the guest stalls for as long.`,
    runbook: {
      meaning: `The p99 of \`${M.kvmiReplyTime.name}\` (kvmi event sent to its reply arriving) for one VM and event type stayed above ${KVMI_REPLY_P99_SECONDS * 1000} ms. KVMI exists only on introspection-enabled kernels (KVMI v7..v12 series); elsewhere this never fires.`,
      check: [
        `The introspection dashboard for that VM: which event types are slow, and whether replies end as \`retry\` or \`crash\` (\`${M.kvmiReplies.name}\` by action).`,
        "The introspection tool's CPU and its own logs on the node: a busy or stuck tool replies late to every VM it watches.",
        `\`${M.kvmiEvents.name}\` rate for the VM: a flood of events (e.g. page-fault or single-step events) queues replies.`,
      ],
      act: [
        'A tool that is overloaded: reduce the events it subscribes to (fewer page-fault/MSR events) or give it CPU.',
        `A tool that hangs: restart it; events pending at its unhook are counted in \`${M.kvmiUnreplied.name}\`.`,
      ],
    },
  },
];

export const group: RuleGroup<AlertRule> = { name: 'hvwatch.kvmi', rules };
