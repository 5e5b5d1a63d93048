// The background refresher (agent/sources/refresh.ts): memory.stat of a real memory cgroup,
// the liveness of a real cgroup directory and of a real process are served from the last
// refresh (no read on the scrape path) and change only when a tick re-reads them; a tick
// does a bounded share of the items, stalest first, and counts when it falls behind.
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { CgroupResolver, MemoryStatCache } from '../agent/cgroups.js';
import { HostRefresher, TICK_MS, type RefreshJob } from '../agent/sources/refresh.js';
import { MetricStore } from '../agent/export/store.js';
import { M } from '../agent/catalog.js';
import { VmResolver } from '../agent/vms.js';
import { createCgroup, dirtyWriteInCgroup, memoryHierarchy } from './helpers/memcg.js';

test('memory.stat of a real cgroup is read at first sight, then served as last refreshed until a tick re-reads it', (t) => {
  const h = memoryHierarchy();
  const cg = createCgroup(`hvwatch-refresh-${process.pid}`);
  const file = `/var/tmp/hvwatch-refresh-${process.pid}.bin`;
  t.teardown(() => {
    fs.rmSync(file, { force: true });
    cg.remove();
  });
  const cache = new MemoryStatCache(h, 10_000);
  const r = new HostRefresher();
  r.add(cache);
  r.start(false);
  t.is(cache.get(cg.path)?.dirtyBytes, 0, 'a new cgroup has no dirty pages');
  dirtyWriteInCgroup(cg, 8, file);
  t.is(cache.get(cg.path)?.dirtyBytes, 0, 'served from the cache: no read on the collection path');
  r.tick(Date.now() + 1);
  t.true(cache.get(cg.path)!.dirtyBytes > 0, 'the tick re-read it');
  fs.rmSync(file); // its dirty pages go with it
  t.true(cache.get(cg.path)!.dirtyBytes > 0, 'still as last refreshed');
  r.stop();
  t.is(cache.get(cg.path)?.dirtyBytes, 0, 'with the refresher stopped every lookup reads');
  t.is(cache.get('/hvwatch-refresh-no-such-cgroup'), undefined, 'a missing cgroup reads as gone');
  cache.endCollection();
  t.is(cache.size(), 2);
  cache.get(cg.path);
  cache.endCollection();
  t.is(cache.size(), 1, 'a collection forgets the cgroups it did not ask for');
});

test('a removed cgroup stays alive to isAlive until the background check sees it gone; the collection then marks it removed', (t) => {
  const h = memoryHierarchy();
  const cg = createCgroup(`hvwatch-refresh-alive-${process.pid}`);
  t.teardown(() => cg.remove());
  const res = new CgroupResolver(h);
  const job = res.aliveJob(10_000);
  const r = new HostRefresher();
  r.add(job);
  r.start(false);
  t.is(res.resolve(cg.id), cg.path);
  t.true(res.isAlive(cg.id));
  t.is(job.size(), 1);
  cg.remove();
  t.true(res.isAlive(cg.id), 'answered from the last check, without a stat');
  t.false(res.isRemoved(cg.id));
  r.tick(Date.now() + 1);
  t.false(res.isRemoved(cg.id), 'the job only records what it found');
  t.false(res.isAlive(cg.id), 'confirmed at the collection');
  t.true(res.isRemoved(cg.id));
  t.is(job.size(), 0);
});

test('after the first walk, a lookup that misses starts a background walk, a few hundred directories a tick; ids it does not find are remembered as unknown', (t) => {
  const h = memoryHierarchy();
  const res = new CgroupResolver(h, { rescanIntervalMs: 0 });
  const job = res.walkJob();
  const r = new HostRefresher();
  r.add(job);
  r.start(false);
  t.is(res.resolve(1n << 60n), undefined, 'the first walk is made at once');
  t.is(res.stats.rescans, 1);
  t.is(job.size(), 0);
  const cg = createCgroup(`hvwatch-refresh-walk-${process.pid}`);
  t.teardown(() => cg.remove());
  t.is(res.resolve(cg.id), undefined, 'unresolved while the background walk runs');
  t.is(res.stats.rescans, 1, 'no walk on the lookup');
  t.is(job.size(), 1);
  let ticks = 0;
  while (job.size() > 0 && ticks < 10_000) {
    r.tick();
    ticks++;
  }
  t.is(res.stats.rescans, 2);
  t.true(ticks >= Math.ceil(res.lastWalk!.cgroups / 256), `${ticks} ticks for ${res.lastWalk!.cgroups} cgroups`);
  t.is(res.resolve(cg.id), cg.path, 'found by the background walk');
  const unknown = (1n << 60n) + 7n;
  t.is(res.resolve(unknown), undefined);
  while (job.size() > 0) r.tick();
  const walks = res.stats.rescans;
  t.is(res.resolve(unknown), undefined, 'remembered as unknown');
  t.is(job.size(), 0, 'no walk for it again within negativeTtlMs');
  t.is(res.stats.rescans, walks);
});

test('a VMM that exits is named until the background check sees it gone, then resolves to null', async (t) => {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', '--', '-name', 'guest=refresh-vm'], {
    argv0: 'qemu-system-x86_64',
    stdio: 'ignore',
  });
  t.teardown(() => child.kill('SIGKILL'));
  await new Promise((resolve, reject) => child.once('spawn', resolve).once('error', reject));
  const pid = child.pid!;
  const vms = new VmResolver();
  const job = vms.livenessJob(2_000);
  t.is(vms.livenessJob(), job, 'one job per resolver');
  const r = new HostRefresher();
  r.add(job);
  r.start(false);
  t.deepEqual(vms.resolve(pid), { name: 'refresh-vm', source: 'qemu' });
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
  t.deepEqual(vms.resolve(pid), { name: 'refresh-vm', source: 'qemu' }, 'served from the last check');
  r.tick(Date.now() + 1);
  t.is(vms.resolve(pid), null, 'the check found it gone: resolve confirms');
  t.is(vms.resolve(pid), null, 'and answers so until forgotten, without a read');
  t.is(job.size(), 1, 'still checked: a new process with this pid would be seen');
  vms.forget(pid);
  t.is(job.size(), 0);
});

test('a tick refreshes ceil(items x tick / interval) stalest items, capped, and counts ticks that fall behind', (t) => {
  const refreshed: number[][] = [];
  let at = new Map<number, number>();
  const mk = (n: number, maxPerTick: number): RefreshJob => {
    at = new Map(Array.from({ length: n }, (_, i) => [i, 0]));
    return {
      fact: 'memory_stat',
      intervalMs: 1_000,
      maxPerTick,
      size: () => at.size,
      oldest: () => Math.min(...at.values()),
      refresh: (k, now) => {
        const stalest = [...at.entries()]
          .sort((a, b) => a[1] - b[1])
          .slice(0, k)
          .map(([i]) => i);
        for (const i of stalest) at.set(i, now);
        refreshed.push(stalest);
      },
    };
  };
  const r = new HostRefresher();
  r.add(mk(25, 100));
  r.start(false);
  r.tick(500);
  t.is(refreshed[0]!.length, Math.ceil((25 * TICK_MS) / 1_000), 'a share of the items per tick');
  let now = 500;
  for (let i = 0; i < 1_000 / TICK_MS; i++) r.tick((now += TICK_MS));
  t.true(Math.min(...at.values()) > 500, 'every item refreshed within one interval');
  const store = new MetricStore();
  r.publish(store, now);
  t.is(store.get(M.hostRefreshBehind, { fact: 'memory_stat' })?.value, 0);
  t.is(store.get(M.hostRefreshItems, { fact: 'memory_stat' })?.value, 25);
  t.true(store.get(M.hostRefreshAge, { fact: 'memory_stat' })!.value <= 1.0 + TICK_MS / 1000);

  let runs = 0;
  const periodic = new HostRefresher(() => 0);
  periodic.every(1_000, () => runs++);
  for (let n = 0; n <= 3_000; n += TICK_MS) periodic.tick(n);
  t.is(runs, 3, 'a periodic hook (malloc_trim) runs once per its period');

  const slow = new HostRefresher();
  slow.add(mk(1_000, 2));
  slow.start(false);
  for (let i = 0, n = 5_000; i < 40; i++) slow.tick((n += TICK_MS));
  const s2 = new MetricStore();
  slow.publish(s2, 9_000);
  t.true(s2.get(M.hostRefreshBehind, { fact: 'memory_stat' })!.value > 0, 'capped at 2 a tick, 1,000 items cannot be kept within 2 intervals');
});
