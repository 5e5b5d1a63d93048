// The kvmi family's metrics: VM introspection events and commands (KVMI v7..v12 kernels only). agent/catalog.ts gathers every
// registered family's block into the one catalog; docs/metrics.md is generated from it.
import { def, hist, NS, type MetricDef } from '../../agent/model/metric.js';

export const KVMI_METRICS = {
  kvmiPresent: def(
    'kvmi',
    'hvwatch_kvmi_present',
    'gauge',
    [],
    '1 if the running kernel has KVM introspection (KVMI) functions in its BTF or kallsyms, 0 if not (the kvmi probes are then "not present").',
  ),
  kvmiEvents: def(
    'kvmi',
    'hvwatch_kvmi_events_total',
    'counter',
    ['vm', 'event'],
    'Introspection events sent to the introspection tool (kvmi_send_vcpu_event) per VM and event type.',
  ),
  kvmiReplyTime: hist(
    'kvmi',
    'hvwatch_kvmi_reply_seconds',
    ['vm', 'event'],
    'Time from sending an introspection event to its reply: the vCPU is paused for all of it.',
    'seconds',
    NS(8, 36),
  ),
  kvmiReplies: def(
    'kvmi',
    'hvwatch_kvmi_replies_total',
    'counter',
    ['vm', 'event', 'action'],
    "Replies to introspection events per VM, event type and reply action (continue, retry, crash, or the raw number; unreadable if the kernel's reply could not be read).",
  ),
  kvmiUnreplied: def(
    'kvmi',
    'hvwatch_kvmi_events_unreplied_total',
    'counter',
    ['vm', 'event'],
    'Introspection events that got no reply: still waiting when the introspection tool unhooked, or its connection failed (the vCPU then continues).',
  ),
  kvmiUnhooks: def('kvmi', 'hvwatch_kvmi_unhooks_total', 'counter', ['vm'], 'Unhook requests sent to the introspection tool (kvmi_msg_send_unhook) per VM.'),
  kvmiCommands: def(
    'kvmi',
    'hvwatch_kvmi_commands_total',
    'counter',
    ['vm', 'command', 'result'],
    'Introspection commands handled per VM, command id and result ("ok" or the KVM error name, e.g. KVM_EINVAL).',
  ),
  kvmiCommandTime: hist(
    'kvmi',
    'hvwatch_kvmi_command_seconds',
    ['vm', 'command'],
    'Time KVM took to handle one introspection command, per VM and command id.',
    'seconds',
    NS(6, 34),
  ),
  kvmiUnpaired: def(
    'kvmi',
    'hvwatch_kvmi_unpaired_total',
    'counter',
    ['pairing'],
    "Introspection events or commands whose latency could not be paired (event_stale: a vCPU sent again before its previous send returned; event_no_start: a return with no recorded send; command: a reply after another command's dispatch).",
  ),
} as const satisfies Record<string, MetricDef>;
