// IMA per node and cgroup (seed 004): measurements and their hashing time, appraisals, the
// time IMA adds to each file check, the integrity cache's growth (allocations, frees, live
// entries) and the inode pointer-reuse indicator.
import { M, type MetricDef } from '../../agent/catalog.js';
import { by, heatmapQueries, quantile, re, series } from '../../alerts/promql.js';
import { U, dashboard, datasourceVar, graph, heat, labelVar, single } from '../../dashboards/lib.js';
import { nodeVar } from '../../dashboards/vars.js';

const NODE = { instance: re('$node') };
const CG = { ...NODE, cgroup: re('$cgroup') };
const LEG = '{{instance}} {{cgroup}}';

const perCgroup = (d: MetricDef): string => `sum ${by(['instance', 'cgroup'], d)} (rate(${series(d, CG)}[$__rate_interval]))`;
const p99 = (d: MetricDef): string => quantile(0.99, d, ['instance', 'cgroup'], '$__rate_interval', CG);
const inRange = (d: MetricDef, m: Record<string, string> = {}): string => `sum(increase(${series(d, { ...NODE, ...m })}[$__range])) or vector(0)`;

const cgroupVar = (): ReturnType<typeof labelVar> =>
  labelVar(
    'cgroup',
    'Cgroup',
    'label_values({__name__=~"hvwatch_ima_.+", instance=~"$node"}, cgroup)',
    'Cgroups (paths) whose tasks IMA measured, appraised or checked files for, on the selected nodes.',
  );

export const ima = () =>
  dashboard({
    uid: 'hvwatch-ima',
    title: 'hvwatch / IMA integrity measurement',
    description:
      "Per node and cgroup: IMA measurements and their hashing time, appraisals, the time IMA adds to file checks, the integrity cache's growth and inode pointer reuse (seed 004).",
    variables: [datasourceVar(), nodeVar(), cgroupVar()],
    sections: [
      {
        row: 'Measurement and appraisal',
        panels: [
          single({
            title: 'Nodes with IMA',
            unit: U.count,
            description:
              'Selected nodes whose kernel has IMA built in and active (hvwatch_ima_present = 1); on the others the ima probes are "not present" and this dashboard stays empty by design.',
            queries: [{ expr: `count(${series(M.imaPresent, NODE)} == 1) or vector(0)` }],
          }),
          single({
            title: 'Live-state pointer reuse, in range',
            unit: U.of('reuses'),
            redAbove: 1,
            description:
              "Inode pointers that came back with another identity while the old inode's integrity-cache entry was never freed, in the time range (alert HvwatchImaInodePointerReuse; seed 004).",
            queries: [{ expr: inRange(M.imaInodeReuse, { kind: 'live_state' }) }],
          }),
          graph({
            title: 'Measurements',
            unit: U.perSecond('measurements'),
            w: 16,
            description:
              'Entries added to the IMA measurement list per second (each one line of ascii_runtime_measurements), per node and cgroup of the task whose access was measured.',
            queries: [{ expr: perCgroup(M.imaMeasurements), legend: LEG }],
          }),
          heat({
            title: 'Hashing time per measurement',
            unit: U.seconds,
            description: 'Files by the time IMA took to read and hash them (ima_collect_measurement, log2 buckets), over the selected nodes and cgroups.',
            queries: heatmapQueries(M.imaMeasurementDuration, CG),
          }),
          graph({
            title: 'Hashing p99',
            unit: U.seconds,
            description: '99th percentile of the time to read and hash one file, per node and cgroup: large files, slow storage, or a slow hash algorithm.',
            queries: [{ expr: p99(M.imaMeasurementDuration), legend: LEG }],
          }),
          graph({
            title: 'Appraisal p99',
            unit: U.seconds,
            description: '99th percentile of the time to appraise one file against its security.ima value (ima_appraise_measurement), per node and cgroup.',
            queries: [{ expr: p99(M.imaAppraisalDuration), legend: LEG }],
          }),
          graph({
            title: 'Time IMA adds per file check, p99',
            unit: U.seconds,
            description:
              '99th percentile of the time inside one IMA check (process_measurement; ima_file_check on kernels before 6.6), per node and cgroup: what an open, exec or mmap pays for IMA.',
            queries: [{ expr: p99(M.imaCheckDuration), legend: LEG }],
          }),
          graph({
            title: 'Violations',
            unit: U.perSecond('violations'),
            description: 'IMA violation entries per second (a file read while open for write, or opened for write while being measured), per node and cgroup.',
            queries: [{ expr: perCgroup(M.imaViolations), legend: LEG }],
          }),
        ],
      },
      {
        row: 'Integrity cache',
        panels: [
          graph({
            title: 'Live cache entries',
            unit: U.of('entries'),
            description:
              'Integrity-cache entries allocated since the agent attached and not freed yet, per node: growth without bound is what seed 004 warns about.',
            queries: [{ expr: `sum by (instance) (${series(M.imaCacheEntries, NODE)})`, legend: '{{instance}}' }],
          }),
          graph({
            title: 'Allocations per cgroup',
            unit: U.perSecond('entries'),
            description: 'Integrity-cache entries allocated per second, per node and cgroup of the task whose access allocated them.',
            queries: [{ expr: perCgroup(M.imaCacheAllocations), legend: LEG }],
          }),
          graph({
            title: 'Frees',
            unit: U.perSecond('entries'),
            description: 'Integrity-cache entries freed with their inode per second, per node.',
            queries: [{ expr: `sum by (instance) (rate(${series(M.imaCacheFrees, NODE)}[$__rate_interval]))`, legend: '{{instance}}' }],
          }),
          graph({
            title: 'Inode pointer reuse',
            unit: U.perSecond('reuses'),
            description:
              "Inode pointers seen again with another identity, per node and kind: after_free is a slab object's normal second life; live_state is state kept for an inode that is gone. Each event is in /api/races with both identities.",
            queries: [{ expr: `sum by (instance, kind) (rate(${series(M.imaInodeReuse, NODE)}[$__rate_interval]))`, legend: '{{instance}} {{kind}}' }],
          }),
        ],
      },
    ],
  });

/** The boards this family's folder owns (dashboards/generate.ts gathers them in registry order). */
export const boards = { 'ima.json': ima };
