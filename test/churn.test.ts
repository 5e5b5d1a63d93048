// Cardinality churn against the real agent: 5,000 memory cgroups are created, used (a
// process in each allocates and frees memory, so the kernel uncharges pages there and the
// cgroup becomes a series) and deleted, in batches of 500, while /metrics is scraped.
// Series stay within cardinality.cgroups, refused values are counted, and the series of
// deleted cgroups go away.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { AgentProcess, pick, until, value, writeConfig, type Sample } from './helpers/agent.js';
import { createCgroup, memoryHierarchy } from './helpers/memcg.js';
import { allProbeNames } from '../agent/probes/index.js';
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

test('5,000 memory cgroups created and deleted while scraping: series within cardinality.cgroups, drops counted, stale series removed', async (t) => {
  const h = memoryHierarchy();
  if (h.version !== 1) {
    t.pass('skipped: needs the cgroup v1 memory hierarchy (PGPGOUT per uncharge batch is counted on v1 only)');
    return;
  }
  const keep = 'memcg_uncharge';
  const cfg = writeConfig(`probes:
  disable: [${allProbeNames().filter((n) => n !== keep).join(', ')}]
  hot: [${keep}]
cardinality:
  cgroups: ${CAP}
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
  const after = await until(async () => {
    const x = await agent.scrape();
    return [...cgroupValues(x)].some(mine) ? undefined : x;
  }, 40_000, 'series of deleted cgroups to be removed');
  t.false([...cgroupValues(after)].some(mine));

  t.log(`memcg_stats map entries after the churn: ${value(after, M.mapEntries.name, { family: 'memcg', map: 'memcg_stats' })}; cgroup="unknown" batches ${value(after, `${M.memcgUnchargeBatchPages.name}_count`, { cgroup: 'unknown' }) ?? 0}`);

  // The deleted cgroups' budget slots are free again: a cgroup made now gets its own series,
  // not "_other" (with fewer than CAP other live cgroups on this host).
  const fresh = createCgroup(`hvwatch-churn-after-${process.pid}`);
  t.teardown(() => fresh.remove());
  spawnSync('sh', ['-c', `echo $$ > ${fresh.dir}/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=256k count=1 status=none`]);
  const own = await until(async () => {
    const v = value(await agent.scrape(), `${M.memcgUnchargeBatchPages.name}_count`, { cgroup: fresh.path });
    return v !== undefined ? v : undefined;
  }, 20_000, `a series of its own for ${fresh.path} after the churn`).catch((e: Error) => e.message);
  t.is(typeof own, 'number', `budget slots of deleted cgroups were not released: ${String(own)}`);
});
