// The test guest launcher against this machine's /dev/kvm. Probe tests compare their
// counts with what kvm-guest reports, so its counts must be exact.
import test from 'ava';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { kvmUsable, runGuest, startGuest } from './helpers/kvm.js';

const skip = kvmUsable();
const kvmTest = skip ? test.skip : test;
if (skip) {
  test('kvm-guest tests are skipped here', (t) => {
    t.log(`skipped: ${skip}`);
    t.pass();
  });
}

/** The VM fds a process holds ("anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0", ...). */
function kvmFds(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    })
    .filter((l) => l.startsWith('anon_inode:kvm-'))
    .sort();
}

kvmTest('N writes give exactly N io exits and one hlt', async (t) => {
  const r = await runGuest({ writes: 1000 });
  t.is(r.io_exits, 1000);
  t.is(r.hlt_exits, 1);
  t.deepEqual(r.other_exits, {});
  t.is(r.port, 0x3f8);
  t.true(r.run_ns > 0);
  t.log(`1000 port writes in ${(r.run_ns / 1e6).toFixed(1)} ms (${(r.run_ns / 1000 / r.io_exits).toFixed(1)} us per exit)`);
});

kvmTest('zero writes and another port: the loop is skipped, the port is honoured', async (t) => {
  const zero = await runGuest({ writes: 0 });
  t.is(zero.io_exits, 0);
  t.is(zero.hlt_exits, 1);
  // io_unexpected would count exits on any port but the requested one.
  const e9 = await runGuest({ writes: 7, port: 0xe9 });
  t.is(e9.port, 0xe9);
  t.is(e9.io_exits, 7);
  t.deepEqual(e9.other_exits, {});
});

kvmTest('2 vCPUs: each does N writes and halts once', async (t) => {
  const r = await runGuest({ writes: 500, vcpus: 2 });
  t.is(r.vcpus, 2);
  t.is(r.io_exits, 1000);
  t.is(r.hlt_exits, 2);
  t.deepEqual(r.per_vcpu, [
    { io_exits: 500, hlt_exits: 1 },
    { io_exits: 500, hlt_exits: 1 },
  ]);
});

kvmTest('--nested-state reports each ioctl and its errno', async (t) => {
  const r = await runGuest({ writes: 1, nestedState: true });
  const ns = r.nested_state;
  t.truthy(ns);
  if (!ns) return;
  t.log(`KVM_CAP_NESTED_STATE=${r.cap_nested_state}; GET ret=${ns.get.ret} errno=${ns.get.errno}; SET ret=${ns.set.ret} errno=${ns.set.errno}`);
  // A zeroed header is never a valid state to set, nested virtualization or not.
  t.is(ns.set.ret, -1);
  t.true(ns.set.errno_num > 0);
  if (r.cap_nested_state === 0) {
    // No nested virtualization (this repository's CI machines): GET fails too.
    t.is(ns.get.ret, -1);
    t.true(ns.get.errno_num > 0);
    t.regex(ns.get.errno ?? '', /^E[A-Z0-9]+$/);
  } else {
    t.is(ns.get.ret, 0);
    t.true((ns.get_state?.size ?? 0) >= 128);
  }
});

kvmTest('a started guest: name in cmdline, QEMU-style vCPU threads, VM held open after the run', async (t) => {
  const name = `hvwatch-test-${process.pid}`;
  const g = await startGuest({ name, writes: 10, vcpus: 2, holdMs: 30_000 });
  t.teardown(() => g.kill());

  const argv = readFileSync(`/proc/${g.pid}/cmdline`, 'utf8').split('\0');
  t.true(argv.includes('-name'));
  t.true(argv.includes(`guest=${name},debug-threads=on`));
  const threads = readdirSync(`/proc/${g.pid}/task`).map((tid) => readFileSync(`/proc/${g.pid}/task/${tid}/comm`, 'utf8').trim());
  t.true(threads.includes('CPU 0/KVM') && threads.includes('CPU 1/KVM'), threads.join(','));
  // Waiting for go(): the VM exists and nothing has run yet.
  t.deepEqual(kvmFds(g.pid), ['anon_inode:kvm-vcpu:0', 'anon_inode:kvm-vcpu:1', 'anon_inode:kvm-vm']);

  g.go();
  const r = await g.result;
  t.is(r.pid, g.pid);
  t.is(r.io_exits, 20);
  t.is(r.hlt_exits, 2);
  // --hold-ms: the result is out and the VM still exists, so an agent can be scraped now.
  t.deepEqual(kvmFds(g.pid), ['anon_inode:kvm-vcpu:0', 'anon_inode:kvm-vcpu:1', 'anon_inode:kvm-vm']);
  await g.kill();
  t.is(await g.exited, null); // killed, not exited by itself
});

kvmTest('failures are one stderr line and a non-zero exit', async (t) => {
  await t.throwsAsync(runGuest({ args: ['--kvm', '/nonexistent/kvm'] }), {
    message: /^kvm-guest exited 1: kvm-guest: open \/nonexistent\/kvm: No such file or directory$/,
  });
  await t.throwsAsync(runGuest({ args: ['--no-such-option'] }), {
    message: /^kvm-guest exited 2: kvm-guest: unknown argument '--no-such-option' \(see --help\)$/,
  });
  await t.throwsAsync(runGuest({ vcpus: 0 }), { message: /exited 2: .*--vcpus/ });
  // runGuest gives it no stdin: a guest told to wait for a start byte must not hang.
  await t.throwsAsync(runGuest({ args: ['--wait-start'] }), { message: /exited 1: .*stdin closed before the start byte/ });
});
