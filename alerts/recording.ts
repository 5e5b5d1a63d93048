// The recording rules: what dashboards and alerts share (alerts/hvwatch.rules.yml group
// hvwatch.recording). They span families (the fleet dashboard's top VMs and cgroups), so
// they stay here, a reader of the catalog like the fleet dashboard.
import { M } from '../agent/catalog.js';
import { KEEP, N, P99, RATE_BY, rec, type RecordingRule } from './lib.js';

export const RECORDING = {
  writebackP99: rec(
    `cgroup:${N(M.memcgWbLatency)}:p99_5m`,
    KEEP(['cgroup']),
    P99(M.memcgWbLatency, ['cgroup']),
    'p99 of folio writeback latency (start to end) per node and cgroup over 5 minutes.',
  ),
  writebackPages: rec(
    'cgroup:hvwatch_memcg_writeback_completed_pages:rate5m',
    KEEP(['cgroup']),
    RATE_BY(M.memcgWbCompleted, ['cgroup']),
    'Pages whose writeback completed per second, per node and cgroup.',
  ),
  exitRate: rec('vm:hvwatch_kvm_exits:rate5m', KEEP(['vm']), RATE_BY(M.kvmExits, ['vm']), 'VM-exits per second per node and VM (all reasons).'),
  userspaceExitRate: rec(
    'vm:hvwatch_kvm_userspace_exits:rate5m',
    KEEP(['vm']),
    RATE_BY(M.kvmUserspaceExits, ['vm']),
    'Returns from KVM_RUN to the VMM per second, per node and VM.',
  ),
  nestedExitRate: rec(
    'vm_handler:hvwatch_kvm_nested_exits:rate5m',
    KEEP(['vm', 'handler']),
    RATE_BY(M.kvmNestedExits, ['vm', 'handler']),
    'L2 VM-exits per second per node and VM, handled by L0 or reflected to L1.',
  ),
  nestedL1P99: rec(
    `vm:${N(M.kvmNestedL1Handling)}:p99_5m`,
    KEEP(['vm']),
    P99(M.kvmNestedL1Handling, ['vm']),
    'p99 of the time L1 takes to handle a reflected exit, per node and VM over 5 minutes.',
  ),
  kvmiReplyP99: rec(
    `vm_event:${N(M.kvmiReplyTime)}:p99_5m`,
    KEEP(['vm', 'event']),
    P99(M.kvmiReplyTime, ['vm', 'event']),
    "p99 of the time a vCPU waits paused for the introspection tool's reply, per node, VM and event type over 5 minutes.",
  ),
  irqInjectionRate: rec(
    'vm_path:hvwatch_kvm_irq_injections:rate5m',
    KEEP(['vm', 'path']),
    RATE_BY(M.kvmIrqInjections, ['vm', 'path']),
    'Interrupt injections per second per node, VM and injection path.',
  ),
  bpfCpu: rec(
    'instance:hvwatch_bpf_program_run_seconds:rate5m',
    KEEP([]),
    RATE_BY(M.progRunSeconds, []),
    "CPU-seconds per second the kernel spends in hvwatch's BPF programs, per node (needs BPF run-time stats).",
  ),
} as const satisfies Record<string, RecordingRule>;
