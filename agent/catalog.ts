// The one metric catalog. The exporter, the dashboards and the alert rules import names
// from here, and test/catalog.test.ts fails if the exposition and this list disagree.
// Names follow Prometheus conventions: counters end in _total, base units (_seconds,
// _bytes), `promtool check metrics` clean.

import type { Log2Range } from './aggregate/histogram.js';

export type MetricType = 'counter' | 'gauge' | 'histogram';

export interface MetricDef {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly labels: readonly string[];
  /** Base unit, for dashboards and docs ('seconds', 'bytes', 'pages', ...). */
  readonly unit?: string;
  /** Which probe family produces it ('agent' for self-metrics). */
  readonly family: string;
  /** Histograms: the kernel's log2 slots kept, and the classic `le` set every series of the
   * metric shares (agent/aggregate/histogram.ts). */
  readonly buckets?: Log2Range;
  /** A counter's fixed label values: every combination is exported as 0 from start-up
   * (agent/aggregate/initial.ts), as is every counter without labels, so rate() and
   * increase() see the first event and alerts on them can be written and tested. */
  readonly zeros?: Readonly<Record<string, readonly string[]>>;
}

function withZeros(d: MetricDef, zeros: Readonly<Record<string, readonly string[]>>): MetricDef {
  for (const l of d.labels) if (!zeros[l]) throw new Error(`${d.name}: fixed label ${l} has no values`);
  return { ...d, zeros };
}

function def(family: string, name: string, type: MetricType, labels: readonly string[], help: string, unit?: string): MetricDef {
  return unit === undefined ? { name, type, help, labels, family } : { name, type, help, labels, family, unit };
}

function hist(family: string, name: string, labels: readonly string[], help: string, unit: string, buckets: Log2Range): MetricDef {
  return { name, type: 'histogram', help, labels, family, unit, buckets };
}

// Classic buckets at every CLASSIC_STEP-th power of two: le = 2^(4k) - 1 ns (4.095e-06,
// 6.5535e-05, 0.001048575, ... s) or pages (15, 255, 4095), plus the top of the range; a
// factor of 16 between bounds (docs/metrics.md "Histograms"). A classic scraper gets 8 bucket lines
// per latency series instead of 27; native histograms (protobuf) keep every slot.
const CLASSIC_STEP = 4;
/** Nanosecond slots minSlot..maxSlot exported in seconds (slot i: [2^i, 2^(i+1)) ns). */
const NS = (minSlot: number, maxSlot: number): Log2Range => ({ minSlot, maxSlot, scale: 1e-9, classicStep: CLASSIC_STEP });
/** Pages per batch, 1 .. 8191. */
const PAGES: Log2Range = { minSlot: 0, maxSlot: 12, scale: 1, classicStep: CLASSIC_STEP };

// Per-cgroup series: the path, plus namespace/pod/container when Kubernetes labels are on
// and the path is a kubelet-made pod or container cgroup (agent/k8s.ts). The three are
// functions of the path, so they add no series; where they do not apply they are empty and
// the exposition leaves them out.
const CG = ['cgroup', 'namespace', 'pod', 'container'] as const;

export const M = {
  // ---- the agent itself ----
  buildInfo: def(
    'agent',
    'hvwatch_build_info',
    'gauge',
    ['version', 'kernel', 'libbpf'],
    'Always 1; labels carry the agent version, the kernel release and the libbpf version.',
  ),
  probeInfo: def(
    'agent',
    'hvwatch_probe_info',
    'gauge',
    ['probe', 'attach', 'target'],
    'Always 1 for each attached probe; labels say which attach candidate it took.',
  ),
  probeAttached: def('agent', 'hvwatch_probe_attached', 'gauge', ['probe'], '1 if the enabled probe attached through one of its candidates, 0 if none worked.'),
  probeAttachFailures: def(
    'agent',
    'hvwatch_probe_attach_failures_total',
    'counter',
    ['probe'],
    'Attach candidates that failed to load or attach, per probe (reasons in `hvwatch probes`).',
  ),
  progRuns: def(
    'agent',
    'hvwatch_bpf_program_runs_total',
    'counter',
    ['probe', 'program'],
    'Times the kernel ran each attached BPF program (needs BPF run-time stats enabled).',
  ),
  progRunSeconds: def(
    'agent',
    'hvwatch_bpf_program_run_seconds_total',
    'counter',
    ['probe', 'program'],
    'Time the kernel spent running each attached BPF program (needs BPF run-time stats enabled).',
    'seconds',
  ),
  bpfStatsEnabled: def(
    'agent',
    'hvwatch_bpf_stats_enabled',
    'gauge',
    [],
    '1 if the kernel is accounting BPF program run time (kernel.bpf_stats_enabled or BPF_ENABLE_STATS).',
  ),
  ringbufEvents: def('agent', 'hvwatch_ringbuf_events_total', 'counter', ['family'], "Events received from a family's BPF ring buffer."),
  ringbufDropped: def(
    'agent',
    'hvwatch_ringbuf_dropped_events_total',
    'counter',
    ['family'],
    'Events the BPF side could not reserve in the ring buffer because it was full.',
  ),
  logLinesSuppressed: def(
    'agent',
    'hvwatch_log_lines_suppressed_total',
    'counter',
    ['reason'],
    'Log lines not written because of a rate limit (reason="race_indicator": one line per race event past a burst of 20, then 2 a second; reason="collect_error": a family\'s failing collection step past a burst of 3, then one a minute); the events themselves are all counted.',
  ),
  mapFull: def('agent', 'hvwatch_bpf_map_full_errors_total', 'counter', ['family'], 'Updates the BPF side could not make because a map was full.'),
  mapEntries: def('agent', 'hvwatch_bpf_map_entries', 'gauge', ['family', 'map'], 'Entries in each BPF map read by the agent.'),
  mapCapacity: def('agent', 'hvwatch_bpf_map_capacity_entries', 'gauge', ['family', 'map'], 'Maximum entries of each BPF map read by the agent.'),
  cardinalityDropped: withZeros(
    def(
      'agent',
      'hvwatch_cardinality_dropped_total',
      'counter',
      ['label'],
      'Label values refused by the cardinality budget; their samples are folded into the value "_other".',
    ),
    { label: ['cgroup', 'vm'] },
  ),
  cgroupUnresolved: def(
    'agent',
    'hvwatch_cgroup_unresolved_total',
    'counter',
    [],
    'Cgroup id lookups that matched no directory in the memory hierarchy (labelled cgroup="unknown").',
  ),
  collectErrors: def(
    'agent',
    'hvwatch_collect_errors_total',
    'counter',
    ['family', 'stage'],
    "Steps of a probe family's collection that threw, by family and stage (prepare, map, collect, events); the family's other steps, the other families and the agent's own metrics are still exported, and the error is logged (rate-limited).",
  ),
  hostRefreshBehind: def(
    'agent',
    'hvwatch_host_refresh_behind_total',
    'counter',
    ['fact'],
    'Background refresher ticks (every 100 ms) after which a host fact (fact: memory_stat, cgroup_alive, vmm_alive) was still older than twice its refresh interval: the per-tick budget or a blocked event loop kept it from keeping up, and scrapes serve older values. fact=cgroup_walk is the cgroupfs walk, which has no age.',
  ),
  hostRefreshAge: def(
    'agent',
    'hvwatch_host_refresh_age_seconds',
    'gauge',
    ['fact'],
    'Age of the oldest cached host fact a scrape serves (memory_stat: every 10 s, cgroup_alive: 10 s, vmm_alive: 2 s), refreshed in the background off the scrape path.',
    'seconds',
  ),
  hostRefreshItems: def(
    'agent',
    'hvwatch_host_refresh_items',
    'gauge',
    ['fact'],
    'Host facts the background refresher keeps fresh (cgroups, VMM processes); for fact=cgroup_walk, 1 while a background cgroupfs walk is under way.',
  ),
  collectSeconds: def('agent', 'hvwatch_collect_duration_seconds', 'gauge', [], 'Time the last scrape spent reading BPF maps and cgroupfs.', 'seconds'),
  recordBytes: def('agent', 'hvwatch_record_written_bytes', 'gauge', [], 'Bytes written so far to the trace file by `hvwatch record`.', 'bytes'),
  recordDropped: def(
    'agent',
    'hvwatch_record_dropped_total',
    'counter',
    ['type'],
    'Trace records not written by `hvwatch record` because --max-bytes was reached: snapshots, ring-buffer events (counted one by one) and identity updates (type).',
  ),
  httpRejected: def(
    'agent',
    'hvwatch_http_requests_rejected_total',
    'counter',
    ['reason'],
    'HTTP requests or connections the endpoint refused, by reason (concurrency, unauthorized, timeout, header_too_large, body, bad_request, connections, tls).',
  ),
  webConfigReloads: def(
    'agent',
    'hvwatch_web_config_reloads_total',
    'counter',
    ['result'],
    'Reloads of the web config file (--web.config.file) after a change or SIGHUP, by result (success, failure; a failure keeps the previous config).',
  ),
  capabilitiesDropped: def(
    'agent',
    'hvwatch_capabilities_dropped',
    'gauge',
    [],
    '1 once the agent dropped every capability after attaching (privileges.dropCapabilities), 0 while it holds them.',
  ),
  privilegedThreads: def(
    'agent',
    'hvwatch_privileged_threads',
    'gauge',
    [],
    'Threads of the agent whose effective capability set is not empty (0 after a complete drop; see README "Privileges").',
  ),
  alertEvaluations: def(
    'agent',
    'hvwatch_alerting_evaluations_total',
    'counter',
    ['result'],
    'In-process alert evaluations (only with alerting.alertmanagers set), by result (ok, error: the evaluation threw and was skipped).',
  ),
  alertsFiring: def(
    'agent',
    'hvwatch_alerting_firing_alerts',
    'gauge',
    [],
    'Alerts the agent itself has firing (in-process conditions), as of its last evaluation.',
  ),
  alertsSent: def(
    'agent',
    'hvwatch_alertmanager_alerts_sent_total',
    'counter',
    ['alertmanager'],
    'Alerts (firing, re-sent or resolved) each Alertmanager accepted from the agent.',
  ),
  alertPostFailures: def(
    'agent',
    'hvwatch_alertmanager_post_failures_total',
    'counter',
    ['alertmanager'],
    'POSTs to an Alertmanager that failed (network error, timeout, non-2xx); retried with backoff.',
  ),
  alertsDropped: def(
    'agent',
    'hvwatch_alertmanager_alerts_dropped_total',
    'counter',
    ['alertmanager', 'reason'],
    'Alerts the agent gave up delivering, by reason (queue_full: the bounded queue overflowed; failed: last retry failed or Alertmanager rejected them).',
  ),
  alertsQueued: def('agent', 'hvwatch_alertmanager_queued_alerts', 'gauge', ['alertmanager'], 'Alerts waiting in the queue for an Alertmanager.'),

  // ---- memcg family (tracepoint tier) ----
  memcgWbStarted: def(
    'memcg',
    'hvwatch_memcg_writeback_started_pages_total',
    'counter',
    CG,
    'Pages that entered writeback, per memory cgroup (NR_WRITEBACK increments).',
    'pages',
  ),
  memcgWbCompleted: def(
    'memcg',
    'hvwatch_memcg_writeback_completed_pages_total',
    'counter',
    CG,
    'Pages whose writeback completed, per memory cgroup (NR_WRITEBACK decrements).',
    'pages',
  ),
  memcgWbWaits: def(
    'memcg',
    'hvwatch_memcg_writeback_waits_total',
    'counter',
    CG,
    'Times a task of this memory cgroup waited for a folio under writeback (writeback:folio_wait_writeback).',
  ),
  memcgWbWaitTime: hist(
    'memcg',
    'hvwatch_memcg_writeback_wait_seconds',
    CG,
    "Time a task of this memory cgroup waited for one folio's writeback (folio_wait_writeback; zero when it did not sleep).",
    'seconds',
    NS(8, 34),
  ),
  memcgUnchargeBatchPages: hist(
    'memcg',
    'hvwatch_memcg_uncharge_batch_pages',
    CG,
    'Pages per uncharge batch, per memory cgroup (uncharge_batch, or PGPGOUT batch sizes on cgroup v1); its count is the batches, its sum the pages uncharged.',
    'pages',
    PAGES,
  ),
  memcgStatDirty: def(
    'memcg',
    'hvwatch_memcg_stat_dirty_bytes',
    'gauge',
    CG,
    'Dirty page cache of the cgroup, from memory.stat (read at first sight, then re-read in the background about every 10 s).',
    'bytes',
  ),
  memcgStatWriteback: def(
    'memcg',
    'hvwatch_memcg_stat_writeback_bytes',
    'gauge',
    CG,
    'Page cache under writeback in the cgroup, from memory.stat (read at first sight, then re-read in the background about every 10 s).',
    'bytes',
  ),

  // ---- memcg family, function tiers (fentry/kprobe) and race indicators ----
  memcgWbLatency: hist(
    'memcg_fn',
    'hvwatch_memcg_writeback_latency_seconds',
    CG,
    "Time from a folio's writeback start to its writeback end, per memory cgroup (at start).",
    'seconds',
    NS(10, 36),
  ),
  memcgWbEndDuration: hist(
    'memcg_fn',
    'hvwatch_memcg_writeback_end_duration_seconds',
    CG,
    'Time spent inside writeback end (__folio_end_writeback), per memory cgroup.',
    'seconds',
    NS(6, 30),
  ),
  memcgUnchargeDuration: hist(
    'memcg_fn',
    'hvwatch_memcg_uncharge_duration_seconds',
    CG,
    'Time spent inside one uncharge call (__mem_cgroup_uncharge[_folios]), per memory cgroup of its first folio.',
    'seconds',
    NS(6, 30),
  ),
  memcgUnchargedFolios: def('memcg_fn', 'hvwatch_memcg_uncharged_folios_total', 'counter', CG, 'Folios uncharged (uncharge_folio), per memory cgroup.'),
  memcgRaceEvents: def(
    'memcg_fn',
    'hvwatch_memcg_race_events_total',
    'counter',
    ['kind'],
    'memcg writeback/uncharge race indicators by kind (docs/metrics.md "Race indicators"); any increase deserves a look.',
  ),
  memcgRaceStateEvictions: def(
    'memcg_fn',
    'hvwatch_memcg_race_state_evictions_total',
    'counter',
    [],
    'Per-folio race-tracking entries evicted by the LRU bound before their writeback ended.',
  ),
  memcgRaceStateReaped: def(
    'memcg_fn',
    'hvwatch_memcg_race_state_reaped_total',
    'counter',
    [],
    'Writeback-end markers older than 1 s (their exit was never seen) that were cleared instead of trusted.',
  ),
  memcgWbUnpairedEnds: def(
    'memcg_fn',
    'hvwatch_memcg_writeback_unpaired_ends_total',
    'counter',
    [],
    'Writeback ends with no recorded start (started before attach, or evicted): no latency for them.',
  ),

  // ---- kvm family: exits, nested virtualization, nested-state save/restore (seed 000) ----
  kvmVmInfo: def(
    'kvm',
    'hvwatch_kvm_vm_info',
    'gauge',
    ['vm', 'pid', 'source'],
    'Always 1 for each VM (VMM process) seen by the KVM probes; source says where its name came from (qemu, libvirt, firecracker, cloud-hypervisor, pid).',
  ),
  kvmExits: def('kvm', 'hvwatch_kvm_exits_total', 'counter', ['vm', 'isa', 'reason'], 'VM-exits (kvm:kvm_exit) per VM, ISA (vmx/svm) and exit reason.'),
  kvmExitHandling: hist(
    'kvm',
    'hvwatch_kvm_exit_handling_seconds',
    ['vm', 'isa', 'reason'],
    "Time from a VM-exit to the same vCPU's next VM-entry (kvm_exit to kvm_entry), per exit reason.",
    'seconds',
    NS(8, 34),
  ),
  kvmVcpuExits: def('kvm', 'hvwatch_kvm_vcpu_exits_total', 'counter', ['vm', 'vcpu'], 'VM-exits per vCPU (only with kvm.vcpuLabel: true in the config).'),
  kvmUserspaceExits: def(
    'kvm',
    'hvwatch_kvm_userspace_exits_total',
    'counter',
    ['vm', 'reason'],
    'Returns from KVM_RUN to the VMM (kvm:kvm_userspace_exit) per VM and KVM_EXIT_* reason ("restart"/"error" when KVM_RUN failed).',
  ),
  kvmUserspaceTime: hist(
    'kvm',
    'hvwatch_kvm_userspace_seconds',
    ['vm', 'reason'],
    'Time the VMM spent in userspace after a KVM_RUN return until its next KVM_RUN, per exit reason.',
    'seconds',
    NS(8, 34),
  ),
  kvmPio: def('kvm', 'hvwatch_kvm_pio_total', 'counter', ['vm', 'direction'], 'Port I/O exits (kvm:kvm_pio) per VM and direction (in/out).'),
  kvmMmio: def(
    'kvm',
    'hvwatch_kvm_mmio_total',
    'counter',
    ['vm', 'type'],
    'MMIO accesses handled by KVM (kvm:kvm_mmio) per VM and type (read, write, unsatisfied_read).',
  ),
  kvmEmulated: def(
    'kvm',
    'hvwatch_kvm_emulated_instructions_total',
    'counter',
    ['vm', 'result'],
    'Instructions emulated by KVM (kvm:kvm_emulate_insn) per VM and result (ok, failed).',
  ),
  kvmNestedExits: def(
    'kvm',
    'hvwatch_kvm_nested_exits_total',
    'counter',
    ['vm', 'isa', 'reason', 'handler'],
    'VM-exits of an L2 guest per VM and reason; handler="l0" when the host handled it, "l1" when it was reflected to the L1 hypervisor.',
  ),
  kvmNestedL1Handling: hist(
    'kvm',
    'hvwatch_kvm_nested_l1_handling_seconds',
    ['vm', 'isa', 'reason'],
    "Time the L1 hypervisor took to handle a reflected exit: from kvm_nested_vmexit_inject to that vCPU's next kvm_nested_vmenter.",
    'seconds',
    NS(8, 34),
  ),
  kvmNestedVmenters: def(
    'kvm',
    'hvwatch_kvm_nested_vmenters_total',
    'counter',
    ['vm'],
    'Nested VM-entries (VMRUN/VMLAUNCH/VMRESUME by L1 emulated by KVM, kvm:kvm_nested_vmenter) per VM.',
  ),
  kvmNestedVmenterFailures: def(
    'kvm',
    'hvwatch_kvm_nested_vmenter_failures_total',
    'counter',
    ['vm', 'message'],
    'Failed nested VM-entry consistency checks (kvm:kvm_nested_vmenter_failed) per VM and kernel message.',
  ),
  kvmNestedIntrExits: def(
    'kvm',
    'hvwatch_kvm_nested_intr_exits_total',
    'counter',
    ['vm'],
    'Exits from L2 to L1 caused by a pending interrupt (kvm:kvm_nested_intr_vmexit) per VM.',
  ),
  kvmNestedStateOps: def(
    'kvm',
    'hvwatch_kvm_nested_state_ops_total',
    'counter',
    ['vm', 'op', 'result'],
    'KVM_GET_NESTED_STATE (op="get") and KVM_SET_NESTED_STATE (op="set") ioctls per VM and result ("ok" or the errno name).',
  ),
  kvmNestedStateOpTime: hist(
    'kvm',
    'hvwatch_kvm_nested_state_op_seconds',
    ['vm', 'op'],
    'Time inside KVM_GET_NESTED_STATE / KVM_SET_NESTED_STATE ioctls per VM.',
    'seconds',
    NS(6, 30),
  ),
  kvmNestedStateSaves: def(
    'kvm',
    'hvwatch_kvm_nested_state_saves_total',
    'counter',
    ['vm', 'flag'],
    'Successful KVM_GET_NESTED_STATE saves per VM whose flags had GUEST_MODE or RUN_PENDING set: the saves that are risky to restore elsewhere.',
  ),
  kvmUnpaired: def(
    'kvm',
    'hvwatch_kvm_unpaired_events_total',
    'counter',
    ['pairing'],
    'Paired events whose opening half was missing or belonged to another VM (exit_entry, nested_l1, userspace), so no latency was recorded.',
  ),
  // ---- kvmi family: VM introspection events and commands (seed 001; KVMI v7..v12 kernels only) ----
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

  // ---- kvm_irq family: interrupt injection and irqchip teardown (seed 003) ----
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

  // ---- ima family: measurement, appraisal and the integrity cache (seed 004) ----
  imaPresent: def(
    'ima',
    'hvwatch_ima_present',
    'gauge',
    [],
    '1 if this kernel has IMA built in and active, 0 if not (the ima probes are then "not present"; `hvwatch probes` says whether IMA is not built or built but off).',
  ),
  imaCheckDuration: hist(
    'ima',
    'hvwatch_ima_check_duration_seconds',
    CG,
    'Time inside one IMA check of a file (process_measurement: policy lookup, and measurement/appraisal when the policy asks), per cgroup of the opening task.',
    'seconds',
    NS(6, 34),
  ),
  imaMeasurementDuration: hist(
    'ima',
    'hvwatch_ima_measurement_duration_seconds',
    CG,
    'Time reading and hashing a file for IMA (ima_collect_measurement), per cgroup of the opening task; its count is the files hashed.',
    'seconds',
    NS(8, 36),
  ),
  imaAppraisalDuration: hist(
    'ima',
    'hvwatch_ima_appraisal_duration_seconds',
    CG,
    'Time appraising a file against its security.ima value (ima_appraise_measurement), per cgroup of the opening task; its count is the appraisals.',
    'seconds',
    NS(6, 34),
  ),
  imaMeasurements: def(
    'ima',
    'hvwatch_ima_measurements_total',
    'counter',
    CG,
    'Measurements added to the IMA measurement list (one line of ascii_runtime_measurements each), per cgroup of the task whose access was measured.',
  ),
  imaViolations: def(
    'ima',
    'hvwatch_ima_violations_total',
    'counter',
    CG,
    'IMA violation entries added to the measurement list (open-writers, ToMToU), per cgroup.',
  ),
  imaCacheAllocations: def(
    'ima',
    'hvwatch_ima_cache_allocations_total',
    'counter',
    CG,
    'Integrity-cache entries (iint) allocated for an inode, per cgroup of the task whose access allocated it.',
  ),
  imaCacheFrees: def(
    'ima',
    'hvwatch_ima_cache_frees_total',
    'counter',
    [],
    'Integrity-cache entries freed with their inode (including those allocated before the agent attached).',
  ),
  imaCacheEntries: def(
    'ima',
    'hvwatch_ima_cache_entries',
    'gauge',
    [],
    "Integrity-cache entries allocated since the agent attached and not freed yet: the cache's growth (entries from before attach are not in it).",
  ),
  imaInodeReuse: withZeros(
    def(
      'ima',
      'hvwatch_ima_inode_reuse_total',
      'counter',
      ['kind'],
      'Inode pointers seen by the integrity cache again with another (device, i_ino, i_generation): kind="after_free" after the old identity\'s entry was freed (a slab object\'s normal second life), kind="live_state" while the old identity\'s entry was never seen freed (state kept for an inode that is gone). Each is in /api/races with both identities (docs/metrics.md "Race indicators").',
    ),
    { kind: ['after_free', 'live_state'] },
  ),
  imaStateEvents: withZeros(
    def(
      'ima',
      'hvwatch_ima_state_events_total',
      'counter',
      ['kind'],
      'IMA probe state the BPF side could not use as asked: untracked_free (an entry freed whose allocation was not seen: before attach, or evicted from the bounded state map), unpaired (a function exit with no recorded entry).',
    ),
    { kind: ['untracked_free', 'unpaired'] },
  ),
} as const satisfies Record<string, MetricDef>;

export type MetricKey = keyof typeof M;

export const ALL_METRICS: readonly MetricDef[] = Object.values(M);

/** Series of one cgroup or VM: born at their first non-zero value, removed with their object
 * (README "Series lifecycle"). Every other series is exported from start-up. */
export function isPerObject(def: MetricDef): boolean {
  return def.labels.includes('cgroup') || def.labels.includes('vm');
}

export function metricByName(name: string): MetricDef | undefined {
  return ALL_METRICS.find((m) => m.name === name);
}
