// Cardinality churn against the real agent: 5,000 memory cgroups are created, used (a
// process in each allocates and frees memory, so the kernel uncharges pages there and the
// cgroup becomes a series) and deleted, in batches of 500, while /metrics is scraped.
// Series stay within cardinality.cgroups, refused values are counted, and the series of
// deleted cgroups go away once their linger (cgroups.removedSeconds) is over.
// And 1,000 short-lived /dev/kvm guests between two scrapes: every one is counted under its
// name or folded into "_other" (its name counted as dropped), the sum is what the guests
// did, and "_other" never goes backwards when the folded VMs' entries are retired.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { AgentProcess, pick, until, value, writeConfig, type Sample } from './helpers/agent.js';
import { createCgroup, memoryHierarchy } from './helpers/memcg.js';
import { KVM_GUEST, kvmUsable } from './helpers/kvm.js';
import { allProbeNames } from '../agent/families.js';
import { M } from '../agent/catalog.js';

const CAP = 100;
const TOTAL = 5000;
const BATCH = 500;

// Creating a cgroup, moving a fresh process into it and letting it allocate and exit
// uncharges its pages in that memcg (PGPGOUT, memcg1_uncharge_batch, mm/memcontrol-v1.c v6.18).
const CHURN = `
set -e
base=$1; total=$2; batch=$3
mkdir -p "$base"
for ((b = 0; b < total; b += batch)); do
  for ((i = b; i < b + batch; i++)); do
    mkdir "$base/c$i"
    ( echo $BASHPID > "$base/c$i/cgroup.procs"; exec dd if=/dev/zero of=/dev/null bs=256k count=1 status=none )
  done
  sleep 1
  for ((i = b; i < b + batch; i++)); do
    until rmdir "$base/c$i" 2>/dev/null; do sleep 0.01; done
  done
done
rmdir "$base"
`;

function cgroupValues(s: Sample[]): Set<string> {
  return new Set(pick(s, `${M.memcgUnchargeBatchPages.name}_count`).map((x) => x.labels.cgroup!));
}

test.serial('5,000 memory cgroups created and deleted while scraping: series within cardinality.cgroups, drops counted, stale series removed', async (t) => {
  const h = memoryHierarchy();
  if (h.version !== 1) {
    t.pass('skipped: needs the cgroup v1 memory hierarchy (PGPGOUT per uncharge batch is counted on v1 only)');
    return;
  }
  const keep = 'memcg_uncharge';
  const cfg = writeConfig(`probes:
  disable: [${allProbeNames()
    .filter((n) => n !== keep)
    .join(', ')}]
  hot: [${keep}]
cardinality:
  cgroups: ${CAP}
cgroups:
  removedSeconds: 5
`);
  const agent = await AgentProcess.start(['--config', cfg]);
  t.teardown(() => agent.stop());
  const name = `hvwatch-churn-${process.pid}`;
  const mine = (v: string): boolean => v.startsWith(`/${name}/`);

  const churn = spawn('bash', ['-c', CHURN, 'churn', join(h.mountPoint, name), String(TOTAL), String(BATCH)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let churnErr = '';
  churn.stderr.on('data', (d: Buffer) => (churnErr += d.toString()));
  const done = new Promise<number | null>((resolve) => churn.on('exit', resolve));
  t.teardown(() => {
    if (churn.exitCode === null) churn.kill('SIGKILL');
  });
  let finished = false;
  void done.then(() => (finished = true));

  let scrapes = 0;
  let maxValues = 0;
  let maxSeries = 0;
  const seen = new Set<string>();
  while (!finished) {
    const s = await agent.scrape();
    scrapes++;
    const vals = cgroupValues(s);
    maxValues = Math.max(maxValues, vals.size);
    // Every memcg metric, not just one: each carries at most CAP admitted paths plus "_other" and "unknown".
    for (const m of ['_count', '_sum']) maxSeries = Math.max(maxSeries, pick(s, `${M.memcgUnchargeBatchPages.name}${m}`).length);
    for (const v of vals) if (mine(v)) seen.add(v);
    await new Promise((r) => setTimeout(r, 250));
  }
  t.is(await done, 0, churnErr);
  t.log(`${scrapes} scrapes during the churn; at most ${maxValues} cgroup values per scrape; ${seen.size} of our ${TOTAL} cgroups were a series at some point`);
  t.true(scrapes >= 5);
  t.true(maxValues <= CAP + 2, `${maxValues} cgroup label values > ${CAP} + _other + unknown`);
  t.true(maxSeries <= CAP + 2);

  const s = await agent.scrape();
  const dropped = value(s, M.cardinalityDropped.name, { label: 'cgroup' }) ?? 0;
  t.log(`hvwatch_cardinality_dropped_total{label="cgroup"} ${dropped}`);
  t.true(dropped > 0, 'values past the cap are counted');

  // Stale series: the deleted cgroups' series leave at the next garbage collection (~10 s).
  const after = await until(
    async () => {
      const x = await agent.scrape();
      return [...cgroupValues(x)].some(mine) ? undefined : x;
    },
    40_000,
    'series of deleted cgroups to be removed',
  );
  t.false([...cgroupValues(after)].some(mine));

  t.log(
    `memcg_stats map entries after the churn: ${value(after, M.mapEntries.name, { family: 'memcg', map: 'memcg_stats' })}; cgroup="unknown" batches ${value(after, `${M.memcgUnchargeBatchPages.name}_count`, { cgroup: 'unknown' }) ?? 0}`,
  );

  // The deleted cgroups' budget slots are free again: a cgroup made now gets its own series,
  // not "_other" (with fewer than CAP other live cgroups on this host).
  const fresh = createCgroup(`hvwatch-churn-after-${process.pid}`);
  t.teardown(() => fresh.remove());
  spawnSync('sh', ['-c', `echo $$ > ${fresh.dir}/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=256k count=1 status=none`]);
  const own = await until(
    async () => {
      const v = value(await agent.scrape(), `${M.memcgUnchargeBatchPages.name}_count`, { cgroup: fresh.path });
      return v !== undefined ? v : undefined;
    },
    20_000,
    `a series of its own for ${fresh.path} after the churn`,
  ).catch((e: Error) => e.message);
  t.is(typeof own, 'number', `budget slots of deleted cgroups were not released: ${String(own)}`);
});

const VMS = 1000;
const VM_CAP = 100;
const WRITES = 3;

// Four at a time, each guest a fresh VMM process that lives ~15 ms (kvm-guest: WRITES port
// writes, then HLT, then exit).
const VM_CHURN = `
set -e
guest=$1; prefix=$2; n=$3; writes=$4
seq 1 "$n" | xargs -P 4 -I{} "$guest" -name "guest=$prefix-{},debug-threads=on" --writes "$writes" > /dev/null
`;

(kvmUsable() ? test.skip : test.serial)(
  '1,000 short-lived VMs between two scrapes: each counted under its name or in "_other" (dropped names counted), the sum equals what they did, "_other" never goes backwards',
  async (t) => {
    const cfg = writeConfig(`probes:
  disable: [${allProbeNames()
    .filter((n) => !n.startsWith('kvm_'))
    .join(', ')}]
cardinality:
  vms: ${VM_CAP}
kvm:
  exitedVmSeconds: 3
`);
    const agent = await AgentProcess.start(['--config', cfg]);
    t.teardown(() => agent.stop());
    const prefix = `hvwatch-churn-vm-${process.pid}`;
    const pio = (s: Sample[], vm: string) => value(s, M.kvmPio.name, { vm, direction: 'out' }) ?? 0;
    const before = await agent.scrape();
    const otherBefore = pio(before, '_other');
    const droppedBefore = value(before, M.cardinalityDropped.name, { label: 'vm' })!;
    const fullBefore = value(before, M.mapFull.name, { family: 'kvm' }) ?? 0;

    const t0 = Date.now();
    const churn = spawnSync('bash', ['-c', VM_CHURN, 'churn', KVM_GUEST, prefix, String(VMS), String(WRITES)], { encoding: 'utf8' });
    t.is(churn.status, 0, churn.stderr);
    t.log(`${VMS} guests started and exited in ${Date.now() - t0} ms, no scrape meanwhile`);

    const after = await agent.scrape();
    const ours = pick(after, M.kvmPio.name, { direction: 'out' }).filter((x) => x.labels.vm!.startsWith(`${prefix}-`));
    for (const x of ours) t.is(x.value, WRITES, `${x.labels.vm}: its exact count`);
    const named = ours.length;
    const folded = pio(after, '_other') - otherBefore;
    const dropped = value(after, M.cardinalityDropped.name, { label: 'vm' })! - droppedBefore;
    const full = (value(after, M.mapFull.name, { family: 'kvm' }) ?? 0) - fullBefore;
    t.log(`named ${named}, folded into _other ${folded / WRITES} VMs' writes, names dropped ${dropped}, map-full ${full}`);
    t.true(named > 0 && named <= VM_CAP);
    t.is(full, 0, 'no first-sight record or stats entry lost to a full map');
    t.true(dropped >= VMS - named, 'every VM without its own series is counted as dropped');
    if (dropped === VMS - named) t.is(named * WRITES + folded, VMS * WRITES, 'the sum is what the workload did');
    else t.true(named * WRITES + folded >= VMS * WRITES, `other VMs were folded too (${dropped - (VMS - named)}): the sum is at least the workload's`);
    t.is(pick(after, M.kvmVmInfo.name).filter((x) => x.labels.vm!.startsWith('pid-')).length, 0, 'every VM named from its -name, none as pid-N');

    // Past the linger the VMs retire: their series and first-sight records go, and what they
    // put into "_other" stays there (a counter does not go backwards within its life).
    await new Promise((r) => setTimeout(r, 3500));
    await agent.scrape(); // the exits are seen at the previous collections; this one retires them
    const retired = await until(
      async () => {
        const x = await agent.scrape();
        return pick(x, M.kvmPio.name).some((y) => y.labels.vm!.startsWith(`${prefix}-`)) ? undefined : x;
      },
      20_000,
      "the churned VMs' series to retire",
    );
    t.true(pio(retired, '_other') >= otherBefore + folded, `_other after retirement ${pio(retired, '_other')} >= ${otherBefore + folded}`);
    t.true((value(retired, M.mapEntries.name, { family: 'kvm', map: 'hv_vm_seen' }) ?? 0) < VMS / 10, 'first-sight records deleted');
  },
);
