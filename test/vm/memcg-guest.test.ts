// The memcg function-tier probes (families/memcg_fn/family.ts, families/memcg_fn/memcg_fn.bpf.c) attached for
// real with fentry in Debian 6.1 / 6.12 guests under QEMU (test/vm/harness.ts), no mocks: one boot
// per kernel runs the agent (`bin/hvwatch run`) on the guest's loopback, a 32 MiB fsync'd write
// and then a delete from a shell placed in a memory cgroup, and scrapes /metrics and /api/races.
// The host then checks, per kernel: the probes took fentry; the cgroup's writeback latency and
// writeback-end histograms count at least the folios the write dirtied (counted independently by
// the writeback:writeback_dirty_folio tracepoint) and no more than the pages the kernel wrote
// back (/proc/vmstat nr_written); deleting the file uncharges at least as many folios; and the
// clean workload shows no race indicator at all. The hosts we run on refuse fentry and lack
// kprobes, so this is the only place these probes run against real kernel events.
// Skips, with the reason in the title, when QEMU/tools/kernel packages/the build are unavailable.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { M } from '../../agent/catalog.js';
import { RACE_KINDS } from '../../families/memcg_fn/family.js';
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
const GUEST_TIMEOUT_MS = 120_000;
const CGROUP = 'hvwatch-guest-wb';
const LABELS = { cgroup: `/${CGROUP}` }; // cgroup label = path under the memory hierarchy root
const MIB = 32;
const FN_PROBES = ['memcg_writeback_start_fn', 'memcg_writeback_end_fn', 'memcg_uncharge_folio_fn', 'memcg_uncharge_fn'];
// Both kernels share one file run: 6.1 is required, 6.12 is kept because a boot costs ~30 s
// warm (boot ~4-6 s, agent ready ~10 s after, workload + scrapes ~10 s), so both fit the budget.
const SERIES = ['6.1', '6.12'];
// kvm is not loaded in this guest (test/vm/kvm-nested-guest.test.ts covers it): its probes are
// off here, so that any warning the agent logs is about the memcg probes under test.
const KVM_OFF = declaredFamilies()
  .find((f) => f.name === 'kvm')!
  .probes.map((p) => `--disable ${p.name}`)
  .join(' ');

// ---- decided at module load: a missing tool, kernel package or build skips, never passes ----
// The guest runs the host's root: these must exist there.
const commonReason = hostToolsReason(ROOT, [
  ['losetup', 'apt-get install mount'],
  ['mkfs.ext4', 'apt-get install e2fsprogs'],
  ['ip', 'apt-get install iproute2; the guest needs it to bring up loopback'],
]);
const vmReason = commonReason ?? vmUnavailableReason();
const plan = await guestPlan(SERIES, vmReason);

// ---- the guest script ----
// Where the writeback happens: the guest's root is an overlay whose upper layer is tmpfs, and
// tmpfs never does writeback. So the script makes a 128 MiB sparse image on /run (tmpfs), attaches
// it to a loop device and mounts ext4 on it: ext4's page cache is then written back through the
// block layer for real (__folio_start_writeback in ext4_writepages, __folio_end_writeback from the
// loop device's bio completion, usually in another context/CPU than the writer). The loop worker's
// writes into the tmpfs backing file do not write back themselves. `loop` and `ext4` are modules
// in Debian kernels (the harness modprobes them before the script; status 254 if that fails).
// cgroup v2: the harness's guest init mounts cgroup2 at /sys/fs/cgroup and nothing mounts v1, so
// the memory controller is on v2; the script mounts it itself if that ever changes, and enables
// +memory for children. Loopback is down in the guest (nothing configures it), so it brings lo up.
const SCRIPT = `
set -u
HVWATCH=${q(HVWATCH)}
PORT=9477
URL=http://127.0.0.1:$PORT
CGN=${q(CGROUP)}
${GUEST_AGENT_SHELL}# metric NAME_WITH_LABELS: its value in a fresh scrape (empty if absent)
metric() { get "$URL/metrics" | awk -v n="$1" '$1 == n { print $2 }'; }
vmstat() { echo 1 > /proc/sys/vm/stat_refresh 2>/dev/null; awk -v n="$1" '$1 == n { print $2 }' /proc/vmstat; }
echo "release=$(uname -r)"

ip link set lo up || ifconfig lo up || fail 'cannot bring up loopback'

# ---- the memory cgroup ----
CGROOT=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
if [ -z "$CGROOT" ]; then mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && CGROOT=/sys/fs/cgroup || fail 'mount cgroup2'; fi
grep -qw memory "$CGROOT/cgroup.controllers" || fail "no memory controller in $CGROOT/cgroup.controllers: $(cat $CGROOT/cgroup.controllers)"
echo +memory > "$CGROOT/cgroup.subtree_control" || fail 'enable +memory'
CG=$CGROOT/$CGN
mkdir "$CG" || fail "mkdir $CG"
echo "memory_hierarchy=cgroup2 $CGROOT"
inside() { bash -c 'echo $$ > "$0/cgroup.procs" && exec bash -c "$1"' "$CG" "$1"; } # run a shell command in the cgroup

# ---- a block-backed filesystem (see the comment in the test file) ----
img=/run/hvwatch-wb.img
truncate -s 128M $img && mkfs.ext4 -q -F $img || fail 'mkfs.ext4'
dev=$(losetup -f --show $img) || fail 'losetup'
mkdir -p /mnt/wb && mount -t ext4 -o noatime "$dev" /mnt/wb || fail "mount ext4 on $dev"
echo "fs=$(awk '$2 == "/mnt/wb" { print $1, $3 }' /proc/mounts)"
sync
echo "t_setup=$(ts)"

# ---- the agent, on loopback ----
start_agent ${KVM_OFF}

# settle NAME: poll until NAME is > 0 and equal in two scrapes 1 s apart (30 s at most)
settle() {
  local prev= v= i
  for i in $(seq 30); do
    v=$(metric "$1"); v=\${v:-0}
    [ "$v" != 0 ] && [ "$v" = "$prev" ] && break
    prev=$v; sleep 1
  done
  echo "$v"
}

# ---- the write: folios dirtied counted by a tracepoint filtered on the file's inode ----
TR=/sys/kernel/tracing
f=/mnt/wb/data
touch $f && ino=$(stat -c %i $f)
EV=$TR/events/writeback/writeback_dirty_folio
if [ -d $EV ]; then
  echo "ino == $ino" > $EV/filter && echo > $TR/trace && echo 1 > $EV/enable && echo 1 > $TR/tracing_on || echo "trace_setup=failed"
fi
w0=$(vmstat nr_written)
inside "exec dd if=/dev/zero of=$f bs=1M count=${MIB} conv=fsync,notrunc status=none" || fail "dd status $?"
echo "t_write=$(ts)"
if [ -d $EV ]; then
  echo 0 > $EV/enable
  echo "dirtied_folios=$(grep -c 'writeback_dirty_folio:' $TR/trace)"
  echo "trace_overrun=$(awk '/^overrun:/ { s += $2 } END { print s + 0 }' $TR/per_cpu/cpu*/stats)"
else
  echo "dirtied_folios=none"
fi
echo "file_bytes_after_write=$(awk '$1 == "file" { print $2 }' $CG/memory.stat)"
latency_count=$(settle "${M.memcgWbLatency.name}_count{cgroup=\\"/$CGN\\"}")
w1=$(vmstat nr_written)
echo "nr_written_delta=$((w1 - w0))"
echo "latency_count_settled=$latency_count"
echo "t_write_settled=$(ts)"
echo '<<<metrics-write'; get "$URL/metrics"; echo 'metrics-write>>>'

# ---- the delete: truncation uncharges the file's folios; drop_caches takes what is left ----
u0=$(metric "${M.memcgUnchargedFolios.name}{cgroup=\\"/$CGN\\"}")
# A pipe through the cgroup as well: pipe buffers are charged (__GFP_ACCOUNT) and freed one by one
# through put_page -> __mem_cgroup_uncharge, the single-folio path; page-cache truncation frees in
# batches (uncharge_list on 6.1, not timed; __mem_cgroup_uncharge_folios from 6.9, timed).
inside "rm -f $f && sync && head -c 4M /dev/zero | cat > /dev/null" || fail "delete status $?"
echo 3 > /proc/sys/vm/drop_caches
echo "file_bytes_after_delete=$(awk '$1 == "file" { print $2 }' $CG/memory.stat)"
for i in $(seq 30); do
  u=$(metric "${M.memcgUnchargedFolios.name}{cgroup=\\"/$CGN\\"}")
  [ "\${u:-0}" != "\${prev_u:-x}" ] || break
  prev_u=$u; sleep 1
done
echo "t_delete_settled=$(ts)"
echo '<<<metrics-final'; get "$URL/metrics"; echo 'metrics-final>>>'
echo '<<<races'; get "$URL/api/races"; echo; echo 'races>>>'

# ---- a cgroup made, written with fsync and removed between two scrapes (first sight, issue 17) ----
CG2=$CG-gone
mkdir "$CG2" || fail "mkdir $CG2"
f2=/mnt/wb/gone
touch $f2 && ino2=$(stat -c %i $f2)
if [ -d $EV ]; then echo "ino == $ino2" > $EV/filter && echo > $TR/trace && echo 1 > $EV/enable; fi
bash -c 'echo $$ > "$0/cgroup.procs" && exec dd if=/dev/zero of="$1" bs=1M count=4 conv=fsync,notrunc status=none' "$CG2" "$f2" || fail "dd in $CG2 status $?"
if [ -d $EV ]; then echo 0 > $EV/enable; echo "gone_dirtied_folios=$(grep -c 'writeback_dirty_folio:' $TR/trace)"; fi
rmdir "$CG2" || fail "rmdir $CG2"
sleep 1
echo '<<<metrics-gone'; get "$URL/metrics"; echo 'metrics-gone>>>'

kill $AG; wait $AG; echo "agent_exit=$?"
echo '<<<agent-stderr'; cat "$tmp/agent.err"; echo 'agent-stderr>>>'
echo "t_end=$(ts)"
umount /mnt/wb; losetup -d "$dev"; rmdir "$CG"
exit 0
`;

// ---- parsing ----
interface GuestRun {
  g: GuestResult;
  kv: Record<string, string>;
  write: Sample[]; // scrape after the write settled
  final: Sample[]; // scrape after the delete settled
  gone: Sample[]; // the first scrape after a cgroup was made, written and removed
  races: unknown;
  racesText: string;
  agentStderr: string;
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
  let races: unknown;
  try {
    races = JSON.parse(racesText);
  } catch {
    races = `unparseable: ${racesText}`;
  }
  return {
    g,
    kv,
    write: scrape('metrics-write'),
    final: scrape('metrics-final'),
    gone: scrape('metrics-gone'),
    races,
    racesText,
    agentStderr: between(g.stdout, 'agent-stderr') ?? '',
  };
}

const hist = (s: Sample[], name: string): { count: number; sum: number } => ({
  count: value(s, `${name}_count`, LABELS) ?? 0,
  sum: value(s, `${name}_sum`, LABELS) ?? 0,
});
const attachedVia = (s: Sample[], probe: string): string | undefined => pick(s, M.probeInfo.name, { probe })[0]?.labels['attach'];

// ---- one boot per kernel, shared by that kernel's tests ----
const boots = new Map<string, Promise<GuestRun>>();
function boot(k: KernelEntry): Promise<GuestRun> {
  let p = boots.get(k.package);
  if (!p) {
    p = runInGuest(k, SCRIPT, { timeoutMs: GUEST_TIMEOUT_MS, modules: ['loop', 'ext4'] }).then(parseGuest);
    boots.set(k.package, p);
  }
  return p;
}
/** The kernel's run, or a failed assertion with the guest's report when the script did not complete. */
async function guest(t: ExecutionContext, k: KernelEntry): Promise<GuestRun | undefined> {
  const r = await boot(k);
  if (r.g.status === 0 && r.final.length) return r;
  t.fail(
    `guest script did not complete (${r.kv['guest_error'] ?? `status ${r.g.status}`})\n${r.agentStderr}\n${describeRun(r.g)}\n--- stdout ---\n${r.g.stdout.slice(-4000)}`,
  );
  return undefined;
}

for (const [k, skip] of plan) {
  const reason = vmReason ?? skip;
  const title = (what: string): string => `${k.name} guest kernel, real fentry (QEMU): ${what}${reason ? ` (skipped: ${reason})` : ''}`;
  const run = reason ? test.skip : test.serial;

  run(title('memcg_*_fn probes attach via fentry; the agent runs clean'), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { g, kv, final } = r;
    t.log(
      `${k.package}: attempts=${g.attempts} wall=${g.seconds}s boot=${g.bootSeconds}s script=${g.scriptSeconds}s ` +
        `(guest: setup ${kv['t_setup']}s, agent ready ${kv['t_ready']}s, write settled ${kv['t_write_settled']}s, delete settled ${kv['t_delete_settled']}s, end ${kv['t_end']}s)`,
    );
    t.log(`${kv['memory_hierarchy']}; fs ${kv['fs']}; probes: ${FN_PROBES.map((p) => `${p}=${attachedVia(final, p) ?? 'none'}`).join(' ')}`);
    t.is(kv['release'], k.release);
    t.is(attachedVia(final, 'memcg_writeback_start_fn'), 'fentry');
    t.is(attachedVia(final, 'memcg_writeback_end_fn'), 'fentry');
    t.deepEqual(
      pick(final, M.probeInfo.name, { probe: 'memcg_writeback_start_fn' }).map((s) => s.labels['target']),
      ['__folio_start_writeback'],
    );
    t.deepEqual(
      pick(final, M.probeInfo.name, { probe: 'memcg_writeback_end_fn' }).map((s) => s.labels['target']),
      ['__folio_end_writeback'],
    );
    // The uncharge probes: fentry whenever they attached (the kernel matrix says they do on 6.1/6.12).
    for (const p of ['memcg_uncharge_folio_fn', 'memcg_uncharge_fn']) {
      const via = attachedVia(final, p);
      if (via !== undefined) t.is(via, 'fentry', `${p} attached via ${via}`);
    }
    t.is(kv['agent_exit'], '0', 'agent exits 0 on SIGTERM');
    const bad = r.agentStderr.split('\n').filter((l) => l && !/^ts=\S+ level=(info|debug) /.test(l));
    t.deepEqual(bad, [], 'agent logged warnings/errors');
  });

  run(title(`a ${MIB} MiB fsync'd write on ext4 over loop fills the cgroup's writeback latency and writeback-end histograms`), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { kv, write } = r;
    const lat = hist(write, M.memcgWbLatency.name);
    const end = hist(write, M.memcgWbEndDuration.name);
    const dirtied = Number(kv['dirtied_folios']);
    const written = Number(kv['nr_written_delta']);
    t.log(
      `latency count=${lat.count} sum=${lat.sum.toFixed(3)}s (mean ${((lat.sum / lat.count) * 1e3).toFixed(2)} ms); ` +
        `writeback-end count=${end.count} sum=${(end.sum * 1e3).toFixed(3)}ms; folios dirtied (tracepoint)=${kv['dirtied_folios']} ` +
        `(overrun ${kv['trace_overrun']}); nr_written delta=${written} pages; cgroup file bytes after write=${kv['file_bytes_after_write']}`,
    );
    // Lower bound: every folio the write dirtied was written back after the agent attached, so it
    // has a start and an end; without the tracepoint, 32 MiB is at least 16 folios of 2 MiB (PMD).
    const lower = Number.isFinite(dirtied) && kv['trace_overrun'] === '0' ? dirtied : (MIB << 20) / (2 << 20);
    t.true(lower >= 16, `dirtied folios ${kv['dirtied_folios']}`);
    t.true(lat.count >= lower, `latency count ${lat.count} < ${lower} folios the write dirtied`);
    // Upper bound: the cgroup's folios are among what the whole kernel wrote back (pages >= folios).
    t.true(lat.count <= written, `latency count ${lat.count} > ${written} pages written back (nr_written)`);
    t.true(lat.sum > 0, 'latency sum > 0');
    t.true(end.count >= lower, `writeback-end count ${end.count} < ${lower}`);
    t.true(end.sum > 0, 'writeback-end sum > 0');
    // Every latency sample was paired: nothing lost its start (all began after attach) or was evicted.
    t.is(value(write, M.memcgWbUnpairedEnds.name), 0, 'writeback ends without a recorded start');
    t.is(value(write, M.memcgRaceStateEvictions.name), 0, 'race-state entries evicted');
  });

  run(title('deleting the file uncharges its folios in the cgroup (uncharged folios, uncharge duration)'), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { kv, write, final } = r;
    const folioProbe = attachedVia(final, 'memcg_uncharge_folio_fn');
    const callProbe = attachedVia(final, 'memcg_uncharge_fn');
    const before = value(write, M.memcgUnchargedFolios.name, LABELS) ?? 0;
    const after = value(final, M.memcgUnchargedFolios.name, LABELS) ?? 0;
    const dur = hist(final, M.memcgUnchargeDuration.name);
    const dirtied = Number(kv['dirtied_folios']);
    t.log(
      `uncharged folios ${before} -> ${after} (+${after - before}); uncharge duration count=${dur.count} sum=${(dur.sum * 1e3).toFixed(3)}ms; ` +
        `cgroup file bytes ${kv['file_bytes_after_write']} -> ${kv['file_bytes_after_delete']}; ` +
        `unknown-cgroup uncharged folios=${value(final, M.memcgUnchargedFolios.name, { cgroup: 'unknown' }) ?? 0}`,
    );
    if (!folioProbe && !callProbe) {
      t.pass('no uncharge probe attached: nothing to check');
      return;
    }
    if (folioProbe) {
      t.true(after > before, 'uncharged folios grew after the delete');
      // Each folio of the deleted file is uncharged once, in this cgroup.
      if (Number.isFinite(dirtied) && kv['trace_overrun'] === '0') {
        t.true(after - before >= dirtied, `uncharged +${after - before} < ${dirtied} folios of the deleted file`);
      }
    }
    if (callProbe) {
      t.true(dur.count > 0, 'uncharge duration count > 0');
      t.true(dur.sum > 0, 'uncharge duration sum > 0');
    }
    t.true(Number(kv['file_bytes_after_delete']) < Number(kv['file_bytes_after_write']) / 4, "the cgroup's page cache went away");
  });

  run(title("a cgroup made, written with fsync and removed between two scrapes: its folios' writeback is exact under its path (first sight)"), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { kv, gone } = r;
    const labels = { cgroup: `/${CGROUP}-gone` };
    const count = value(gone, `${M.memcgWbLatency.name}_count`, labels);
    const dirtied = Number(kv['gone_dirtied_folios']);
    t.log(
      `removed cgroup: writeback latency count ${count}, folios dirtied (tracepoint) ${kv['gone_dirtied_folios']}; cgroup_lifecycle via ${attachedVia(gone, 'cgroup_lifecycle')}`,
    );
    t.truthy(attachedVia(gone, 'cgroup_lifecycle'));
    t.true(dirtied > 0, 'the write dirtied folios');
    t.is(count, dirtied, 'every folio it wrote back, under its path although it was gone');
  });

  run(title('the clean workload counts zero race events of every kind and /api/races is []'), async (t) => {
    const r = await guest(t, k);
    if (!r) return;
    const { final } = r;
    const counts = Object.fromEntries(RACE_KINDS.map((kind) => [kind, value(final, M.memcgRaceEvents.name, { kind })]));
    const extra = pick(final, M.memcgRaceEvents.name).filter((s) => !(RACE_KINDS as readonly string[]).includes(s.labels['kind'] ?? ''));
    t.log(
      `race events: ${JSON.stringify(counts)}; /api/races: ${r.racesText.slice(0, 2000)}; ` +
        `state: reaped=${value(final, M.memcgRaceStateReaped.name)} evicted=${value(final, M.memcgRaceStateEvictions.name)} unpaired=${value(final, M.memcgWbUnpairedEnds.name)}`,
    );
    t.deepEqual(counts, Object.fromEntries(RACE_KINDS.map((kind) => [kind, 0])), 'a race indicator fired on a clean workload');
    t.deepEqual(extra, [], 'race kinds outside RACE_KINDS');
    t.deepEqual(r.races, [], '/api/races');
    // No writeback-end marker lost its exit (with fentry/fexit every entry is matched by an exit).
    t.is(value(final, M.memcgRaceStateReaped.name), 0, 'stale writeback-end markers reaped');
  });
}
