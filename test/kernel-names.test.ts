// Name-only kernel scans (KVMI presence without parsing BTF or loading the kallsyms table):
// the BTF string-section scan against a full parse of this kernel's vmlinux, and the
// kallsyms scan against a file in the kernel's own format (kernel/kallsyms.c s_show).
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Btf, btfNamesWithPrefix } from '../bpf/btf.js';
import { kallsymsWithPrefix } from '../agent/kernel.js';

test("BTF string scan finds every function a full parse of this kernel's vmlinux finds, for a prefix", (t) => {
  const raw = readFileSync('/sys/kernel/btf/vmlinux');
  const names = btfNamesWithPrefix(raw, 'kvm_vcpu_');
  const full = Btf.parse(raw);
  const funcs = ['kvm_vcpu_kick', 'kvm_vcpu_block', 'kvm_vcpu_halt', 'kvm_vcpu_ioctl', 'kvm_vcpu_on_spin'].filter((f) => full.hasFunc(f));
  t.true(funcs.length > 0, 'this kernel has KVM in vmlinux');
  for (const f of funcs) t.true(names.has(f), f);
  t.true([...names].every((n) => n.startsWith('kvm_vcpu_')));
  t.false(btfNamesWithPrefix(raw, 'kvmi_').has('kvmi_send_vcpu_event'), 'no KVMI on this kernel');
});

test('BTF string scan refuses what is not BTF with a clear error', (t) => {
  t.throws(() => btfNamesWithPrefix(Buffer.alloc(64), 'x'), { message: /BTF: bad magic 0x0 at byte offset 0/ });
  t.throws(() => btfNamesWithPrefix(Buffer.alloc(4), 'x'), { message: /BTF: truncated header/ });
});

test('kallsyms scan: function symbols of vmlinux and modules with the prefix, not data symbols or longer prefixes', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hvwatch-kallsyms-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'kallsyms');
  writeFileSync(
    file,
    [
      'ffffffff81000000 T _stext',
      'ffffffff81001000 t kvmi_msg_process',
      'ffffffffc0001000 T kvmi_send_vcpu_event\t[kvm]',
      'ffffffffc0002000 d kvmi_data_only\t[kvm]',
      'ffffffffc0003000 W kvmi_weak',
      'ffffffffc0004000 t xkvmi_not_this',
      '',
    ].join('\n'),
  );
  t.deepEqual([...kallsymsWithPrefix('kvmi_', file)].sort(), ['kvmi_msg_process', 'kvmi_send_vcpu_event', 'kvmi_weak']);
  t.deepEqual([...kallsymsWithPrefix('kvmi_', join(dir, 'missing'))], []);
  t.true(kallsymsWithPrefix('kvm_', '/proc/kallsyms').size > 0, 'this kernel lists its kvm_ functions');
});
