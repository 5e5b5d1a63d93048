// Every Prometheus rule hvwatch ships: recording rules (what dashboards and alerts share)
// and alerts, each with a runbook section in alerts/README.md. Metric names come from the
// catalog; the alerts the agent also raises in process (agent/alerting) take their name,
// severity and text from there, so both read the same.
import { existsSync } from 'node:fs';
import { M } from '../agent/catalog.js';
import { PROBE_NOT_ATTACHED, RINGBUF_DROPS } from '../agent/alerting/conditions.js';
import { runbookUrl } from '../agent/alerting/index.js';
import { FAMILY_MODULES } from '../families/index.js';
import { JOB, series } from './promql.js';
import { EVENT_WINDOW, increased, shared, type AlertRule, type RecordingRule, type RuleGroup } from './lib.js';
import { RECORDING } from './recording.js';

export type { AlertRule, RecordingRule, RuleGroup } from './lib.js';
export { RECORDING };

/** In-kernel BPF time per node, in CPU-seconds per second (0.05 = 5 % of one core); the cost targets of docs/cost.md are ~1-3 % of a workload. */
export const BPF_CPU_BUDGET = 0.05;

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

/** Each registered family's group (families/<name>/alerts.ts, optional), in registry order. */
async function familyGroups(): Promise<RuleGroup<AlertRule>[]> {
  const out: RuleGroup<AlertRule>[] = [];
  for (const f of FAMILY_MODULES) {
    const file = new URL(`../families/${f.name}/alerts.js`, import.meta.url);
    if (!existsSync(file)) continue;
    const mod = (await import(file.href)) as { group?: RuleGroup<AlertRule> };
    if (!mod.group) throw new Error(`families/${f.name}/alerts.ts exports no group`);
    out.push(mod.group);
  }
  return out;
}

export const ALERT_GROUPS: RuleGroup<AlertRule>[] = [...(await familyGroups()), { name: 'hvwatch.agent', rules: agentAlerts }];

export const ALL_ALERTS: AlertRule[] = ALERT_GROUPS.flatMap((g) => g.rules);

export { runbookUrl };
