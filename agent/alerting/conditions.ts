// The conditions the agent evaluates in process: each registered family's (its family.ts
// `conditions`) and the agent's own below. Their names, severities and texts are also what
// the Prometheus rules of the same name use (alerts/rules.ts, families/<name>/alerts.ts), so
// an alert raised by the agent and the one raised by Prometheus read the same and, with the
// same labels, are one alert in Alertmanager.
import { AGENT_METRICS as M } from '../agent-metrics.js';
import { FAMILY_MODULES } from '../../families/index.js';
import type { Condition } from '../model/alert.js';

export type { AlertIdentity, Condition, Severity } from '../model/alert.js';

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

/** What the agent evaluates in process: the host-local conditions that should not wait for a
 * scrape, the families' (in registry order) first. */
export const IN_PROCESS_CONDITIONS: readonly Condition[] = [
  ...FAMILY_MODULES.flatMap((f): readonly Condition[] => ('conditions' in f ? f.conditions : [])),
  PROBE_NOT_ATTACHED,
  RINGBUF_DROPS,
];
