import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CgroupResolver,
  cgroupDir,
  findMemoryHierarchy,
  parseMemoryStat,
  parseMountinfo,
  readMemoryStat,
  walkHierarchy,
  type MemoryHierarchy,
} from '../agent/cgroups.js';

// ---------------------------------------------------------------------------
// Sample mountinfo texts

// Debian/systemd "hybrid" host: v1 controllers + cgroup2 at /sys/fs/cgroup/unified (no memory).
const MOUNTINFO_V1 = [
  '22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw',
  '26 28 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  '28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro',
  '31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755,inode64',
  '32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate',
  '33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd',
  '36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct',
  '37 31 0:34 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory',
  '38 31 0:35 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,blkio',
  '',
].join('\n');

// Pure v2 host. Note the super option memory_recursiveprot, which must not count as "memory".
const MOUNTINFO_V2 = [
  '22 28 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw',
  '28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro',
  '30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot',
  '45 22 0:40 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700',
  '',
].join('\n');

test('parseMountinfo: fields, optional fields and super options', (t) => {
  const e = parseMountinfo(MOUNTINFO_V1);
  t.is(e.length, 9);
  const mem = e.find((x) => x.mountPoint === '/sys/fs/cgroup/memory');
  t.deepEqual(mem, { mountPoint: '/sys/fs/cgroup/memory', fsType: 'cgroup', superOptions: ['rw', 'memory'], root: '/' });
  const cpu = e.find((x) => x.fsType === 'cgroup' && x.superOptions.includes('cpu'));
  t.is(cpu?.mountPoint, '/sys/fs/cgroup/cpu,cpuacct');
  // No optional fields at all (e.g. private mounts in containers).
  const [noOpt] = parseMountinfo('100 99 0:50 / /mnt/cg rw,relatime - cgroup2 none rw\n');
  t.deepEqual(noOpt, { mountPoint: '/mnt/cg', fsType: 'cgroup2', superOptions: ['rw'], root: '/' });
  // Several optional fields.
  const [multi] = parseMountinfo('101 99 0:51 / /mnt/x rw shared:3 master:1 propagate_from:1 - cgroup cgroup rw,memory\n');
  t.is(multi?.fsType, 'cgroup');
  t.deepEqual(multi?.superOptions, ['rw', 'memory']);
  // Garbage lines are skipped.
  t.deepEqual(parseMountinfo('garbage\n1 2 3\n'), []);
});

test('parseMountinfo: octal escapes in root and mount point', (t) => {
  const [e] = parseMountinfo('200 31 0:34 /kube\\040pods/with\\011tab /mnt/my\\040cgroups/back\\134slash rw,relatime shared:5 - cgroup cgroup rw,memory\n');
  t.is(e?.mountPoint, '/mnt/my cgroups/back\\slash');
  t.is(e?.root, '/kube pods/with\ttab');
});

test('findMemoryHierarchy: v1 (hybrid host, cgroup2 without memory)', (t) => {
  const seen: string[] = [];
  const h = findMemoryHierarchy(MOUNTINFO_V1, (mp) => {
    seen.push(mp);
    return false;
  });
  t.deepEqual(h, { version: 1, mountPoint: '/sys/fs/cgroup/memory' });
  t.deepEqual(seen, ['/sys/fs/cgroup/unified']); // only cgroup2 mounts are probed
});

test('findMemoryHierarchy: v2', (t) => {
  t.deepEqual(
    findMemoryHierarchy(MOUNTINFO_V2, (mp) => mp === '/sys/fs/cgroup'),
    { version: 2, mountPoint: '/sys/fs/cgroup' },
  );
  // cgroup2 without memory and no v1 memory mount: nothing.
  t.is(
    findMemoryHierarchy(MOUNTINFO_V2, () => false),
    undefined,
  );
  // memory_recursiveprot is not the memory controller, and cgroup2 super options are not used for v2 detection.
  t.is(
    findMemoryHierarchy(MOUNTINFO_V2.replace('cgroup2 cgroup2', 'cgroup cgroup'), () => true),
    undefined,
  );
});

test('findMemoryHierarchy: prefers v2 when it has memory; prefers a mount of the hierarchy root', (t) => {
  t.deepEqual(
    findMemoryHierarchy(MOUNTINFO_V1, () => true),
    { version: 2, mountPoint: '/sys/fs/cgroup/unified' },
  );
  const text = '50 31 0:34 /some/sub /run/sub rw - cgroup cgroup rw,memory\n' + '51 31 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n';
  t.deepEqual(
    findMemoryHierarchy(text, () => false),
    { version: 1, mountPoint: '/sys/fs/cgroup/memory' },
  );
  t.is(
    findMemoryHierarchy('', () => true),
    undefined,
  );
});

test('findMemoryHierarchy: real /proc/self/mountinfo', (t) => {
  const h = findMemoryHierarchy();
  t.truthy(h, 'no memory cgroup hierarchy found');
  if (!h) return;
  t.log(`memory hierarchy: v${h.version} at ${h.mountPoint}`);
  t.true(fs.statSync(h.mountPoint).isDirectory());
  if (h.version === 1) {
    t.true(fs.existsSync(path.join(h.mountPoint, 'memory.limit_in_bytes')));
  } else {
    t.true(fs.readFileSync(path.join(h.mountPoint, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory'));
  }
});

// ---------------------------------------------------------------------------
// memory.stat parsing

const MEMSTAT_V1 = `cache 1347584
rss 270336
rss_huge 0
shmem 0
mapped_file 0
dirty 135168
writeback 8192
workingset_refault_anon 0
swap 0
pgpgin 460
pgpgout 65
hierarchical_memory_limit 9223372036854771712
total_cache 9999999
total_rss 270336
total_dirty 777777
total_writeback 555555
`;

const MEMSTAT_V2 = `anon 1060864
file 9961472
kernel 1212416
shmem 0
file_mapped 0
file_dirty 4096
file_writeback 12288
swapcached 0
anon_thp 0
inactive_file 9961472
workingset_refault_file 0
`;

test('parseMemoryStat v1 uses dirty/writeback, not total_*', (t) => {
  t.deepEqual(parseMemoryStat(MEMSTAT_V1, 1), { dirtyBytes: 135168, writebackBytes: 8192 });
  // Order independence: total_* first.
  t.deepEqual(parseMemoryStat('total_dirty 5\ntotal_writeback 6\nwriteback 2\ndirty 1\n', 1), { dirtyBytes: 1, writebackBytes: 2 });
});

test('parseMemoryStat v2 uses file_dirty/file_writeback', (t) => {
  t.deepEqual(parseMemoryStat(MEMSTAT_V2, 2), { dirtyBytes: 4096, writebackBytes: 12288 });
  // v1 keys are not v2 keys and vice versa.
  t.deepEqual(parseMemoryStat(MEMSTAT_V1, 2), { dirtyBytes: 0, writebackBytes: 0 });
  t.deepEqual(parseMemoryStat(MEMSTAT_V2, 1), { dirtyBytes: 0, writebackBytes: 0 });
  t.deepEqual(parseMemoryStat('', 2), { dirtyBytes: 0, writebackBytes: 0 });
});

// ---------------------------------------------------------------------------
// Real cgroupfs

const hier: MemoryHierarchy | undefined = findMemoryHierarchy();
const testName = `hvwatch-test-${process.pid}`;
const testDir = hier ? path.join(hier.mountPoint, testName) : '';

/** Remove a cgroup subtree, children first. Ignores already-removed directories. */
function removeCgroupTree(root: string): void {
  const dirs: { p: string; depth: number }[] = [];
  const stack: { p: string; depth: number }[] = [{ p: root, depth: 0 }];
  while (stack.length) {
    const cur = stack.pop()!;
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(cur.p, { withFileTypes: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    dirs.push(cur);
    for (const d of ents) if (d.isDirectory()) stack.push({ p: path.join(cur.p, d.name), depth: cur.depth + 1 });
  }
  dirs.sort((a, b) => b.depth - a.depth);
  for (const d of dirs) {
    try {
      fs.rmdirSync(d.p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

/** mkdir a cgroup (and parents); on v2 enable the memory controller along the way so memory.stat exists. */
function mkCgroup(h: MemoryHierarchy, rel: string): string {
  const parts = rel.split('/').filter(Boolean);
  let cur = h.mountPoint;
  for (const part of parts) {
    if (h.version === 2) {
      try {
        fs.writeFileSync(path.join(cur, 'cgroup.subtree_control'), '+memory');
      } catch {
        /* already enabled or not allowed; memory.stat may then be absent */
      }
    }
    cur = path.join(cur, part);
    try {
      fs.mkdirSync(cur);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  return cur;
}

const ino = (p: string): bigint => fs.statSync(p, { bigint: true }).ino;

test.after.always('remove test cgroup dir', () => {
  if (testDir) removeCgroupTree(testDir);
});

test.serial('resolve: created cgroup, root, and cache hit', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  t.teardown(() => removeCgroupTree(path.join(testDir, 'a')));
  const b = mkCgroup(hier, `${testName}/a/b`);
  const id = ino(b);
  t.log(`ids: root=${ino(hier.mountPoint)} ${testName}=${ino(testDir)} a=${ino(path.dirname(b))} b=${id}`);

  const r = new CgroupResolver(hier);
  t.is(r.resolve(id), `/${testName}/a/b`);
  t.deepEqual(r.stats, { hits: 0, misses: 1, unresolved: 0, rescans: 1 });
  t.is(r.resolve(id), `/${testName}/a/b`);
  t.deepEqual(r.stats, { hits: 1, misses: 1, unresolved: 0, rescans: 1 });
  // The root cgroup's id is 1 and resolves to '/' (already cached by the walk).
  t.is(ino(hier.mountPoint), 1n);
  t.is(r.resolve(1n), '/');
  t.is(r.resolve(ino(path.dirname(b))), `/${testName}/a`);
  t.is(r.stats.rescans, 1);
  t.is(r.stats.hits, 3);
  t.true(r.isAlive(id));
  t.is(r.dirOf(id), b);

  const ms = readMemoryStat(hier, `/${testName}/a/b`);
  t.truthy(ms);
  t.is(typeof ms?.dirtyBytes, 'number');
  t.is(typeof ms?.writebackBytes, 'number');
  t.true(Number.isFinite(ms!.dirtyBytes) && Number.isFinite(ms!.writebackBytes));
  t.is(readMemoryStat(hier, `/${testName}/does-not-exist`), undefined);
  // '..' cannot climb above the mount point.
  t.is(cgroupDir(hier, '/../../etc'), path.join(hier.mountPoint, 'etc'));
  t.is(cgroupDir(hier, '/'), hier.mountPoint);
});

test.serial('resolve: a cgroup created after the walk is found after the rescan interval', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  t.teardown(() => removeCgroupTree(path.join(testDir, 'late')));
  let now = 1_000_000;
  const r = new CgroupResolver(hier, { rescanIntervalMs: 2000, negativeTtlMs: 10000, now: () => now });
  r.rescan();
  const late = mkCgroup(hier, `${testName}/late`);
  const id = ino(late);
  now += 500; // within the rescan interval: rate-limited, no walk, not negatively cached
  t.is(r.resolve(id), undefined);
  t.is(r.stats.rescans, 1);
  now += 2000;
  t.is(r.resolve(id), `/${testName}/late`);
  t.is(r.stats.rescans, 2);
  t.is(r.stats.unresolved, 1);
});

test.serial('resolve: unknown ids are unresolved and negatively cached', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  let now = 5_000_000;
  const r = new CgroupResolver(hier, { now: () => now }); // defaults: 2000 ms / 10000 ms
  const unknown = 2n ** 60n;
  t.is(r.resolve(unknown), undefined);
  t.deepEqual(r.stats, { hits: 0, misses: 1, unresolved: 1, rescans: 1 });
  t.is(r.resolve(unknown), undefined);
  t.deepEqual(r.stats, { hits: 0, misses: 2, unresolved: 2, rescans: 1 });
  // Past the rescan interval but within the TTL: still no walk for this id.
  now += 5000;
  t.is(r.resolve(unknown), undefined);
  t.is(r.stats.rescans, 1);
  // A flood of distinct unknown ids costs at most one walk per interval.
  for (let i = 1n; i <= 1000n; i++) t.is(r.resolve(unknown + i), undefined);
  t.is(r.stats.rescans, 2);
  t.is(r.stats.unresolved, 1003);
  // After the TTL the id is retried (one more walk).
  now += 10_001;
  t.is(r.resolve(unknown), undefined);
  t.is(r.stats.rescans, 3);
  t.false(r.isAlive(unknown));
});

test.serial('isAlive becomes false after rmdir; the id resolves through its linger, not after it is retired', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  const gone = path.join(testDir, 'gone');
  t.teardown(() => removeCgroupTree(gone));
  mkCgroup(hier, `${testName}/gone/child`);
  const idGone = ino(gone);
  const idChild = ino(path.join(gone, 'child'));
  let now = 0;
  const r = new CgroupResolver(hier, { rescanIntervalMs: 100, negativeTtlMs: 100, now: () => now });
  t.is(r.resolve(idChild), `/${testName}/gone/child`);
  t.is(r.resolve(idGone), `/${testName}/gone`);
  t.true(r.isAlive(idGone));
  t.true(r.isAlive(idChild));

  fs.rmdirSync(path.join(gone, 'child'));
  t.false(r.isAlive(idChild));
  t.true(r.isAlive(idGone));

  // Re-create with the same name: a new id; the old one stays dead.
  fs.rmdirSync(gone);
  fs.mkdirSync(gone);
  const idNew = ino(gone);
  t.not(idNew, idGone);
  t.false(r.isAlive(idGone));

  // A removed id keeps its path through its linger (README "Series lifecycle"), also after
  // a rescan, and the new one resolves; once retired, the old ids no longer resolve.
  now += 1000;
  t.is(r.resolve(idGone), `/${testName}/gone`);
  t.is(r.resolve(idNew), `/${testName}/gone`);
  t.true(r.isAlive(idNew));
  r.setLinger(5);
  t.is(r.life(idGone, now, false), 'lingering');
  t.is(r.life(idNew, now, true), 'alive');
  t.is(r.life(idGone, now + 5000, false), 'expired');
  r.retire(idGone);
  r.retire(idChild);
  now += 1000;
  t.is(r.resolve(idGone), undefined);
  t.is(r.resolve(idChild), undefined);
  t.is(r.pathOf(idGone), undefined);
});

test.serial('walk: directories only, and a vanished subtree is skipped', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  t.teardown(() => removeCgroupTree(path.join(testDir, 'w')));
  mkCgroup(hier, `${testName}/w/x/y`);
  const { byId } = walkHierarchy({ version: hier.version, mountPoint: path.join(testDir, 'w') });
  t.deepEqual([...byId.values()].sort(), ['/', '/x', '/x/y']);
  // Walking a hierarchy whose mount point vanished yields nothing instead of throwing.
  t.is(walkHierarchy({ version: hier.version, mountPoint: path.join(testDir, 'nope') }).byId.size, 0);
});

test.serial('resolve after creating 2,000 cgroups (timing)', (t) => {
  if (!hier) return t.fail('no memory hierarchy');
  const bulk = path.join(testDir, 'bulk');
  t.teardown(() => {
    const t0 = performance.now();
    removeCgroupTree(bulk);
    t.log(`removed 2,000 cgroups in ${(performance.now() - t0).toFixed(0)} ms`);
  });
  // 40 parents x 49 children = 2,000 cgroups (plus the 'bulk' dir itself).
  const ids: { id: bigint; rel: string }[] = [];
  const t0 = performance.now();
  mkCgroup(hier, `${testName}/bulk`);
  for (let p = 0; p < 40; p++) {
    const pd = path.join(bulk, `p${p}`);
    fs.mkdirSync(pd);
    ids.push({ id: ino(pd), rel: `/${testName}/bulk/p${p}` });
    if (hier.version === 2) fs.writeFileSync(path.join(pd, 'cgroup.subtree_control'), '+memory');
    for (let c = 0; c < 49; c++) {
      const cd = path.join(pd, `c${c}`);
      fs.mkdirSync(cd);
      ids.push({ id: ino(cd), rel: `/${testName}/bulk/p${p}/c${c}` });
    }
  }
  t.log(`created ${ids.length} cgroups in ${(performance.now() - t0).toFixed(0)} ms`);
  t.is(ids.length, 2000);
  t.is(new Set(ids.map((x) => x.id)).size, 2000, 'inode numbers must be unique');

  const r = new CgroupResolver(hier);
  const t1 = performance.now();
  const first = ids[ids.length - 1]!;
  t.is(r.resolve(first.id), first.rel);
  const firstMs = performance.now() - t1;
  const t2 = performance.now();
  let ok = 0;
  for (const { id, rel } of ids) if (r.resolve(id) === rel) ok++;
  const allMs = performance.now() - t2;
  t.is(ok, ids.length);
  t.is(r.stats.rescans, 1);
  t.is(r.stats.hits, ids.length);

  // Warm walks (dentries cached).
  const walks: number[] = [];
  for (let i = 0; i < 5; i++) {
    r.rescan();
    walks.push(r.lastWalk!.durationMs);
  }
  t.log(
    `hierarchy holds ${r.lastWalk!.cgroups} cgroups; first resolve (cold walk) ${firstMs.toFixed(1)} ms; ` +
      `2,000 cached resolves ${allMs.toFixed(2)} ms; warm walks ${walks.map((w) => w.toFixed(1)).join(', ')} ms`,
  );
});

test("memoryHierarchyId: the memory line of /proc/PID/cgroup on v1, 0 on v2 (the cgroup_mkdir record's root)", async (t) => {
  const { memoryHierarchyId } = await import('../agent/cgroups.js');
  const v1 = { version: 1 as const, mountPoint: '/sys/fs/cgroup/memory' };
  const v2 = { version: 2 as const, mountPoint: '/sys/fs/cgroup' };
  const hybrid = '9:name=systemd:/\n5:devices:/\n4:memory:/a/b\n3:cpu,cpuacct:/\n0::/\n';
  t.is(memoryHierarchyId(v1, hybrid), 4);
  t.is(memoryHierarchyId(v2, '0::/user.slice\n'), 0);
  t.is(memoryHierarchyId(v1, '0::/\n'), undefined);
  t.is(memoryHierarchyId(v1, '7:cpu,memory:/\n'), 7, 'co-mounted controllers');
});

test('first sight: a cgroup learnt from cgroup_mkdir resolves without a walk; rmdir starts its linger; retire forgets it', async (t) => {
  const { CgroupResolver } = await import('../agent/cgroups.js');
  let now = 0;
  const r = new CgroupResolver({ version: 1, mountPoint: '/nonexistent-hvwatch' }, { now: () => now });
  r.setLinger(10);
  r.learn(123n, '/job/a', false, 0);
  t.is(r.resolve(123n), '/job/a');
  t.is(r.stats.rescans, 0, 'no walk');
  t.is(r.life(123n, 0, false), 'alive');
  r.learn(123n, '/job/a', true, 1000);
  t.is(r.life(123n, 5000, false), 'lingering');
  t.is(r.resolve(123n), '/job/a', 'named through its linger');
  t.is(r.life(123n, 11_000, false), 'expired');
  r.retire(123n);
  now = 20_000;
  t.is(r.pathOf(123n), undefined);
});
