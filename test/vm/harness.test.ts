// Real (no mocks) checks of the VM harness: boot Debian kernels under QEMU TCG and run scripts in them.
// Skips, with the reason in the title, when QEMU/tools/kernel packages are unavailable.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { CACHE_DIR, describeRun, kernelMatrix, prepareKernel, runInGuest, vmUnavailableReason, type GuestResult, type KernelEntry } from './harness.js';

// Decided at module load (top-level await): a missing tool, kernel package or failed download skips, never passes.
const vmReason = vmUnavailableReason();
const kernels = new Map<KernelEntry, string | undefined>();
if (!vmReason) {
  for (const k of kernelMatrix()) {
    const p = await prepareKernel(k);
    kernels.set(k, 'skip' in p ? p.skip : undefined);
  }
}
const k61 = [...kernels.keys()].find((k) => k.name === '6.1');
const reason61 = vmReason ?? (k61 ? kernels.get(k61) : 'apt-cache offers no linux-image-6.1.0-*-amd64');

/** key=value lines of the guest's stdout. */
const facts = (r: GuestResult): Record<string, string> =>
  Object.fromEntries(
    r.stdout.split('\n').flatMap((l) => {
      const m = /^(\w+)=(.*)$/.exec(l);
      return m ? [[m[1]!, m[2]!]] : [];
    }),
  );

(reason61 ? test.skip : test.serial)(`6.1 guest: release, kprobes, nested kvm_amd, exit status${reason61 ? ` (skipped: ${reason61})` : ''}`, async (t) => {
  const k = k61!;
  const r = await runInGuest(
    k,
    `
echo "release=$(uname -r)"
[ -e /sys/kernel/tracing/kprobe_events ] && echo kprobe_events=yes || echo kprobe_events=no
echo "kallsyms=$(grep -c ' T __folio_end_writeback$' /proc/kallsyms)"
echo "nested=$(cat /sys/module/kvm_amd/parameters/nested)"
echo "cwd=$(pwd)"
exit 7
`,
    { modules: ['kvm_amd nested=1'] },
  );
  const f = facts(r);
  t.log(`${k.package}: attempts=${r.attempts} seconds=${r.seconds} boot=${r.bootSeconds}s script=${r.scriptSeconds}s`);
  const ok = [
    t.is(r.status, 7),
    t.is(f['release'], k.release),
    t.is(f['kprobe_events'], 'yes'),
    t.true(Number(f['kallsyms']) >= 1, `__folio_end_writeback in kallsyms: ${f['kallsyms']}`),
    t.regex(f['nested'] ?? '', /^(1|Y)$/),
    t.is(f['cwd'], process.cwd()),
    t.false(r.timedOut),
  ];
  if (ok.includes(false)) t.log(describeRun(r));
});

// A real fentry attach: a tiny libbpf loader (built on the host, run in the guest through the shared root)
// attaches fentry programs to vfs_read (counted) and __folio_end_writeback (the agent's target).
const BPF_SRC = `#include <linux/types.h>
#include <bpf/bpf_helpers.h>
__u64 reads = 0, writebacks = 0;
SEC("fentry/vfs_read") int hvw_read(unsigned long long *ctx) { __sync_fetch_and_add(&reads, 1); return 0; }
SEC("fentry/__folio_end_writeback") int hvw_wb(unsigned long long *ctx) { __sync_fetch_and_add(&writebacks, 1); return 0; }
char LICENSE[] SEC("license") = "GPL";
`;
const LOADER_SRC = `#include <bpf/libbpf.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
  if (libbpf_get_error(obj) || bpf_object__load(obj)) { printf("load=fail\\n"); return 3; }
  struct bpf_program *p; struct bpf_map *m; int attached = 0; char buf[256];
  bpf_object__for_each_program(p, obj) if (!libbpf_get_error(bpf_program__attach(p))) attached++;
  printf("attached=%d\\n", attached);
  for (int i = 0; i < 100; i++) { int fd = open("/proc/self/stat", O_RDONLY); if (read(fd, buf, sizeof buf) < 0) return 5; close(fd); }
  bpf_object__for_each_map(m, obj) if (strstr(bpf_map__name(m), ".bss")) {
    unsigned long long v[2] = {0, 0}; int key = 0;
    if (bpf_map__lookup_elem(m, &key, sizeof key, v, sizeof v, 0)) return 6;
    printf("reads=%llu\\nwritebacks=%llu\\n", v[0], v[1]);
  }
  return 0;
}
`;
function buildFentryProbe(): { obj: string; loader: string } | string {
  const dir = path.join(
    CACHE_DIR,
    'fentry-probe',
    createHash('sha256')
      .update(BPF_SRC + LOADER_SRC)
      .digest('hex')
      .slice(0, 12),
  );
  const obj = path.join(dir, 'probe.bpf.o'),
    loader = path.join(dir, 'loader');
  if (fs.existsSync(obj) && fs.existsSync(loader)) return { obj, loader };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'probe.bpf.c'), BPF_SRC);
  fs.writeFileSync(path.join(dir, 'loader.c'), LOADER_SRC);
  for (const [cmd, ...args] of [
    ['clang', '-O2', '-g', '-target', 'bpf', '-I/usr/include/x86_64-linux-gnu', '-c', 'probe.bpf.c', '-o', 'probe.bpf.o'],
    ['cc', '-O2', '-o', 'loader', 'loader.c', '-lbpf'],
  ] as [string, ...string[]][]) {
    const r = spawnSync(cmd, args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) return `${cmd} failed (needs clang, gcc, libbpf-dev): ${(r.error?.message ?? r.stderr).trim().split('\n')[0]}`;
  }
  return { obj, loader };
}
const probe = vmReason ? vmReason : buildFentryProbe();

for (const [k, kernelSkip] of kernels.size ? kernels : new Map([[{ name: '6.1', package: '-', release: '-' }, vmReason]])) {
  const reason = typeof probe === 'string' ? probe : kernelSkip;
  (reason ? test.skip : test.serial)(`${k.name} guest: fentry attaches and fires, node runs${reason ? ` (skipped: ${reason})` : ''}`, async (t) => {
    const { obj, loader } = probe as { obj: string; loader: string };
    const r = await runInGuest(
      k,
      `
echo "release=$(uname -r)"
echo "filter_fn=$(grep -c '^__folio_end_writeback$' /sys/kernel/debug/tracing/available_filter_functions)"
echo "node=$(node -e 'console.log(process.version)')"
'${loader}' '${obj}'
`,
    );
    const f = facts(r);
    t.log(
      `${k.package}: attempts=${r.attempts} seconds=${r.seconds} boot=${r.bootSeconds}s script=${r.scriptSeconds}s node=${f['node']} writebacks=${f['writebacks']}`,
    );
    const ok = [
      t.is(r.status, 0),
      t.is(f['release'], k.release),
      t.true(Number(f['filter_fn']) >= 1, `filter_fn=${f['filter_fn']}`),
      t.is(f['node'], process.version),
      t.is(f['attached'], '2'),
      t.true(Number(f['reads']) >= 100, `reads=${f['reads']}`),
    ];
    if (ok.includes(false)) t.log(describeRun(r));
  });
}
