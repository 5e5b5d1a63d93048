// Real memory-cgroup workloads for tests and benchmarks.
import * as fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { findMemoryHierarchy, type MemoryHierarchy } from '../../agent/cgroups.js';

export function memoryHierarchy(): MemoryHierarchy {
  const h = findMemoryHierarchy();
  if (!h) throw new Error('no memory cgroup hierarchy mounted');
  return h;
}

export interface TestCgroup {
  path: string; // relative to the hierarchy root, e.g. /hvwatch-test-123
  dir: string;
  id: bigint;
  remove(): void;
}

export function createCgroup(name: string): TestCgroup {
  const h = memoryHierarchy();
  const dir = join(h.mountPoint, name);
  fs.mkdirSync(dir, { recursive: true });
  if (h.version === 2) {
    try {
      fs.writeFileSync(join(h.mountPoint, 'cgroup.subtree_control'), '+memory');
    } catch {
      /* already */
    }
  }
  return {
    path: `/${name}`,
    dir,
    id: fs.statSync(dir, { bigint: true }).ino,
    remove() {
      for (let i = 0; i < 50; i++) {
        try {
          fs.rmdirSync(dir);
          return;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
          spawnSync('sleep', ['0.1']);
        }
      }
    },
  };
}

/** Writes `mib` MiB into `file` from a shell placed in the cgroup, without fsync: the pages
 * stay dirty (charged to the cgroup) until the flusher writes them, ~30 s by default
 * (vm.dirty_expire_centisecs). The caller removes the file. */
export function dirtyWriteInCgroup(cg: TestCgroup, mib: number, file: string): void {
  const script = `echo $$ > ${cg.dir}/cgroup.procs && dd if=/dev/zero of=${file} bs=1M count=${mib} status=none`;
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`workload failed (${r.status}): ${r.stderr}`);
}

/** Writes `mib` MiB with fsync from a shell placed in the cgroup; returns pages written. */
export function fsyncWriteInCgroup(cg: TestCgroup, mib: number, file = `/var/tmp/hvwatch-wb-${process.pid}.bin`): number {
  const script = `echo $$ > ${cg.dir}/cgroup.procs && dd if=/dev/zero of=${file} bs=1M count=${mib} conv=fsync status=none && rm -f ${file}`;
  const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`workload failed (${r.status}): ${r.stderr}`);
  return (mib * 1024 * 1024) / 4096;
}
