import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { MAX_VM_NAME, VmResolver, parseProcStat, parseQemuOpts, parseVmIdentity, pidIdentity, sanitizeVmName } from '../agent/vms.js';
import { kvmUsable, startGuest } from './helpers/kvm.js';

// ---------------------------------------------------------------------------
// Command lines as the VMMs' launchers write them

const QEMU = '/usr/bin/qemu-system-x86_64';

test('QEMU: -name guest=NAME with other suboptions, plain -name, --name', (t) => {
  t.deepEqual(parseVmIdentity([QEMU, '-enable-kvm', '-name', 'guest=web01,debug-threads=on', '-m', '1024']), { name: 'web01', source: 'qemu' });
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'db02']), { name: 'db02', source: 'qemu' });
  t.deepEqual(parseVmIdentity(['qemu-kvm', '--name', 'debug-threads=on,guest=x9']), { name: 'x9', source: 'qemu' });
  // The implied key is only for the first element; later bare words are flags, not names.
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'vm3,debug-threads=on']), { name: 'vm3', source: 'qemu' });
  // The last -name wins, as in QEMU.
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'old', '-name', 'guest=new']), { name: 'new', source: 'qemu' });
  // -name without a guest name, or an empty one, names nothing.
  t.is(parseVmIdentity([QEMU, '-name', 'process=qemu-vm,debug-threads=on']), undefined);
  t.is(parseVmIdentity([QEMU, '-name', 'guest=']), undefined);
  t.is(parseVmIdentity([QEMU, '-name']), undefined);
  // argv[0] is the program, not an option.
  t.is(parseVmIdentity(['-name', 'x']), undefined);
});

test('QEMU: ,, is a literal comma', (t) => {
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'guest=a,,b,,,debug-threads=on']), { name: 'a,b,', source: 'qemu' });
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'a,,b']), { name: 'a,b', source: 'qemu' });
  t.deepEqual(
    parseQemuOpts('x,,y=1,guest=g=h,,i,flag', 'guest'),
    new Map([
      ['guest', 'g=h,i'], // the implied 'x,y=1' was overridden by the later guest=
      ['flag', 'on'],
    ]),
  );
  t.deepEqual(parseQemuOpts(''), new Map());
});

const LIBVIRT_ARGV = [
  QEMU,
  '-name',
  'guest=web01,debug-threads=on',
  '-S',
  '-object',
  '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-3-web01/master-key.aes"}',
  '-machine',
  'pc-q35-7.2,usb=off,dump-guest-core=off',
  '-uuid',
  '9f0e5ad4-3d2b-4b8e-a4ad-6ac1e8f6a0c1',
  '-chardev',
  'socket,id=charmonitor,fd=32,server=on,wait=off',
];

test('libvirt: -uuid plus a libvirt domain path, or a machine cgroup', (t) => {
  t.deepEqual(parseVmIdentity(LIBVIRT_ARGV), { name: 'web01', source: 'libvirt' });
  // Older libvirt: -object in QemuOpts syntax; session libvirt keeps domains under ~/.config.
  t.deepEqual(
    parseVmIdentity([
      QEMU,
      '-name',
      'guest=s1',
      '-uuid',
      'u',
      '-object',
      'secret,id=masterKey0,format=raw,file=/home/u/.config/libvirt/qemu/lib/domain-1-s1/master-key.aes',
    ]),
    { name: 's1', source: 'libvirt' },
  );
  // A hand-started QEMU with a uuid is not libvirt's.
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'guest=web01', '-uuid', '9f0e5ad4-3d2b-4b8e-a4ad-6ac1e8f6a0c1']), { name: 'web01', source: 'qemu' });
  // Nor is one that merely mentions libvirt's directory without -uuid.
  t.is(parseVmIdentity(LIBVIRT_ARGV.filter((a, i, all) => a !== '-uuid' && all[i - 1] !== '-uuid'))?.source, 'qemu');
  // The cgroup says so even when the command line does not.
  t.deepEqual(parseVmIdentity([QEMU, '-name', 'guest=db1'], undefined, '0::/machine.slice/machine-qemu\\x2d4\\x2ddb1.scope/libvirt/emulator\n'), {
    name: 'db1',
    source: 'libvirt',
  });
  t.is(parseVmIdentity([QEMU, '-name', 'guest=db1'], undefined, '12:memory:/machine/qemu-4-db1.libvirt-qemu/emulator\n')?.source, 'libvirt');
  t.is(parseVmIdentity([QEMU, '-name', 'guest=db1'], undefined, '0::/system.slice/qemu@db1.service\n')?.source, 'qemu');
});

test('Firecracker: --id, through the jailer, and versioned release binaries', (t) => {
  t.deepEqual(parseVmIdentity(['/usr/bin/firecracker', '--api-sock', '/run/fc.sock', '--id', 'fc-7']), { name: 'fc-7', source: 'firecracker' });
  t.deepEqual(parseVmIdentity(['firecracker-v1.7.0-x86_64', '--id=fc-8']), { name: 'fc-8', source: 'firecracker' });
  t.deepEqual(parseVmIdentity(['/usr/bin/jailer', '--id', 'jail-1', '--exec-file', '/usr/bin/firecracker', '--uid', '123', '--gid', '100']), {
    name: 'jail-1',
    source: 'firecracker',
  });
  // argv[0] rewritten: the exe link still says firecracker.
  t.deepEqual(parseVmIdentity(['vmm', '--id', 'fc-9'], '/srv/bin/firecracker (deleted)'), { name: 'fc-9', source: 'firecracker' });
  // No --id: Firecracker's default "anonymous-instance" would merge all such VMs.
  t.is(parseVmIdentity(['firecracker', '--api-sock', '/run/fc.sock']), undefined);
  // A Firecracker --id wins over anything QEMU-like.
  t.is(parseVmIdentity(['firecracker', '-name', 'q', '--id', 'f'])?.source, 'firecracker');
});

test('cloud-hypervisor: the --api-socket basename', (t) => {
  const ch = '/usr/local/bin/cloud-hypervisor';
  t.deepEqual(parseVmIdentity([ch, '--api-socket', 'path=/run/ch/vm-42.sock', '--cpus', 'boot=2']), { name: 'vm-42', source: 'cloud-hypervisor' });
  t.deepEqual(parseVmIdentity([ch, '--api-socket', '/run/ch/vm-43.sock']), { name: 'vm-43', source: 'cloud-hypervisor' });
  t.deepEqual(parseVmIdentity([ch, '--api-socket=path=/tmp/api']), { name: 'api', source: 'cloud-hypervisor' });
  t.deepEqual(parseVmIdentity(['cloud-hypervisor-static', '--api-socket', 'path=/run/a.b.sock']), { name: 'a.b', source: 'cloud-hypervisor' });
  // An inherited fd, or no API socket at all, names nothing.
  t.is(parseVmIdentity([ch, '--api-socket', 'fd=3']), undefined);
  t.is(parseVmIdentity([ch, '--kernel', 'vmlinux']), undefined);
});

test('unknown processes name nothing; the fallback is pid-<PID>', (t) => {
  t.is(parseVmIdentity(['/usr/bin/crosvm', 'run', 'vmlinux']), undefined);
  t.is(parseVmIdentity([]), undefined);
  t.deepEqual(pidIdentity(1234), { name: 'pid-1234', source: 'pid' });
});

test('a hostile name: control characters removed, quotes kept, length bounded', (t) => {
  const evil = `vm\n# HELP fake\r\n"quoted" \\back\u0000\u001b[31m\u202eevil`;
  const r = parseVmIdentity([QEMU, '-name', `guest=${evil}`]);
  t.deepEqual(r, { name: 'vm# HELP fake"quoted" \\back[31mevil', source: 'qemu' });
  // Quotes and backslashes are valid in label values (the exposition escapes them).
  t.false(/[\p{Cc}\p{Cf}]/u.test(r!.name));

  const long = 'x'.repeat(10_000);
  const a = sanitizeVmName(long);
  const b = sanitizeVmName(`${long}y`);
  t.is([...a].length, MAX_VM_NAME);
  t.regex(a, /^x{55}~[0-9a-f]{8}$/);
  t.not(a, b, 'two long names with a common prefix must stay two VMs');
  t.is(sanitizeVmName(long), a, 'deterministic');
  // Truncation counts code points: no half surrogate pairs.
  const emoji = sanitizeVmName('🖥'.repeat(100));
  t.is([...emoji].length, MAX_VM_NAME);
  t.is(Buffer.from(emoji, 'utf8').toString('utf8'), emoji); // a lone surrogate would become U+FFFD
  // A name that is only control characters is no name at all.
  t.is(sanitizeVmName('\n\t\u0007'), '');
  t.is(parseVmIdentity([QEMU, '-name', 'guest=\n\n']), undefined);
  t.is(sanitizeVmName(`${'a'.repeat(64)}`), 'a'.repeat(64));
});

test('parseProcStat: comm with spaces and parentheses', (t) => {
  const fields = (comm: string, start: number) =>
    `4242 (${comm}) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 ${start} 12345678 900 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n`;
  t.deepEqual(parseProcStat(fields('qemu-system-x86', 987654)), { comm: 'qemu-system-x86', state: 'S', ppid: 1, startTime: 987654 });
  t.deepEqual(parseProcStat(fields('a) R 9 (b', 55)), { comm: 'a) R 9 (b', state: 'S', ppid: 1, startTime: 55 });
  t.deepEqual(parseProcStat(fields('CPU 0/KVM', 7)), { comm: 'CPU 0/KVM', state: 'S', ppid: 1, startTime: 7 });
  t.is(parseProcStat('4242 (x) S 1 2 3'), undefined);
  t.is(parseProcStat(''), undefined);
});

// ---------------------------------------------------------------------------
// The resolver over a fake /proc

function fakeProc(t: import('ava').ExecutionContext): {
  root: string;
  put(pid: number, o: { start: number; argv: string[]; state?: string; exe?: string; cgroup?: string }): void;
  rm(pid: number): void;
} {
  const root = fs.mkdtempSync(path.join(tmpdir(), 'hvwatch-fakeproc-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  return {
    root,
    put(pid, o) {
      const d = path.join(root, String(pid));
      fs.rmSync(d, { recursive: true, force: true });
      fs.mkdirSync(d);
      const comm = path.basename(o.argv[0] ?? 'x').slice(0, 15);
      fs.writeFileSync(path.join(d, 'stat'), `${pid} (${comm}) ${o.state ?? 'S'} 1 ${pid} ${pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 ${o.start} 0 0\n`);
      fs.writeFileSync(path.join(d, 'cmdline'), o.argv.map((a) => `${a}\0`).join(''));
      if (o.exe) fs.symlinkSync(o.exe, path.join(d, 'exe'));
      if (o.cgroup) fs.writeFileSync(path.join(d, 'cgroup'), o.cgroup);
    },
    rm(pid) {
      fs.rmSync(path.join(root, String(pid)), { recursive: true, force: true });
    },
  };
}

test('resolver: caches by pid and start time; a reused pid is resolved again', (t) => {
  const p = fakeProc(t);
  const r = new VmResolver({ procRoot: p.root });
  p.put(4242, { start: 1000, argv: [QEMU, '-name', 'guest=vm-a'] });
  t.deepEqual(r.resolve(4242), { name: 'vm-a', source: 'qemu' });
  t.is(r.size, 1);
  t.true(r.alive(4242));
  t.true(r.alive(4242, 1000));

  // Cached: a changed command line with the same start time is the same process (QEMU
  // does not rename itself), so it is not re-read.
  p.put(4242, { start: 1000, argv: [QEMU, '-name', 'guest=renamed'] });
  t.is(r.resolve(4242)?.name, 'vm-a');

  // The pid is reused by another VMM: same pid, new start time.
  p.put(4242, { start: 2000, argv: ['/usr/bin/firecracker', '--id', 'fc-b'], exe: '/usr/bin/firecracker' });
  t.false(r.alive(4242), 'the cached process (start 1000) is gone');
  t.false(r.alive(4242, 1000));
  t.true(r.alive(4242, 2000));
  t.deepEqual(r.resolve(4242), { name: 'fc-b', source: 'firecracker' });
  t.true(r.alive(4242));
  t.is(r.size, 1);

  // Gone: null, and the entry is dropped.
  p.rm(4242);
  t.is(r.resolve(4242), null);
  t.false(r.alive(4242));
  t.is(r.size, 0);
});

test('resolver: fallback, zombies, cgroup and exe from /proc, forget, prune, bound', (t) => {
  const p = fakeProc(t);
  const r = new VmResolver({ procRoot: p.root, maxEntries: 3 });
  p.put(10, { start: 1, argv: ['/usr/bin/crosvm', 'run'] });
  p.put(11, { start: 1, argv: [] }); // a kernel thread: empty cmdline
  p.put(12, { start: 1, argv: [QEMU, '-name', 'guest=z'], state: 'Z' });
  p.put(13, { start: 1, argv: [QEMU, '-name', 'guest=lv'], cgroup: '0::/machine.slice/machine-qemu\\x2d1\\x2dlv.scope/libvirt\n' });
  p.put(14, { start: 1, argv: ['vmm', '--id', 'renamed-argv0'], exe: '/opt/fc/firecracker' });

  t.deepEqual(r.resolve(10), { name: 'pid-10', source: 'pid' });
  t.deepEqual(r.resolve(11), { name: 'pid-11', source: 'pid' });
  // A zombie has closed its VM already.
  t.is(r.resolve(12), null);
  t.false(r.alive(12));
  t.deepEqual(r.resolve(13), { name: 'lv', source: 'libvirt' });
  t.is(r.size, 3);
  t.deepEqual(r.resolve(14), { name: 'renamed-argv0', source: 'firecracker' });
  t.is(r.size, 3, 'bounded: the least recently resolved pid (10) was dropped');
  t.is(r.resolve(-1), null);
  t.is(r.resolve(999), null);

  r.forget(14);
  t.is(r.size, 2);
  p.rm(13);
  p.put(11, { start: 5, argv: [] });
  t.deepEqual(r.prune().sort(), [11, 13]);
  t.is(r.size, 0);
});

// ---------------------------------------------------------------------------
// Real processes

function exited(c: ChildProcess): Promise<void> {
  return new Promise((resolve) => (c.exitCode !== null || c.signalCode !== null ? resolve() : c.once('exit', () => resolve())));
}

test('resolver: a real QEMU-like process, then its death', async (t) => {
  // argv0 makes /proc/PID/cmdline start like QEMU's; the arguments after -- are QEMU's.
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', '--', '-name', 'guest=test,,vm,debug-threads=on'], {
    argv0: 'qemu-system-x86_64',
    stdio: 'ignore',
  });
  t.teardown(() => child.kill('SIGKILL'));
  await new Promise((resolve, reject) => child.once('spawn', resolve).once('error', reject));
  const pid = child.pid!;

  const r = new VmResolver();
  t.deepEqual(r.resolve(pid), { name: 'test,vm', source: 'qemu' });
  const start = r.startTime(pid);
  t.true(typeof start === 'number' && start > 0);
  t.true(r.alive(pid));
  t.true(r.alive(pid, start!));
  t.false(r.alive(pid, start! + 1));

  child.kill('SIGKILL');
  await exited(child); // node reaps it before 'exit': no zombie left behind
  t.is(r.resolve(pid), null);
  t.false(r.alive(pid));
  t.false(r.alive(pid, start!));
  t.is(r.size, 0);
});

const kvmSkip = kvmUsable();
(kvmSkip ? test.skip : test)('resolver: the kvm-guest launcher is seen like QEMU', async (t) => {
  const g = await startGuest({ name: `hvwatch-vms-${process.pid}` });
  t.teardown(() => g.kill());
  const r = new VmResolver();
  t.deepEqual(r.resolve(g.pid), { name: `hvwatch-vms-${process.pid}`, source: 'qemu' });
  await g.kill();
  t.is(r.resolve(g.pid), null);
});
if (kvmSkip) {
  test('kvm-guest resolver test skipped', (t) => {
    t.log(`skipped: ${kvmSkip}`);
    t.pass();
  });
}

test('a first-sight record (hv_vm_seen cmdline bytes) parses like /proc/PID/cmdline; a truncated one loses its partial last word', async (t) => {
  const { argvOfRecord } = await import('../agent/services/vm-labels.js');
  const full = Buffer.from('qemu-system-x86_64\0-name\0guest=web01,debug-threads=on\0-m\x00512\0', 'utf8');
  t.deepEqual(argvOfRecord(full, false), ['qemu-system-x86_64', '-name', 'guest=web01,debug-threads=on', '-m', '512']);
  t.deepEqual(parseVmIdentity(argvOfRecord(full, false)), { name: 'web01', source: 'qemu' });
  // Cut inside "-name guest=we": the partial value must not become a wrong name.
  const cut = full.subarray(0, full.indexOf('guest=') + 8);
  t.deepEqual(argvOfRecord(cut, true), ['qemu-system-x86_64', '-name']);
  t.is(parseVmIdentity(argvOfRecord(cut, true)), undefined, 'no name rather than "we"');
  t.deepEqual(parseVmIdentity(argvOfRecord(Buffer.from('firecracker\0--id\0fn-42\0'), false)), { name: 'fn-42', source: 'firecracker' });
});
