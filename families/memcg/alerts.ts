// The hvwatch.memcg alert group (alerts/hvwatch.rules.yml, alerts/README.md): the alerts of this
// family's metrics, and of the memcg_fn family it is shown with. alerts/rules.ts gathers every registered family's
// group (families/<name>/alerts.ts) in registry order.
import { M } from '../../agent/catalog.js';
import { RACE } from '../memcg_fn/family.js';
import { EVENT_WINDOW, increased, shared, type AlertRule, type RuleGroup } from '../../alerts/lib.js';
import { RECORDING } from '../../alerts/recording.js';

/** Folio writeback normally completes in milliseconds; seconds at p99 is a stalled device or io.max throttling. */
export const WRITEBACK_P99_SECONDS = 2;

const rules: AlertRule[] = [
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

export const group: RuleGroup<AlertRule> = { name: 'hvwatch.memcg', rules };
