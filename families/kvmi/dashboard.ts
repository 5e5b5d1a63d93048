// VM introspection (seed 001) and interrupt injection (seed 003) per VM: introspection
// events and the time each vCPU waits paused for its reply, reply actions, events left
// unreplied at unhook, commands and their errors; interrupt injections by path, the delay
// to delivery into the vCPU, irqchip teardown and injections that came after it.
import { M, type MetricDef } from '../../agent/catalog.js';
import { KVMI_REPLY_P99_SECONDS } from './alerts.js';
import { RECORDING } from '../../alerts/recording.js';
import { by, heatmapQueries, quantile, re, recorded, series, type Matchers } from '../../alerts/promql.js';
import { U, dashboard, datasourceVar, graph, heat, single } from '../../dashboards/lib.js';
import { nodeVar, vmVar } from '../../dashboards/vars.js';

const NODE = { instance: re('$node') };
const VM = { ...NODE, vm: re('$vm') };

const rateBy = (d: MetricDef, labels: string[], m: Matchers = VM): string => `sum ${by(labels, d)} (rate(${series(d, m)}[$__rate_interval]))`;
const increaseBy = (d: MetricDef, labels: string[]): string => `sum ${by(labels, d)} (increase(${series(d, VM)}[$__rate_interval]))`;
const p99By = (d: MetricDef, labels: string[]): string => quantile(0.99, d, labels, '$__rate_interval', VM);
const inRange = (d: MetricDef): string => `sum(increase(${series(d, VM)}[$__range])) or vector(0)`;

export const introspection = () =>
  dashboard({
    uid: 'hvwatch-introspection',
    title: 'hvwatch / Introspection and interrupts',
    description:
      'Per VM: KVM introspection (KVMI) events, the vCPU time paused waiting for replies, commands and their errors; interrupt injections by path, delivery delay, irqchip teardown and injections after it.',
    variables: [datasourceVar(), nodeVar(), vmVar()],
    sections: [
      {
        row: 'Introspection (KVMI)',
        panels: [
          single({
            title: 'Nodes with KVMI',
            unit: U.count,
            description:
              'Selected nodes whose kernel has KVM introspection (hvwatch_kvmi_present = 1). KVMI is not upstream: on other kernels this row stays empty by design.',
            queries: [{ expr: `count(${series(M.kvmiPresent, NODE)} == 1) or vector(0)` }],
          }),
          single({
            title: 'Events unreplied at unhook, in range',
            unit: U.of('events'),
            redAbove: 1,
            description:
              'Introspection events still waiting for a reply when the introspection tool unhooked, in the time range: their vCPUs were released without an answer.',
            queries: [{ expr: inRange(M.kvmiUnreplied) }],
          }),
          graph({
            title: 'Introspection events by type',
            unit: U.perSecond('events'),
            stacked: true,
            w: 16,
            description:
              'Introspection events sent to the tool per second by VM and event type (PAUSE, HYPERCALL, BREAKPOINT, CR, MSR, PF, ...). Each pauses its vCPU until the reply.',
            queries: [{ expr: rateBy(M.kvmiEvents, ['instance', 'vm', 'event']), legend: '{{instance}} {{vm}} {{event}}' }],
          }),
          heat({
            title: 'Reply time (vCPU paused)',
            unit: U.seconds,
            description: 'Introspection events by the time from send to reply (log2 buckets), over the selected VMs: the guest time lost to introspection.',
            queries: heatmapQueries(M.kvmiReplyTime, VM),
          }),
          graph({
            title: 'Reply p99 per VM and event',
            unit: U.seconds,
            description: `99th percentile of the reply time per VM and event type over 5 minutes (recording rule). Alert HvwatchKvmiReplySlow: above ${KVMI_REPLY_P99_SECONDS * 1000} ms for 10 minutes.`,
            queries: [{ expr: recorded(RECORDING.kvmiReplyP99, VM), legend: '{{instance}} {{vm}} {{event}}' }],
          }),
          graph({
            title: 'Reply actions',
            unit: U.perSecond('replies'),
            stacked: true,
            description: 'Replies per second by VM, event type and action: continue, retry, or crash (the tool asked KVM to kill the guest).',
            queries: [{ expr: rateBy(M.kvmiReplies, ['instance', 'vm', 'event', 'action']), legend: '{{instance}} {{vm}} {{event}} {{action}}' }],
          }),
          graph({
            title: 'Unhooks',
            unit: U.of('unhooks'),
            bars: true,
            description: 'Unhook requests sent to the introspection tool per interval, by VM (the tool detaches: on VM shutdown, migration or tool restart).',
            queries: [{ expr: increaseBy(M.kvmiUnhooks, ['instance', 'vm']), legend: '{{instance}} {{vm}}' }],
          }),
          graph({
            title: 'Commands by result',
            unit: U.perSecond('commands'),
            description:
              'Introspection commands the tool sent per second by command and result ("ok" or the KVM error, e.g. KVM_EINVAL, KVM_EAGAIN, KVM_ENOMEM).',
            queries: [{ expr: rateBy(M.kvmiCommands, ['instance', 'vm', 'command', 'result']), legend: '{{instance}} {{vm}} {{command}} {{result}}' }],
          }),
          graph({
            title: 'Command errors',
            unit: U.perSecond('commands'),
            description: 'Introspection commands that failed per second, by command and KVM error: e.g. GET_XSAVE failing with KVM_EINVAL.',
            queries: [
              {
                expr: `${rateBy(M.kvmiCommands, ['instance', 'vm', 'command', 'result'], { ...VM, result: { ne: 'ok' } })} > 0`,
                legend: '{{instance}} {{vm}} {{command}} {{result}}',
              },
            ],
          }),
          graph({
            title: 'Command handling p99',
            unit: U.seconds,
            description: '99th percentile of the time KVM took to handle one introspection command, by command, over the selected VMs.',
            queries: [{ expr: p99By(M.kvmiCommandTime, ['command']), legend: '{{command}}' }],
          }),
        ],
      },
      {
        row: 'Interrupt injection',
        panels: [
          single({
            title: 'Injections after teardown, in range',
            unit: U.of('injections'),
            redAbove: 1,
            description:
              'Interrupt injections on a VM after its irqchip or device teardown began, in the time range (alert HvwatchKvmIrqAfterTeardown). Needs the function-tier teardown probes.',
            queries: [{ expr: inRange(M.kvmIrqAfterTeardown) }],
          }),
          single({
            title: 'Teardown steps, in range',
            unit: U.of('steps'),
            description: 'Irqchip and device teardown steps begun on the selected VMs in the time range (device_release, destroy_devices, free_irq_routing).',
            queries: [{ expr: inRange(M.kvmIrqTeardowns) }],
          }),
          graph({
            title: 'Injections by path',
            unit: U.perSecond('interrupts'),
            stacked: true,
            w: 16,
            description:
              'Interrupt injections per second by VM and path (5-minute rate, recording rule): set_irq (KVM_IRQ_LINE, irqfd), msi, ioapic, pic, apic_accept (the local APIC took it), inj_virq (entered the vCPU).',
            queries: [{ expr: recorded(RECORDING.irqInjectionRate, VM), legend: '{{instance}} {{vm}} {{path}}' }],
          }),
          graph({
            title: 'Injections per VM',
            unit: U.perSecond('interrupts'),
            description: "Interrupts injected into each VM's vCPUs per second (kvm:kvm_inj_virq): what the guests actually received.",
            queries: [{ expr: rateBy(M.kvmIrqInjections, ['instance', 'vm'], { ...VM, path: 'inj_virq' }), legend: '{{instance}} {{vm}}' }],
          }),
          heat({
            title: 'Delivery delay',
            unit: U.seconds,
            description:
              "Interrupts by the time from their acceptance by a vCPU's local APIC to their injection into the vCPU (log2 buckets), over the selected VMs.",
            queries: heatmapQueries(M.kvmIrqDelivery, VM),
          }),
          graph({
            title: 'Delivery delay p99 per VM',
            unit: U.seconds,
            description: '99th percentile of the delay from APIC acceptance to injection into the vCPU, per VM: a halted or descheduled vCPU shows here.',
            queries: [{ expr: p99By(M.kvmIrqDelivery, ['instance', 'vm']), legend: '{{instance}} {{vm}}' }],
          }),
          graph({
            title: 'Teardown steps',
            unit: U.of('steps'),
            bars: true,
            description: 'Irqchip and device teardown steps per interval by VM and kind: a VM being destroyed or a device hot-unplugged.',
            queries: [{ expr: increaseBy(M.kvmIrqTeardowns, ['instance', 'vm', 'kind']), legend: '{{instance}} {{vm}} {{kind}}' }],
          }),
          graph({
            title: 'Injections after teardown',
            unit: U.of('injections'),
            bars: true,
            description:
              'Injections on a VM after its teardown began, per interval by VM and path. Any bar is the teardown race: an injection that can reach a freed irqchip.',
            queries: [{ expr: `${increaseBy(M.kvmIrqAfterTeardown, ['instance', 'vm', 'path'])} > 0`, legend: '{{instance}} {{vm}} {{path}}' }],
          }),
        ],
      },
    ],
  });

/** The boards this family's folder owns (dashboards/generate.ts gathers them in registry order). */
export const boards = { 'introspection.json': introspection };
