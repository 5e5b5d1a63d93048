// The ima family's metrics: measurement, appraisal and the integrity cache. agent/catalog.ts gathers every
// registered family's block into the one catalog; docs/metrics.md is generated from it.
import { CG, def, hist, NS, withZeros, type MetricDef } from '../../agent/model/metric.js';

export const IMA_METRICS = {
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
