// The one metric catalog: the agent's own metrics (below) and every registered family's
// (families/<name>/metrics.ts, gathered through the registry families/index.ts). The
// exporter, the dashboards and the alert rules import names from here, and
// test/catalog.test.ts fails if the exposition and this list disagree. What a metric is,
// and the helpers the blocks are written with: agent/model/metric.ts.
import { FAMILY_MODULES } from '../families/index.js';
import { def, withZeros, type MetricDef } from './model/metric.js';

export { isPerObject, type MetricDef, type MetricType } from './model/metric.js';

export const AGENT_METRICS = {
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
} as const satisfies Record<string, MetricDef>;

type FamilyMetrics = (typeof FAMILY_MODULES)[number]['metrics'];
type Merged<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never;

function gather(): typeof AGENT_METRICS & Merged<FamilyMetrics> {
  const all: Record<string, MetricDef> = { ...AGENT_METRICS };
  const byName = new Map<string, string>(Object.values(AGENT_METRICS).map((d) => [d.name, 'agent']));
  for (const f of FAMILY_MODULES) {
    for (const [key, d] of Object.entries(f.metrics as Readonly<Record<string, MetricDef>>)) {
      // One name, one definition: a family may list a shared metric (kvm lists the vm info
      // the VM label service publishes) but never redefine another's key or name.
      if (all[key] && all[key] !== d) throw new Error(`catalog: metric key ${key} of family ${f.name} is already defined`);
      const owner = byName.get(d.name);
      if (owner && all[key] !== d) throw new Error(`catalog: metric ${d.name} of family ${f.name} is already defined by ${owner}`);
      all[key] = d;
      byName.set(d.name, f.name);
    }
  }
  return all as typeof AGENT_METRICS & Merged<FamilyMetrics>;
}

export const M = gather();

export type MetricKey = keyof typeof M;

export const ALL_METRICS: readonly MetricDef[] = Object.values(M);

export function metricByName(name: string): MetricDef | undefined {
  return ALL_METRICS.find((m) => m.name === name);
}
