// The ima family (families/ima/family.ts, families/ima/ima.bpf.c) attached for real with fentry in Debian
// 6.1 / 6.12 guests under QEMU (test/vm/harness.ts), no mocks. One boot per kernel, with
// ima_appraise=fix on the command line: the script mounts securityfs, makes an ext4 file system
// on a loop device with a fixed UUID, and writes one IMA policy that measures and appraises
// FILE_CHECK on that file system only (fsuuid=), so nothing else the guest does (the agent, node,
// the 9p root) is measured. Then, with the agent running on loopback:
//  - N new files with distinct contents are read from a shell in the test's cgroup: the agent must
//    count exactly N measurements under that cgroup, and the kernel's own measurement list
//    (ascii_runtime_measurements) must have grown by exactly N lines;
//  - files are created, read and deleted one by one until the agent reports an inode pointer
//    reuse: the reuse is counted, and its /api/races event pairs two identities the script really
//    created, in order (each file's i_ino and i_generation are recorded with lsattr -v).
//  - the same churn with the ima_cache_free probe disabled: each reuse is then live_state (the
//    old entry was never seen freed), the kind the alert fires on.
// The hosts we run on have no IMA (and no fentry/kprobes), so this is where these probes meet
// real kernel events. Skips, with the reason in the title, when QEMU/tools/kernels are unavailable.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { M } from '../../agent/catalog.js';
import { declaredFamilies } from '../../agent/families.js';
import { parseExposition, pick, value, type Sample } from '../helpers/agent.js';
import {
  GUEST_AGENT_SHELL,
  describeRun,
  guestPlan,
  runInGuest,
  vmUnavailableReason,
  type GuestResult,
  type KernelEntry,
  hostToolsReason,
  q,
} from './harness.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url)); // dist/test/vm/ -> repo root
const HVWATCH = path.join(ROOT, 'bin/hvwatch');
const GUEST_TIMEOUT_MS = 240_000;
const CGROUP = 'hvwatch-guest-ima';
const LABELS = { cgroup: `/${CGROUP}` };
const N = 40; // new files read: N measurements
const MAX_REUSE_ROUNDS = 400; // create/read/delete rounds at most, until a pointer comes back
const FSUUID = '6b1d3c1e-5a3f-4c57-9a0e-1d2c3b4a5f60';
const IMA_PROBES = ['ima_check', 'ima_measure', 'ima_appraise', 'ima_log_entry', 'ima_cache_get', 'ima_cache_free'];
const SERIES = ['6.1', '6.12'];
// Only the ima family runs: every other probe is disabled, so the agent's log is about ima.
const OTHERS_OFF = declaredFamilies()
  .filter((f) => f.name !== 'ima')
  .flatMap((f) => f.probes)
  .map((p) => `--disable ${p.name}`)
  .join(' ');

const commonReason = hostToolsReason(ROOT, [
  ['losetup', 'apt-get install mount'],
  ['mkfs.ext4', 'apt-get install e2fsprogs'],
  ['lsattr', 'apt-get install e2fsprogs'],
  ['ip', 'apt-get install iproute2'],
]);
const vmReason = commonReason ?? vmUnavailableReason();
const plan = await guestPlan(SERIES, vmReason);

const SCRIPT = `
set -u
HVWATCH=${q(HVWATCH)}
PORT=9478
URL=http://127.0.0.1:$PORT
CGN=${q(CGROUP)}
${GUEST_AGENT_SHELL}metric() { get "$URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
echo "release=$(uname -r)"
echo "cmdline=$(cat /proc/cmdline)"
ip link set lo up || fail 'cannot bring up loopback'

# ---- IMA: securityfs, and whether IMA initialized ----
SEC=/sys/kernel/security
mountpoint -q $SEC || mount -t securityfs securityfs $SEC || fail 'mount securityfs'
echo "lsm=$(cat $SEC/lsm 2>/dev/null)"
[ -d $SEC/ima ] || fail "no $SEC/ima: IMA not active"
ML=$SEC/ima/ascii_runtime_measurements
echo "measurements_at_boot=$(wc -l < $ML)"

# ---- the measured file system: ext4 on loop, fixed UUID ----
img=/run/hvwatch-ima.img
truncate -s 64M $img && mkfs.ext4 -q -F -U ${FSUUID} $img || fail 'mkfs.ext4'
dev=$(losetup -f --show $img) || fail 'losetup'
mkdir -p /mnt/ima && mount -t ext4 -o noatime "$dev" /mnt/ima || fail "mount ext4 on $dev"
echo "fs_dev=$(stat -c '%Hd:%Ld' /mnt/ima)"

# One write of the policy (CONFIG_IMA_WRITE_POLICY is off in Debian: the file goes away after it).
printf '%s\\n' 'measure func=FILE_CHECK mask=MAY_READ fsuuid=${FSUUID}' 'appraise func=FILE_CHECK fsuuid=${FSUUID}' > $SEC/ima/policy || fail 'write IMA policy'
echo "policy=written"

# ---- the cgroup ----
CGROOT=/sys/fs/cgroup
CG=$CGROOT/$CGN
mkdir "$CG" || fail "mkdir $CG"
inside() { bash -c 'echo $$ > "$0/cgroup.procs" && exec bash -c "$1"' "$CG" "$1"; }

start_agent ${OTHERS_OFF}
echo '<<<metrics-start'; get "$URL/metrics"; echo 'metrics-start>>>'
echo '<<<probes'; get "$URL/api/probes"; echo; echo 'probes>>>'

# ---- N new files read: N measurements ----
mkdir -p /mnt/ima/new
for i in $(seq ${N}); do echo "hvwatch ima file $i $RANDOM$RANDOM" > /mnt/ima/new/f$i; done
sync
m0=$(wc -l < $ML)
inside 'for i in $(seq ${N}); do cat /mnt/ima/new/f$i > /dev/null; done' || fail "read status $?"
m1=$(wc -l < $ML)
echo "log_delta=$((m1 - m0))"
want="${M.imaMeasurements.name}{cgroup=\\"/$CGN\\"}"
for i in $(seq 30); do v=$(metric "$want"); [ "\${v:-0}" -ge ${N} ] && break; sleep 1; done
sleep 1
echo "t_measured=$(ts)"
echo '<<<metrics-measured'; get "$URL/metrics"; echo 'metrics-measured>>>'
echo '<<<log-tail'; tail -n ${N} $ML | cut -c1-200; echo 'log-tail>>>'

# ---- create, read, delete until an inode pointer comes back (all of it in the cgroup) ----
echo $$ > "$CG/cgroup.procs" || fail 'move the script into the cgroup'
reuse="${M.imaInodeReuse.name}{kind=\\"after_free\\"}"
mkdir -p /mnt/ima/churn
echo '<<<idents'
for r in $(seq ${MAX_REUSE_ROUNDS}); do
  f=/mnt/ima/churn/c$r
  echo "churn $r $RANDOM" > $f
  # lsattr -v: "<generation> <flags> <path>"; stat: the inode number.
  echo "$r $(stat -c %i $f) $(lsattr -v $f | awk '{ print $1 }')"
  cat $f > /dev/null
  rm -f $f
  if [ $((r % 10)) = 0 ]; then
    sleep 0.2
    v=$(metric "$reuse"); [ "\${v:-0}" -ge 1 ] && break
  fi
done
echo 'idents>>>'
echo "reuse_rounds=$r"
sleep 1
echo "t_reused=$(ts)"
echo '<<<metrics-final'; get "$URL/metrics"; echo 'metrics-final>>>'
echo '<<<races'; get "$URL/api/races"; echo; echo 'races>>>'

kill $AG; wait $AG; echo "agent_exit=$?"
echo '<<<agent-stderr'; cat "$tmp/agent.err"; echo 'agent-stderr>>>'

# ---- the same churn with the free hook off: each reuse must now be live_state ----
read T0 _ < /proc/uptime # start_agent's 90 s budget counts from T0: a second agent gets its own
start_agent ${OTHERS_OFF} --disable ima_cache_free
live="${M.imaInodeReuse.name}{kind=\\"live_state\\"}"
mkdir -p /mnt/ima/churn2
echo '<<<idents2'
for r in $(seq ${MAX_REUSE_ROUNDS}); do
  f=/mnt/ima/churn2/c$r
  echo "churn2 $r $RANDOM" > $f
  echo "$r $(stat -c %i $f) $(lsattr -v $f | awk '{ print $1 }')"
  cat $f > /dev/null
  rm -f $f
  if [ $((r % 10)) = 0 ]; then
    sleep 0.2
    v=$(metric "$live"); [ "\${v:-0}" -ge 1 ] && break
  fi
done
echo 'idents2>>>'
echo "live_rounds=$r"
sleep 1
echo '<<<metrics-nofree'; get "$URL/metrics"; echo 'metrics-nofree>>>'
echo '<<<races-nofree'; get "$URL/api/races"; echo; echo 'races-nofree>>>'
kill $AG; wait $AG; echo "agent2_exit=$?"
echo "t_end=$(ts)"
exit 0
`;

interface GuestRun {
  g: GuestResult;
  kv: Record<string, string>;
  start: Sample[];
  measured: Sample[];
  final: Sample[];
  races: Record<string, unknown>[] | string;
  probes: { name: string; candidates: { attach: string; target: string; ok: boolean; error?: string }[] }[];
  idents: { round: number; ino: number; gen: number }[];
  agentStderr: string;
  nofree: Sample[];
  racesNofree: Record<string, unknown>[] | string;
  idents2: { round: number; ino: number; gen: number }[];
}

const between = (s: string, tag: string): string | undefined => new RegExp(`^<<<${tag}\\n([\\s\\S]*?)^${tag}>>>$`, 'm').exec(s)?.[1];

function parseGuest(g: GuestResult): GuestRun {
  const kv = Object.fromEntries(
    g.stdout.split('\n').flatMap((l) => {
      const m = /^(\w+)=(.*)$/.exec(l);
      return m ? [[m[1]!, m[2]!]] : [];
    }),
  );
  const scrape = (tag: string): Sample[] => {
    const t = between(g.stdout, tag);
    return t ? parseExposition(t) : [];
  };
  const racesText = between(g.stdout, 'races')?.trim() ?? '';
  let races: GuestRun['races'];
  try {
    races = JSON.parse(racesText) as Record<string, unknown>[];
  } catch {
    races = `unparseable: ${racesText.slice(0, 500)}`;
  }
  const identsOf = (tag: string): GuestRun['idents'] =>
    (between(g.stdout, tag) ?? '').split('\n').flatMap((l) => {
      const m = /^(\d+) (\d+) (\d+)$/.exec(l.trim());
      return m ? [{ round: Number(m[1]), ino: Number(m[2]), gen: Number(m[3]) }] : [];
    });
  const idents = identsOf('idents');
  const racesNofreeText = between(g.stdout, 'races-nofree')?.trim() ?? '';
  let racesNofree: GuestRun['racesNofree'];
  try {
    racesNofree = JSON.parse(racesNofreeText) as Record<string, unknown>[];
  } catch {
    racesNofree = `unparseable: ${racesNofreeText.slice(0, 500)}`;
  }
  let probes: GuestRun['probes'] = [];
  try {
    probes = JSON.parse(between(g.stdout, 'probes') ?? '[]') as GuestRun['probes'];
  } catch {
    /* asserted on below */
  }
  return {
    g,
    kv,
    probes,
    start: scrape('metrics-start'),
    measured: scrape('metrics-measured'),
    final: scrape('metrics-final'),
    races,
    idents,
    agentStderr: between(g.stdout, 'agent-stderr') ?? '',
    nofree: scrape('metrics-nofree'),
    racesNofree,
    idents2: identsOf('idents2'),
  };
}

const attachedVia = (s: Sample[], probe: string): string | undefined => pick(s, M.probeInfo.name, { probe })[0]?.labels['attach'];
const targetOf = (s: Sample[], probe: string): string | undefined => pick(s, M.probeInfo.name, { probe })[0]?.labels['target'];

const boots = new Map<string, Promise<GuestRun>>();
function boot(k: KernelEntry): Promise<GuestRun> {
  let p = boots.get(k.package);
  if (!p) {
    p = runInGuest(k, SCRIPT, { timeoutMs: GUEST_TIMEOUT_MS, modules: ['loop', 'ext4'], append: ['ima_appraise=fix'] }).then(parseGuest);
    boots.set(k.package, p);
  }
  return p;
}
async function guest(t: ExecutionContext, k: KernelEntry): Promise<GuestRun | undefined> {
  // Two boot attempts of GUEST_TIMEOUT_MS each, on CPUs other jobs share: past ava's default.
  t.timeout(2 * GUEST_TIMEOUT_MS + 60_000);
  const r = await boot(k);
  if (r.g.status === 0 && r.final.length) return r;
  t.fail(
    `guest script did not complete (${r.kv['guest_error'] ?? `status ${r.g.status}`})\n${r.agentStderr}\n${describeRun(r.g)}\n--- stdout ---\n${r.g.stdout.slice(-4000)}`,
  );
  return undefined;
}

for (const [k, skip] of plan) {
  const reason = vmReason ?? skip;
  const title = (what: string): string => `${k.name} guest kernel with IMA on, real fentry (QEMU): ${what}${reason ? ` (skipped: ${reason})` : ''}`;
  const run = reason ? test.skip : test.serial;

  run(
    title('the ima probes attach via fentry on the expected functions (6.1: kprobe for the 7-argument appraisal); IMA present; the agent runs clean'),
    async (t) => {
      const r = await guest(t, k);
      if (!r) return;
      const { g, kv, final } = r;
      t.log(
        `${k.package}: attempts=${g.attempts} wall=${g.seconds}s boot=${g.bootSeconds}s script=${g.scriptSeconds}s (agent ready ${kv['t_ready']}s, measured ${kv['t_measured']}s, reused ${kv['t_reused']}s, end ${kv['t_end']}s); lsm=${kv['lsm']}`,
      );
      t.log(`probes: ${IMA_PROBES.map((p) => `${p}=${attachedVia(final, p) ?? 'none'}:${targetOf(final, p) ?? '-'}`).join(' ')}`);
      t.is(kv['release'], k.release);
      t.is(value(final, M.imaPresent.name), 1);
      const v61 = k.name === '6.1';
      // 6.1's x86 BPF trampoline takes at most 6 register arguments (arch/x86/net/bpf_jit_comp.c
      // v6.1: "if (nr_regs > 6) return -ENOTSUPP"); process_measurement and ima_appraise_measurement
      // have 7, so on 6.1 the check falls to fentry on ima_file_check (2) and the appraisal to
      // kprobe. From 6.6 the trampoline takes up to 12 (MAX_BPF_FUNC_ARGS): all fentry on 6.12.
      for (const p of IMA_PROBES) t.is(attachedVia(final, p), v61 && p === 'ima_appraise' ? 'kprobe' : 'fentry', p);
      const tried = (probe: string, target: string) =>
        r.probes.find((x) => x.name === probe)?.candidates.find((c) => c.attach === 'fentry' && c.target === target);
      if (v61) {
        for (const [probe, fn] of [
          ['ima_check', 'process_measurement'],
          ['ima_appraise', 'ima_appraise_measurement'],
        ] as const) {
          const c = tried(probe, fn);
          t.log(`6.1 ${probe}: fentry ${fn}: ${c?.error?.split('\n')[0]}`);
          t.false(c?.ok ?? true, `fentry ${fn} refused on 6.1`);
          t.regex(
            c?.error ?? '',
            new RegExp(`^function ${fn} has 7 arguments; this kernel's BPF trampoline takes at most 6`),
            'refused by the precheck, not a failed attach',
          );
        }
      }
      const v69 = !v61; // 6.9+: the cache lives in the inode's LSM blob
      t.is(targetOf(final, 'ima_check'), v61 ? 'ima_file_check' : 'process_measurement');
      t.is(targetOf(final, 'ima_cache_get'), v69 ? 'ima_inode_get' : 'integrity_inode_get');
      t.is(targetOf(final, 'ima_cache_free'), v69 ? 'security_inode_free' : 'integrity_inode_free');
      t.is(kv['agent_exit'], '0');
      const bad = r.agentStderr.split('\n').filter((l) => l && !/^ts=\S+ level=(info|debug) /.test(l));
      t.deepEqual(bad, [], 'agent logged warnings/errors');
      t.is(value(final, M.imaStateEvents.name, { kind: 'unpaired' }), 0, 'every fexit had its fentry');
    },
  );

  run(title(`${N} new files read in the test's cgroup: exactly ${N} measurements there, and ${N} new lines in ascii_runtime_measurements`), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { kv, start, measured } = r;
    const got = (value(measured, M.imaMeasurements.name, LABELS) ?? 0) - (value(start, M.imaMeasurements.name, LABELS) ?? 0);
    const hash = {
      count: value(measured, `${M.imaMeasurementDuration.name}_count`, LABELS) ?? 0,
      sum: value(measured, `${M.imaMeasurementDuration.name}_sum`, LABELS) ?? 0,
    };
    const appr = value(measured, `${M.imaAppraisalDuration.name}_count`, LABELS) ?? 0;
    const check = value(measured, `${M.imaCheckDuration.name}_count`, LABELS) ?? 0;
    t.log(
      `measurements in cgroup: ${got}; measurement-list delta ${kv['log_delta']} (at boot ${kv['measurements_at_boot']}); hashed ${hash.count} (mean ${((hash.sum / Math.max(1, hash.count)) * 1e6).toFixed(1)} µs); appraisals ${appr}; checks ${check}; cache allocations ${JSON.stringify(pick(measured, M.imaCacheAllocations.name).map((x) => [x.labels['cgroup'], x.value]))}`,
    );
    t.is(Number(kv['log_delta']), N, "the kernel's measurement list grew by N");
    t.is(got, N, 'the agent counted N under the cgroup');
    t.is(hash.count, N, 'each new file hashed once, in the cgroup');
    t.true(hash.sum > 0);
    t.true(appr >= N, `appraisals ${appr} (appraise rule on the same file system, ima_appraise=fix)`);
    t.true(check >= N, `IMA checks ${check}`);
    // The files were created outside the cgroup: their iints were allocated there, at creation.
    const allocs = pick(measured, M.imaCacheAllocations.name).reduce((a, x) => a + x.value, 0);
    t.true(allocs >= N, `an iint per new file (all cgroups: ${allocs})`);
  });

  run(
    title(
      'files deleted and re-created until an inode pointer comes back: the reuse is counted and its event pairs two identities the script created, in order',
    ),
    async (t) => {
      const r = await guest(t, k);
      if (!r) return;
      const { kv, final, races, idents } = r;
      const reused = value(final, M.imaInodeReuse.name, { kind: 'after_free' }) ?? 0;
      t.log(
        `rounds ${kv['reuse_rounds']}; reuse after_free=${reused} live_state=${value(final, M.imaInodeReuse.name, { kind: 'live_state' })}; ` +
          `frees ${value(final, M.imaCacheFrees.name)} (untracked ${value(final, M.imaStateEvents.name, { kind: 'untracked_free' })}), live entries ${value(final, M.imaCacheEntries.name)}; ` +
          `first event: ${JSON.stringify(Array.isArray(races) ? races[0] : races)}`,
      );
      t.true(reused >= 1, 'a reused inode pointer was counted');
      t.is(value(final, M.imaInodeReuse.name, { kind: 'live_state' }), 0, 'the kernel freed every iint before its pointer came back');
      if (!Array.isArray(races)) {
        t.fail(races);
        return;
      }
      const evs = races.filter((e) => e['kind'] === 'after_free');
      t.true(evs.length >= 1, 'an after_free event in /api/races');
      const pos = (id: { ino: number; generation: number }): number => idents.findIndex((x) => x.ino === id.ino && x.gen === id.generation);
      const churn = evs.filter((e) => pos(e['old'] as { ino: number; generation: number }) >= 0);
      t.true(churn.length >= 1, `an event about the churned files: ${JSON.stringify(evs.slice(0, 3))}`);
      for (const e of churn) {
        const o = e['old'] as { dev: string; ino: number; generation: number };
        const n = e['new'] as { dev: string; ino: number; generation: number };
        t.is(o.dev, kv['fs_dev'] ?? 'fs_dev missing');
        t.is(n.dev, kv['fs_dev'] ?? 'fs_dev missing');
        t.true(pos(n) > pos(o), `the new identity ${JSON.stringify(n)} was created after the old ${JSON.stringify(o)}`);
        t.true(Number(e['since_free_ns']) > 0, 'the old iint was freed before');
        t.true(Number(e['since_alloc_ns']) > Number(e['since_free_ns']));
        t.is(e['cgroup'], `/${CGROUP}`);
      }
      t.true((value(final, M.imaCacheFrees.name) ?? 0) >= Number(kv['reuse_rounds']) - 1, "each deleted file's iint was freed");
      t.true((value(final, M.imaCacheEntries.name) ?? 0) >= N, 'the N measured files still exist: their entries are live');
    },
  );

  run(
    title('the same churn with the free hook disabled: every reuse is live_state (the old entry never seen freed), paired with identities the script created'),
    async (t) => {
      const r = await guest(t, k);
      if (!r) return;
      const { kv, nofree, racesNofree, idents2 } = r;
      const live = value(nofree, M.imaInodeReuse.name, { kind: 'live_state' }) ?? 0;
      t.log(
        `rounds ${kv['live_rounds']}; live_state=${live} after_free=${value(nofree, M.imaInodeReuse.name, { kind: 'after_free' })}; agent exit ${kv['agent2_exit']}`,
      );
      t.is(attachedVia(nofree, 'ima_cache_free'), undefined, 'the free probe is off');
      t.true(live >= 1, 'a reuse counted as live_state');
      t.is(value(nofree, M.imaInodeReuse.name, { kind: 'after_free' }), 0, 'no free seen, so no after_free');
      if (!Array.isArray(racesNofree)) {
        t.fail(racesNofree);
        return;
      }
      const pos = (id: { ino: number; generation: number }): number => idents2.findIndex((x) => x.ino === id.ino && x.gen === id.generation);
      const evs = racesNofree.filter((e) => e['kind'] === 'live_state' && pos(e['old'] as { ino: number; generation: number }) >= 0);
      t.true(evs.length >= 1, `a live_state event about the churned files: ${JSON.stringify(racesNofree.slice(0, 2))}`);
      for (const e of evs) {
        t.true(pos(e['new'] as { ino: number; generation: number }) > pos(e['old'] as { ino: number; generation: number }));
        t.is(e['since_free_ns'], 0, 'never freed as far as the agent knows');
      }
      t.is(kv['agent2_exit'], '0');
    },
  );
}
