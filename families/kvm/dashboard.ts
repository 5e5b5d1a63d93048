// KVM exits and nested virtualization per VM (seed 000): exit reasons, what goes to the
// VMM, L0 against L1 handling of L2 exits, L1's handling time, nested VM-entry failures and
// nested-state save/restore.
import { M, type MetricDef } from '../../agent/catalog.js';
import { FLAG_RUN_PENDING } from './alerts.js';
import { RECORDING } from '../../alerts/recording.js';
import { by, heatmapQueries, quantile, re, recorded, series } from '../../alerts/promql.js';
import { U, dashboard, datasourceVar, graph, heat } from '../../dashboards/lib.js';
import { nodeVar, vmVar } from '../../dashboards/vars.js';

const NODE = { instance: re('$node') };
const VM = { ...NODE, vm: re('$vm') };

/** Per-second rate summed by the given labels over the selected nodes and VMs. */
const rateBy = (d: MetricDef, labels: string[]): string => `sum ${by(labels, d)} (rate(${series(d, VM)}[$__rate_interval]))`;

export const kvm = () =>
  dashboard({
    uid: 'hvwatch-kvm',
    title: 'hvwatch / KVM exits and nested virtualization',
    description:
      'Per VM: VM-exits by reason, returns to the VMM, L0 against L1 handling of nested exits, L1 handling time, nested VM-entry failures and nested-state saves.',
    variables: [datasourceVar(), nodeVar(), vmVar()],
    sections: [
      {
        row: 'VM-exits',
        panels: [
          graph({
            title: 'VM-exits per VM',
            unit: U.perSecond('exits'),
            description: 'VM-exits per second (kvm:kvm_exit) per node and VM, all reasons.',
            queries: [{ expr: rateBy(M.kvmExits, ['instance', 'vm']), legend: '{{instance}} {{vm}}' }],
          }),
          graph({
            title: 'VM-exits by reason',
            unit: U.perSecond('exits'),
            stacked: true,
            description: 'VM-exits per second by ISA and exit reason over the selected VMs: which reasons dominate.',
            queries: [{ expr: rateBy(M.kvmExits, ['isa', 'reason']), legend: '{{isa}} {{reason}}' }],
          }),
          heat({
            title: 'Exit handling time',
            unit: U.seconds,
            description: "VM-exits by time from the exit to the same vCPU's next VM-entry (log2 buckets), over the selected VMs.",
            queries: heatmapQueries(M.kvmExitHandling, VM),
          }),
          graph({
            title: 'Exit handling p99 by reason',
            unit: U.seconds,
            description: '99th percentile of the time from VM-exit to the next VM-entry, by exit reason, over the selected VMs.',
            queries: [{ expr: quantile(0.99, M.kvmExitHandling, ['reason'], '$__rate_interval', VM), legend: '{{reason}}' }],
          }),
          graph({
            title: 'VM-exits per vCPU',
            unit: U.perSecond('exits'),
            w: 24,
            description: 'VM-exits per second per vCPU; only exported with kvm.vcpuLabel: true in the agent config (empty otherwise).',
            queries: [{ expr: rateBy(M.kvmVcpuExits, ['instance', 'vm', 'vcpu']), legend: '{{instance}} {{vm}} vCPU {{vcpu}}' }],
          }),
        ],
      },
      {
        row: 'Userspace exits and emulation',
        panels: [
          graph({
            title: 'Userspace exits by reason',
            unit: U.perSecond('exits'),
            description: 'Returns from KVM_RUN to the VMM per second (kvm:kvm_userspace_exit) by VM and KVM_EXIT_* reason: device emulation the VMM does.',
            queries: [{ expr: rateBy(M.kvmUserspaceExits, ['instance', 'vm', 'reason']), legend: '{{instance}} {{vm}} {{reason}}' }],
          }),
          heat({
            title: 'Time in the VMM per userspace exit',
            unit: U.seconds,
            description: 'Userspace exits by time the VMM spent before its next KVM_RUN (log2 buckets), over the selected VMs.',
            queries: heatmapQueries(M.kvmUserspaceTime, VM),
          }),
          graph({
            title: 'Port I/O',
            unit: U.perSecond('exits'),
            description: 'Port I/O exits per second (kvm:kvm_pio) by VM and direction.',
            queries: [{ expr: rateBy(M.kvmPio, ['instance', 'vm', 'direction']), legend: '{{instance}} {{vm}} {{direction}}' }],
          }),
          graph({
            title: 'MMIO',
            unit: U.perSecond('accesses'),
            description: 'MMIO accesses handled by KVM per second (kvm:kvm_mmio) by VM and type.',
            queries: [{ expr: rateBy(M.kvmMmio, ['instance', 'vm', 'type']), legend: '{{instance}} {{vm}} {{type}}' }],
          }),
          graph({
            title: 'Emulated instructions',
            unit: U.perSecond('instructions'),
            w: 24,
            description:
              'Instructions KVM emulated per second (kvm:kvm_emulate_insn) by VM and result; "failed" usually ends in an exit to the VMM or an injected fault.',
            queries: [{ expr: rateBy(M.kvmEmulated, ['instance', 'vm', 'result']), legend: '{{instance}} {{vm}} {{result}}' }],
          }),
        ],
      },
      {
        row: 'Nested virtualization',
        panels: [
          graph({
            title: 'Nested exits: L0 vs L1',
            unit: U.perSecond('exits'),
            stacked: true,
            description: 'VM-exits of L2 guests per second by VM, handled by the host (l0) or reflected to the L1 hypervisor (l1).',
            queries: [{ expr: rateBy(M.kvmNestedExits, ['instance', 'vm', 'handler']), legend: '{{instance}} {{vm}} {{handler}}' }],
          }),
          graph({
            title: 'Nested exits by reason and handler',
            unit: U.perSecond('exits'),
            description: 'L2 VM-exits per second by reason and handler over the selected VMs: which exits L1 has to handle.',
            queries: [{ expr: rateBy(M.kvmNestedExits, ['reason', 'handler']), legend: '{{reason}} ({{handler}})' }],
          }),
          heat({
            title: 'L1 handling time',
            unit: U.seconds,
            description: "Reflected exits by the time L1 took to handle them, from kvm_nested_vmexit_inject to the vCPU's next nested VM-entry (log2 buckets).",
            queries: heatmapQueries(M.kvmNestedL1Handling, VM),
          }),
          graph({
            title: 'L1 handling p99 per VM',
            unit: U.seconds,
            description:
              "99th percentile of L1's handling time per VM over 5 minutes (recording rule). Alert HvwatchNestedL1HandlingSlow: above 2 ms for 10 minutes.",
            queries: [{ expr: recorded(RECORDING.nestedL1P99, VM), legend: '{{instance}} {{vm}}' }],
          }),
          graph({
            title: 'Nested VM-entries',
            unit: U.perSecond('entries'),
            description: 'Nested VM-entries per second (L1 running L2: VMLAUNCH/VMRESUME/VMRUN emulated by KVM) per VM.',
            queries: [{ expr: rateBy(M.kvmNestedVmenters, ['instance', 'vm']), legend: '{{instance}} {{vm}}' }],
          }),
          graph({
            title: 'Nested VM-entry failures',
            unit: U.perSecond('failures'),
            description: "Nested VM-entries that failed KVM's consistency checks per second, by VM and kernel message. Alert HvwatchNestedVmentryFailures.",
            queries: [{ expr: rateBy(M.kvmNestedVmenterFailures, ['instance', 'vm', 'message']), legend: '{{instance}} {{vm}} {{message}}' }],
          }),
          graph({
            title: 'Exits from L2 for interrupts',
            unit: U.perSecond('exits'),
            w: 24,
            description: 'Exits from L2 to L1 caused by a pending interrupt (kvm:kvm_nested_intr_vmexit) per VM.',
            queries: [{ expr: rateBy(M.kvmNestedIntrExits, ['instance', 'vm']), legend: '{{instance}} {{vm}}' }],
          }),
        ],
      },
      {
        row: 'Nested state save and restore',
        panels: [
          graph({
            title: 'Nested-state ioctls',
            unit: U.perSecond('ioctls'),
            description:
              'KVM_GET_NESTED_STATE (get) and KVM_SET_NESTED_STATE (set) per second by VM and result (ok or the errno name): migrations and snapshots of nested VMs.',
            queries: [{ expr: rateBy(M.kvmNestedStateOps, ['instance', 'vm', 'op', 'result']), legend: '{{instance}} {{vm}} {{op}} {{result}}' }],
          }),
          heat({
            title: 'Nested-state ioctl time',
            unit: U.seconds,
            description: 'Nested-state ioctls by time spent inside (log2 buckets), over the selected VMs.',
            queries: heatmapQueries(M.kvmNestedStateOpTime, VM),
          }),
          graph({
            title: 'Risky saves: GUEST_MODE and RUN_PENDING',
            unit: U.of('saves'),
            bars: true,
            description: `Nested-state saves per interval whose flags had GUEST_MODE or RUN_PENDING set, by VM. Any ${FLAG_RUN_PENDING} save raises HvwatchNestedStateSaveRunPending.`,
            queries: [
              {
                expr: `sum ${by(['instance', 'vm', 'flag'], M.kvmNestedStateSaves)} (increase(${series(M.kvmNestedStateSaves, VM)}[$__rate_interval]))`,
                legend: '{{instance}} {{vm}} {{flag}}',
              },
            ],
          }),
          graph({
            title: 'Unpaired events',
            unit: U.perSecond('events'),
            description:
              'Paired events (exit/entry, nested inject/entry, userspace return/KVM_RUN) whose opening half was missing, per node: no latency was recorded for them.',
            queries: [
              {
                expr: `sum ${by(['instance', 'pairing'], M.kvmUnpaired)} (rate(${series(M.kvmUnpaired, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{pairing}}',
              },
            ],
          }),
        ],
      },
    ],
  });

/** The boards this family's folder owns (dashboards/generate.ts gathers them in registry order). */
export const boards = { 'kvm.json': kvm };
