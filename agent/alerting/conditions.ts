// The conditions the agent evaluates in process. Their names, severities and texts are
// also what alerts/rules.ts uses for the Prometheus rules of the same name, so an alert
// raised by the agent and the one raised by Prometheus read the same and, with the same
// labels, are one alert in Alertmanager.
import { M, type MetricDef } from '../catalog.js';

export type Severity = 'critical' | 'warning' | 'info';

type Text = (labels: Readonly<Record<string, string>>) => string;

export interface AlertIdentity {
  readonly name: string;
  readonly severity: Severity;
  readonly summary: Text;
  readonly description: Text;
}

export interface Condition extends AlertIdentity {
  readonly metric: MetricDef;
  /**
   * increase: fires when a series' value rose since the last evaluation and stays firing
   *           for holdSeconds after the last rise (a counter's events are instants);
   * zero:     fires while a series' value is 0 (a state).
   */
  readonly kind: 'increase' | 'zero';
}

export const RACE: Condition = {
  name: 'HvwatchMemcgRaceIndicator',
  severity: 'critical',
  metric: M.memcgRaceEvents,
  kind: 'increase',
  summary: (l) => `memcg race indicator ${l.kind} on ${l.instance}`,
  description: (l) =>
    `hvwatch counted the memcg writeback/uncharge race indicator ${l.kind} on ${l.instance}. ` +
    'This is the race class that ends in a NULL memcg dereference in writeback end. ' +
    'The events, with both cgroups, pid, comm, CPU and kernel stack, are at GET /api/races on the node.',
};

export const PROBE_NOT_ATTACHED: Condition = {
  name: 'HvwatchProbeNotAttached',
  severity: 'warning',
  metric: M.probeAttached,
  kind: 'zero',
  summary: (l) => `hvwatch probe ${l.probe} did not attach on ${l.instance}`,
  description: (l) =>
    `The enabled probe ${l.probe} attached none of its candidates on ${l.instance}, ` +
    'so what it measures is not observed there. `hvwatch probes` on the node says why each candidate failed.',
};

export const RINGBUF_DROPS: Condition = {
  name: 'HvwatchRingBufferDrops',
  severity: 'warning',
  metric: M.ringbufDropped,
  kind: 'increase',
  summary: (l) => `hvwatch ring buffer of family ${l.family} dropped events on ${l.instance}`,
  description: (l) =>
    `The BPF side of family ${l.family} on ${l.instance} found its ring buffer full and dropped events. ` +
    'Counters stay right (they are kept in the kernel) but event details (GET /api/races, logs) are missing.',
};

export const IRQ_AFTER_TEARDOWN: Condition = {
  name: 'HvwatchKvmIrqAfterTeardown',
  severity: 'critical',
  metric: M.kvmIrqAfterTeardown,
  kind: 'increase',
  summary: (l) => `interrupt injected into VM ${l.vm} after its irqchip teardown began, on ${l.instance}`,
  description: (l) =>
    `hvwatch saw an interrupt injection (${l.path}) into VM ${l.vm} on ${l.instance} after that VM's irqchip or device teardown had begun. ` +
    'An injection that reaches a destroyed irqchip is a use-after-free in the host kernel.',
};

/** What the agent evaluates in process: the host-local conditions that should not wait for a scrape. */
export const IN_PROCESS_CONDITIONS: readonly Condition[] = [RACE, IRQ_AFTER_TEARDOWN, PROBE_NOT_ATTACHED, RINGBUF_DROPS];
