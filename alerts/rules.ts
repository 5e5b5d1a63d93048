// Every Prometheus rule hvwatch ships: recording rules (what dashboards and alerts share)
// and alerts, each with a runbook section in alerts/README.md. Metric names come from the
// catalog; the alerts the agent also raises in process (agent/alerting) take their name,
// severity and text from there, so both read the same.
import { M, type MetricDef } from '../agent/catalog.js';
import { IRQ_AFTER_TEARDOWN, PROBE_NOT_ATTACHED, RACE, RINGBUF_DROPS, type AlertIdentity, type Severity } from '../agent/alerting/conditions.js';
import { runbookUrl } from '../agent/alerting/index.js';
import { JOB, by, quantile, series, TARGET_LABELS, type Matchers } from './promql.js';

export interface RecordingRule {
  record: string;
  expr: string;
  /** Labels of the recorded series (its `by` list without le): what selectors on it may use. */
  labels: readonly string[];
  /** One line for alerts/README.md. */
  help: string;
}

export interface AlertRule {
  alert: string;
  expr: string;
  /** How long the condition must hold first; '0m' fires at the first evaluation. */
  for: string;
  severity: Severity;
  summary: string;
  description: string;
  runbook: { meaning: string; check: string[]; act: string[] };
}

export interface RuleGroup<R> {
  name: string;
  rules: R[];
}

// ---- thresholds: why these numbers ----
/** Folio writeback normally completes in milliseconds; seconds at p99 is a stalled device or io.max throttling. */
export const WRITEBACK_P99_SECONDS = 2;
/** A reflected exit that L1 handles in KVM takes microseconds; milliseconds at p99 means L1 goes to its userspace or is starved. */
export const NESTED_L1_P99_SECONDS = 0.002;
/**
 * An introspection event is a socket round trip to a local introspection process, which
 * answers in tens to hundreds of microseconds; the vCPU is paused meanwhile (seed 001), so
 * 10 ms at p99 is a guest that visibly stalls.
 */
export const KVMI_REPLY_P99_SECONDS = 0.01;
/** In-kernel BPF time per node, in CPU-seconds per second (0.05 = 5 % of one core); the cost targets of docs/cost.md are ~1-3 % of a workload. */
export const BPF_CPU_BUDGET = 0.05;
/** Label value of hvwatch_kvm_nested_state_saves_total{flag} for KVM_STATE_NESTED_RUN_PENDING. */
export const FLAG_RUN_PENDING = 'run_pending';
/** How long an event-type alert (a counter went up) stays firing. */
const EVENT_WINDOW = '10m';

const N = (d: MetricDef): string => d.name;
const rate = (sel: string, w = '5m'): string => `rate(${sel}[${w}])`;

/**
 * "This counter went up in the window", including a series born with a value above 0 in
 * that window (increase() needs two samples, so it misses a counter whose first sample
 * already counts the event, e.g. a label created by the first occurrence).
 */
function increased(def: MetricDef, window: string, m: Matchers = {}): string {
  const s = series(def, m);
  return `increase(${s}[${window}]) > 0 or (${s} > 0 unless ${s} offset ${window})`;
}

function rec(record: string, labels: readonly string[], expr: string, help: string): RecordingRule {
  return { record, labels, expr, help };
}

const P99 = (d: MetricDef, extra: string[]): string => quantile(0.99, d, [...TARGET_LABELS, ...extra], '5m');
const RATE_BY = (d: MetricDef, extra: string[]): string => `sum ${by([...TARGET_LABELS, ...extra], d)} (${rate(series(d))})`;
const KEEP = (extra: string[]): string[] => [...TARGET_LABELS, ...extra];

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

/** `{{ $labels.x }}` for every label: renders the shared alert texts as Prometheus templates. */
const TEMPLATE_LABELS = new Proxy({}, { get: (_t, k) => `{{ $labels.${String(k)} }}` }) as Record<string, string>;

function shared(id: AlertIdentity, rest: Omit<AlertRule, 'alert' | 'severity' | 'summary' | 'description'>): AlertRule {
  return { alert: id.name, severity: id.severity, summary: id.summary(TEMPLATE_LABELS), description: id.description(TEMPLATE_LABELS), ...rest };
}

const memcgAlerts: AlertRule[] = [
  shared(RACE, {
    expr: increased(M.memcgRaceEvents, EVENT_WINDOW),
    for: '0m',
    runbook: {
      meaning:
        'One of the four in-kernel race state machines (docs/metrics.md "Race indicators") saw its race on this node within the last 10 minutes. ' +
        'It fires at the first evaluation that sees the counter move and resolves 10 minutes after the last increase.',
      check: [
        '`curl -s http://NODE:9477/api/races | jq .` lists the latest events: kind, both cgroups, pid, comm, CPU, time since the paired event, kernel stack.',
        'The agent log has one `race indicator` line per event (`journalctl -u hvwatch | grep "race indicator"`).',
        '`uname -r` on the node: kernels without the page refcount fix for this race turn `memcg_cleared_under_writeback` into a NULL dereference.',
      ],
      act: [
        'Treat the node as at risk of a panic: drain its VMs if the kind is `memcg_cleared_under_writeback` or `writeback_end_zero_refcount`.',
        'File the event JSON and stack with the kernel team; the stack names the code path that dropped the reference.',
        'Do not restart hvwatch to clear the alert: the race is in the kernel, and a restart loses the event log.',
      ],
    },
  }),
  {
    alert: 'HvwatchMemcgWritebackLatencyHigh',
    expr: `${RECORDING.writebackP99.record} > ${WRITEBACK_P99_SECONDS}`,
    for: '10m',
    severity: 'warning',
    summary: 'writeback p99 of {{ $value | humanizeDuration }} in cgroup {{ $labels.cgroup }} on {{ $labels.instance }}',
    description: `The p99 time from writeback start to writeback end of folios charged to {{ $labels.cgroup }} on {{ $labels.instance }} has been above ${WRITEBACK_P99_SECONDS}s for 10 minutes ({{ $value | humanizeDuration }}). Tasks of that cgroup that fsync or wait on writeback stall for as long.`,
    runbook: {
      meaning: `The p99 of \`${M.memcgWbLatency.name}\` for one cgroup (recording rule \`${'cgroup:' + M.memcgWbLatency.name + ':p99_5m'}\`) stayed above ${WRITEBACK_P99_SECONDS} s for 10 minutes.`,
      check: [
        'The memcg dashboard, panel "Writeback latency" for that cgroup: one cgroup or all of them? All: the device; one: its io limits.',
        '`cat /sys/fs/cgroup/<cgroup>/io.max` and `io.stat`: a cgroup throttled by io.max writes back slowly by design.',
        '`iostat -x 1` on the node: device utilisation and await.',
      ],
      act: [
        'A throttled cgroup: raise its io.max or accept it (silence the alert for that cgroup).',
        'A slow device: move the noisy writer or fix the storage path.',
      ],
    },
  },
];

const kvmAlerts: AlertRule[] = [
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

const kvmiAlerts: AlertRule[] = [
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

const irqAlerts: AlertRule[] = [
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

const imaAlerts: AlertRule[] = [
  {
    alert: 'HvwatchImaInodePointerReuse',
    expr: increased(M.imaInodeReuse, EVENT_WINDOW, { kind: 'live_state' }),
    for: '0m',
    severity: 'warning',
    summary: 'IMA integrity state outlived its inode on {{ $labels.instance }}',
    description:
      "hvwatch saw an inode pointer come back to IMA's integrity cache on {{ $labels.instance }} with another (device, inode number, generation) while the cache entry of the inode that had the pointer before was never freed: integrity state keyed by a reused pointer (seed 004).",
    runbook: {
      meaning: `\`${M.imaInodeReuse.name}{kind="live_state"}\` rose. The integrity cache (the iint) is keyed by the inode pointer; an entry is freed with its inode, so a pointer that returns with another identity should find its old entry gone (kind="after_free", which is normal and not alerted on). Here the old entry was still live: either the kernel kept measurement/appraisal state for an inode that no longer exists (a new file could inherit "already measured/appraised"), or hvwatch missed the free (\`${M.imaStateEvents.name}\`, probe \`ima_cache_free\` not attached).`,
      check: [
        '`curl -s http://NODE:9477/api/races | jq \'.[] | select(.kind == "live_state")\'`: both identities (dev, ino, generation), the cgroups that allocated and reused the entry, pid and comm.',
        '`hvwatch probes` on the node: is `ima_cache_free` attached? Without it every reuse looks live.',
        '`uname -r` and the file system of the device in the event (overlayfs and network file systems reuse inode numbers differently).',
      ],
      act: [
        'If `ima_cache_free` is attached, treat the measurement list and appraisal results on the node as suspect for files created after the event: re-measure (reboot) before trusting attestation from it.',
        'File the event JSON with the kernel version for the IMA maintainers: the cache lookup must compare the identity, not only the pointer (seed 004).',
      ],
    },
  },
];

const agentAlerts: AlertRule[] = [
  {
    alert: 'HvwatchDown',
    expr: `up{job="${JOB}"} == 0`,
    for: '2m',
    severity: 'warning',
    summary: 'hvwatch on {{ $labels.instance }} is down',
    description:
      'Prometheus could not scrape hvwatch on {{ $labels.instance }} for 2 minutes: nothing on that node is observed, and its in-process alerts stop too.',
    runbook: {
      meaning: `The scrape of job \`${JOB}\` on one target failed for 2 minutes (\`up == 0\`).`,
      check: [
        '`kubectl -n <ns> get pod -o wide | grep hvwatch` or `systemctl status hvwatch` on the node: crash looping? Exit status 2 is a configuration, privilege or kernel-support error, printed as one line on stderr.',
        '`curl -s http://NODE:9477/healthz` from the Prometheus host: network policy or a moved port?',
      ],
      act: [
        'Fix what the one-line error says (README "Running it", exit status 2) and restart the agent.',
        'If the node itself is down, this alert is a symptom: follow the node alert.',
      ],
    },
  },
  shared(PROBE_NOT_ATTACHED, {
    expr: `${series(M.probeAttached)} == 0`,
    // Attaching happens once at start: there is nothing to wait out.
    for: '0m',
    runbook: {
      meaning: `An enabled probe attached none of its candidates (\`${M.probeAttached.name} == 0\`); the others keep running.`,
      check: [
        '`hvwatch probes` on the node (or `curl -s http://NODE:9477/api/probes`): each candidate says why it failed: function not in BTF, no kprobes, fentry refused, a verifier message.',
        `\`${M.probeAttachFailures.name}{probe="<probe>"}\` counts the failed candidates.`,
      ],
      act: [
        'A kernel that cannot have the probe (e.g. no fentry and no kprobes): disable it in `probes.disable` so the gap is a decision, not an alert.',
        'A renamed kernel symbol: pin the new one with `probes.attach` and report it so a candidate is added.',
        'A verifier rejection: file the verifier log tail with `uname -r`.',
      ],
    },
  }),
  shared(RINGBUF_DROPS, {
    expr: increased(M.ringbufDropped, EVENT_WINDOW),
    for: '0m',
    runbook: {
      meaning: `\`${M.ringbufDropped.name}\` rose: the BPF side could not reserve room for an event because the agent did not drain the ring buffer fast enough.`,
      check: [
        `\`rate(${M.ringbufEvents.name}[5m])\` for the family: a burst of races (then see HvwatchMemcgRaceIndicator) or a steady flood?`,
        'The agent\'s CPU use and log: a ring-buffer reader that failed logs "ring buffer reader failed".',
      ],
      act: [
        'A race storm: handle the races; the per-kind counters are exact even when events drop.',
        'A reader that stopped: restart the agent and file its log.',
      ],
    },
  }),
  {
    alert: 'HvwatchCardinalityDrops',
    expr: increased(M.cardinalityDropped, '1h'),
    for: '0m',
    severity: 'info',
    summary: 'hvwatch on {{ $labels.instance }} folds {{ $labels.label }} values into "_other"',
    description:
      'The cardinality budget for label {{ $labels.label }} on {{ $labels.instance }} is full: new values were reported as "_other" within the last hour, so per-{{ $labels.label }} panels miss them.',
    runbook: {
      meaning: `\`${M.cardinalityDropped.name}\` rose: more distinct cgroups (or VMs) than \`cardinality.cgroups\` (\`cardinality.vms\`) were seen at once.`,
      check: [
        'How many cgroups the node has (`find /sys/fs/cgroup -type d | wc -l`) against the configured cap.',
        'Whether old cgroups linger: removed cgroups free their slot within about 10 s.',
      ],
      act: ['Raise `cardinality.cgroups` / `cardinality.vms` if Prometheus can take the series, or accept the `_other` bucket.'],
    },
  },
  {
    alert: 'HvwatchBpfBudgetExceeded',
    expr: `${RECORDING.bpfCpu.record} > ${BPF_CPU_BUDGET}`,
    for: '15m',
    severity: 'warning',
    summary: 'hvwatch BPF programs use {{ $value | humanizePercentage }} of a CPU on {{ $labels.instance }}',
    description: `The kernel has spent more than ${BPF_CPU_BUDGET * 100} % of one CPU running hvwatch's BPF programs on {{ $labels.instance }} for 15 minutes ({{ $value | humanizePercentage }}).`,
    runbook: {
      meaning: `The rate of \`${M.progRunSeconds.name}\` summed over the node's programs (recording rule \`instance:hvwatch_bpf_program_run_seconds:rate5m\`) is above ${BPF_CPU_BUDGET} CPU-seconds per second. It needs BPF run-time stats (\`bpf.stats: true\` or \`kernel.bpf_stats_enabled=1\`); without them it never fires.`,
      check: [
        `\`topk(5, sum by (probe, program) (rate(${M.progRunSeconds.name}{instance="<node>"}[5m])))\`: which program?`,
        `\`rate(${M.progRuns.name}[5m])\` for it: more events than usual (a workload change) or more time per event?`,
      ],
      act: [
        'A hot probe (`probes.hot`) on a busy node: turn it off there; bench/RESULTS.md has its measured cost.',
        'More time per event than bench/RESULTS.md says: file it with the kernel version.',
      ],
    },
  },
];

export const RECORDING_GROUP: RuleGroup<RecordingRule> = { name: 'hvwatch.recording', rules: Object.values(RECORDING) };

export const ALERT_GROUPS: RuleGroup<AlertRule>[] = [
  { name: 'hvwatch.memcg', rules: memcgAlerts },
  { name: 'hvwatch.kvm', rules: kvmAlerts },
  { name: 'hvwatch.kvmi', rules: kvmiAlerts },
  { name: 'hvwatch.irq', rules: irqAlerts },
  { name: 'hvwatch.ima', rules: imaAlerts },
  { name: 'hvwatch.agent', rules: agentAlerts },
];

export const ALL_ALERTS: AlertRule[] = ALERT_GROUPS.flatMap((g) => g.rules);

export { runbookUrl };
