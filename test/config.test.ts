// Bad input at start-up: one line on stderr, exit status 2, naming what is wrong.
import test from 'ava';
import { runCli, writeConfig } from './helpers/agent.js';
import { parseConfig, ConfigError, parseListen } from '../agent/config.js';

const cases: [string, string, RegExp][] = [
  ['unknown key', 'listen: ":9477"\nlisten_port: 9\n', /key .*listen_port.*(Unrecognized|unrecognized)/],
  ['wrong type', 'cardinality:\n  cgroups: lots\n', /key cardinality\.cgroups: Expected number/],
  ['bad listen', 'listen: "nine"\n', /key listen: expected host:port/],
  ['bad tier', 'probes:\n  attach:\n    memcg_writeback: [{attach: uprobe, target: x}]\n', /key probes\.attach\.memcg_writeback\.0\.attach/],
  [
    'tier the probe lacks',
    'probes:\n  attach:\n    memcg_writeback: [{attach: kprobe, target: x}]\n',
    /key probes\.attach\.memcg_writeback\.0\.attach: probe memcg_writeback has no kprobe tier/,
  ],
  ['invalid YAML', 'probes: [\n', /invalid YAML/],
  ['unknown probe', 'probes:\n  hot: [no_such_probe]\n', /key probes: unknown probe no_such_probe/],
];

for (const [what, yaml, re] of cases) {
  test(`bad config (${what}) exits 2 with one line naming the file and key`, async (t) => {
    const f = writeConfig(yaml);
    const r = await runCli(['probes', '--config', f]);
    t.is(r.code, 2);
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, r.stderr);
    t.true(lines[0]!.startsWith(`hvwatch: ${f}`), r.stderr);
    t.regex(lines[0]!, re);
  });
}

test('a missing config file exits 2 naming it', async (t) => {
  const r = await runCli(['run', '--config', '/nonexistent/hvwatch.yaml']);
  t.is(r.code, 2);
  t.regex(r.stderr, /^hvwatch: \/nonexistent\/hvwatch\.yaml: cannot read: ENOENT\n$/);
});

test('an unknown flag exits 2 with usage', async (t) => {
  const r = await runCli(['run', '--frobnicate']);
  t.is(r.code, 2);
  t.regex(r.stderr, /Unknown option '--frobnicate'/);
});

test('running without privileges exits 2 naming the missing capability', async (t) => {
  const r = await runCli(['probes'], { wrap: ['setpriv', '--inh-caps=-all', '--bounding-set=-all', '--'] });
  t.is(r.code, 2);
  t.regex(r.stderr, /^hvwatch: missing capability CAP_BPF \(or CAP_SYS_ADMIN\)/);
});

test('a kernel without BTF (simulated by a missing bpf.btfPath) exits 2 with a clear line', async (t) => {
  const f = writeConfig('bpf:\n  btfPath: /nonexistent/vmlinux.btf\n');
  const r = await runCli(['probes', '--config', f]);
  t.is(r.code, 2);
  t.regex(r.stderr, /^hvwatch: BTF file \/nonexistent\/vmlinux\.btf \(config bpf\.btfPath\) does not exist\n$/);
});

test('a port already in use exits 2 naming the address', async (t) => {
  const { createServer } = await import('node:net');
  const s = createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  t.teardown(() => void s.close());
  const port = (s.address() as { port: number }).port;
  const r = await runCli(['run', '--listen', `127.0.0.1:${port}`]);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`));
});

test('config defaults and listen parsing', (t) => {
  const c = parseConfig('', 'empty.yaml');
  t.is(c.listen, ':9477');
  t.deepEqual(c.probes.hot, []);
  t.deepEqual(parseListen(':9477'), { host: undefined, port: 9477 });
  t.deepEqual(parseListen('[::1]:80'), { host: '::1', port: 80 });
  t.throws(() => parseListen('0.0.0.0:70000'), { instanceOf: ConfigError });
});
