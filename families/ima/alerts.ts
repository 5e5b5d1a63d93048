// The hvwatch.ima alert group (alerts/hvwatch.rules.yml, alerts/README.md): the alerts of this
// family's metrics. alerts/rules.ts gathers every registered family's
// group (families/<name>/alerts.ts) in registry order.
import { M } from '../../agent/catalog.js';
import { EVENT_WINDOW, increased, type AlertRule, type RuleGroup } from '../../alerts/lib.js';

const rules: AlertRule[] = [
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

export const group: RuleGroup<AlertRule> = { name: 'hvwatch.ima', rules };
