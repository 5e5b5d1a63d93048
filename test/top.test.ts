// `hvwatch top`: the exposition parser, the model (two scrapes -> rows), the renderer, and
// the real CLI against a synthetic /metrics endpoint served over HTTP by this test.
import test from 'ava';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { M } from '../agent/catalog.js';
import { ExpositionError, parseExposition, parseExpositionText, type Sample } from '../agent/export/parse.js';
import { buildFrame, counterIncrease, type Row } from '../agent/top/model.js';
import { formatRate, render } from '../agent/top/render.js';
import { freePort, parseExposition as helperParse, runCli } from './helpers/agent.js';

// ---------------------------------------------------------------------------
// synthetic samples

const s = (name: string, labels: Record<string, string>, value: number): Sample => ({ name, labels, value });
const exit = (vm: string, reason: string, v: number, isa = 'vmx'): Sample => s(M.kvmExits.name, { vm, isa, reason }, v);
const user = (vm: string, reason: string, v: number): Sample => s(M.kvmUserspaceExits.name, { vm, reason }, v);
const nested = (vm: string, handler: string, reason: string, v: number, isa = 'svm'): Sample => s(M.kvmNestedExits.name, { vm, isa, reason, handler }, v);
const children = (rows: Row[], vm: string): Row[] => rows.filter((r) => r.vm === vm && r.depth === 1);
const vmRows = (rows: Row[]): Row[] => rows.filter((r) => r.kind === 'vm');
const near = (a: number, b: number, eps = 1e-9): boolean => Math.abs(a - b) <= eps;

// ---------------------------------------------------------------------------
// parser

test('parser: names, labels, values and TYPE/HELP metadata', (t) => {
  const e = parseExpositionText(
    [
      '# HELP hvwatch_kvm_exits_total VM-exits per VM \\\\ and a\\nnewline.',
      '# TYPE hvwatch_kvm_exits_total counter',
      '# just a comment',
      'hvwatch_kvm_exits_total{vm="web",isa="vmx",reason="HLT"} 42',
      'up 1',
      'ns:metric_name{a="1",} 2.5e3',
      '  spaced { a = "x" , b="y" }   -7  ',
      '',
    ].join('\n'),
  );
  t.deepEqual(e.samples, [
    { name: 'hvwatch_kvm_exits_total', labels: { vm: 'web', isa: 'vmx', reason: 'HLT' }, value: 42 },
    { name: 'up', labels: {}, value: 1 },
    { name: 'ns:metric_name', labels: { a: '1' }, value: 2500 },
    { name: 'spaced', labels: { a: 'x', b: 'y' }, value: -7 },
  ]);
  t.deepEqual(e.families.get('hvwatch_kvm_exits_total'), { help: 'VM-exits per VM \\ and a\nnewline.', type: 'counter' });
});

test('parser: escaped label values', (t) => {
  const [x] = parseExposition('m{q="say \\"hi\\"",b="C:\\\\dir\\\\",n="two\\nlines",c="a,b}=c",u="ünï"} 1\n');
  t.deepEqual(x!.labels, { q: 'say "hi"', b: 'C:\\dir\\', n: 'two\nlines', c: 'a,b}=c', u: 'ünï' });
});

test('parser: NaN, +Inf, -Inf values and an le="+Inf" bucket', (t) => {
  const x = parseExposition(['h_bucket{le="0.5"} 3', 'h_bucket{le="+Inf"} +Inf', 'g -Inf', 'n NaN', 'e 1E-3', 'f .5', 'i Inf'].join('\n'));
  t.is(x[0]!.value, 3);
  t.is(x[1]!.labels['le'], '+Inf');
  t.is(x[1]!.value, Infinity);
  t.is(x[2]!.value, -Infinity);
  t.true(Number.isNaN(x[3]!.value));
  t.is(x[4]!.value, 0.001);
  t.is(x[5]!.value, 0.5);
  t.is(x[6]!.value, Infinity);
});

test('parser: timestamps, CRLF line ends and OpenMetrics exemplars/EOF', (t) => {
  const x = parseExposition(
    ['a 1 1700000000000', 'b{x="y"} 2 -5', 'c 3\r', 'd_total{vm="v"} 4 1700000000.25 # {trace_id="abc"} 1.0 1700000000.1', 'e_total 5 # {} 2', '# EOF'].join(
      '\n',
    ),
  );
  t.deepEqual(
    x.map((v) => [v.name, v.value, v.timestamp]),
    [
      ['a', 1, 1700000000000],
      ['b', 2, -5],
      ['c', 3, undefined],
      ['d_total', 4, 1700000000.25],
      ['e_total', 5, undefined],
    ],
  );
  t.false('timestamp' in x[2]!);
});

test('parser: a garbage line is an error naming its line', (t) => {
  const bad = [
    'this is not a metric',
    'a{x="1"}',
    'a',
    'a 1 2 3',
    'a{x=1} 2',
    'a 12abc',
    'a{x="unterminated} 1',
    'a{x="bad \\t escape"} 1',
    'a{x="1",x="2"} 1',
    'a{1x="1"} 1',
    'a 1 NaN',
    'a 0x10',
    'a{x="1"}2',
    '<html>',
    '# TYPE a bogus',
  ];
  for (const line of bad) {
    const e = t.throws(() => parseExposition(`ok 1\n${line}\nok 2\n`), { instanceOf: ExpositionError }, line);
    t.is(e?.line, 2, line);
    t.regex(e?.message ?? '', /^line 2: /, line);
  }
});

test('the test helper parseExposition delegates to the agent parser', (t) => {
  const text = '# TYPE m counter\nm{a="x\\\\y\\"z"} 3\nm{a="w"} +Inf\n';
  t.deepEqual(helperParse(text), parseExposition(text));
  t.throws(() => helperParse('m{a="x"\n'), { instanceOf: ExpositionError });
});

// ---------------------------------------------------------------------------
// model

test('model: rates from two scrapes, VM totals summed over reasons and ISA', (t) => {
  const prev = [exit('web', 'HLT', 100), exit('web', 'EPT_VIOLATION', 1000), exit('web', 'EPT_VIOLATION', 10, 'svm')];
  const cur = [exit('web', 'HLT', 300), exit('web', 'EPT_VIOLATION', 1500), exit('web', 'EPT_VIOLATION', 30, 'svm')];
  const f = buildFrame(prev, cur, 2);
  t.is(f.vms, 1);
  t.is(f.seconds, 2);
  t.is(f.rate, 360);
  t.deepEqual(
    f.rows.map((r) => [r.kind, r.depth, r.name, r.rate, r.total]),
    [
      ['vm', 0, 'web', 360, 1830],
      ['exit', 1, 'EPT_VIOLATION', 260, 1530],
      ['exit', 1, 'HLT', 100, 300],
    ],
  );
  t.is(f.rows[0]!.basis, 'exits');
  t.is(f.rows[0]!.share, null);
});

test('model: VMs and reasons sorted by rate descending, ties by name', (t) => {
  const prev = [exit('a', 'X', 0), exit('b', 'X', 0), exit('c', 'X', 0)];
  const cur = [exit('a', 'X', 10), exit('a', 'Y', 10), exit('a', 'Z', 30), exit('b', 'X', 500), exit('c', 'Q', 40), exit('c', 'X', 10)];
  const f = buildFrame(prev, cur, 1);
  t.deepEqual(
    vmRows(f.rows).map((r) => [r.name, r.rate]),
    [
      ['b', 500],
      ['a', 50],
      ['c', 50],
    ],
  );
  t.deepEqual(
    children(f.rows, 'a').map((r) => r.name),
    ['Z', 'X', 'Y'],
  );
  t.deepEqual(
    children(f.rows, 'c').map((r) => r.name),
    ['Q', 'X'],
  );
  // Child rows follow their VM.
  t.deepEqual(
    f.rows.map((r) => r.vm),
    ['b', 'b', 'a', 'a', 'a', 'a', 'c', 'c', 'c'],
  );
});

test('model: exit-reason shares sum to ~100 per VM, also with --limit', (t) => {
  const reasons = ['HLT', 'EPT_VIOLATION', 'IO_INSTRUCTION', 'MSR_WRITE', 'EXTERNAL_INTERRUPT', 'PAUSE_INSTRUCTION', 'CPUID'];
  const prev = reasons.flatMap((r, i) => [exit('v1', r, i * 7), exit('v2', r, i)]);
  const cur = reasons.flatMap((r, i) => [exit('v1', r, i * 7 + 13 * (i + 1)), exit('v2', r, i + (i % 3) * 5 + 1)]);
  for (const limit of [10, 3, 1]) {
    const f = buildFrame(prev, cur, 0.7, { limit });
    for (const vm of ['v1', 'v2']) {
      const kids = children(f.rows, vm).filter((r) => r.kind === 'exit' || (r.kind === 'other' && r.group === 'exit'));
      const sum = kids.reduce((a, r) => a + r.share!, 0);
      t.true(near(sum, 100, 1e-6), `${vm} limit ${limit}: ${sum}`);
      const vmRow = f.rows.find((r) => r.kind === 'vm' && r.vm === vm)!;
      t.true(
        near(
          kids.reduce((a, r) => a + r.rate, 0),
          vmRow.rate,
          1e-6,
        ),
      );
    }
  }
});

test('model: a counter reset counts from the new value, never negative', (t) => {
  t.is(counterIncrease(1000, 50), 50);
  t.is(counterIncrease(10, 50), 40);
  t.is(counterIncrease(undefined, 50), 50);
  t.is(counterIncrease(5, 5), 0);
  t.is(counterIncrease(5, NaN), 0);
  const f = buildFrame(
    [exit('web', 'HLT', 100_000), exit('web', 'CPUID', 10), user('web', 'IO', 900)],
    [exit('web', 'HLT', 40), exit('web', 'CPUID', 30), user('web', 'IO', 4)],
    2,
  );
  t.deepEqual(
    f.rows.map((r) => [r.name, r.rate]),
    [
      ['web', 30],
      ['HLT', 20],
      ['CPUID', 10],
      ['user IO', 2],
    ],
  );
  t.true(f.rows.every((r) => r.rate >= 0));
});

test('model: a series new in the second scrape counts from 0', (t) => {
  const f = buildFrame([exit('web', 'HLT', 10)], [exit('web', 'HLT', 20), exit('web', 'CPUID', 6), exit('new', 'HLT', 4)], 2);
  t.deepEqual(
    f.rows.map((r) => [r.name, r.rate]),
    [
      ['web', 8],
      ['HLT', 5],
      ['CPUID', 3],
      ['new', 2],
      ['HLT', 2],
    ],
  );
});

test('model: without kvm_exit samples a VM total falls back to userspace exits', (t) => {
  const prev = [user('fc1', 'IO', 100), user('fc1', 'MMIO', 50), user('fc1', 'HLT', 1), exit('qemu', 'HLT', 0), user('qemu', 'IO', 0)];
  const cur = [user('fc1', 'IO', 160), user('fc1', 'MMIO', 70), user('fc1', 'HLT', 1), exit('qemu', 'HLT', 0), user('qemu', 'IO', 8)];
  const f = buildFrame(prev, cur, 2);
  const fc = f.rows.find((r) => r.kind === 'vm' && r.vm === 'fc1')!;
  t.is(fc.basis, 'userspace');
  t.is(fc.rate, 40);
  t.is(fc.total, 231);
  t.deepEqual(
    children(f.rows, 'fc1').map((r) => [r.name, r.rate, r.share]),
    [
      ['user IO', 30, 75],
      ['user MMIO', 10, 25],
    ],
  );
  // A VM whose kvm_exit series exist keeps them as its basis, even at rate 0.
  const q = f.rows.find((r) => r.kind === 'vm' && r.vm === 'qemu')!;
  t.is(q.basis, 'exits');
  t.is(q.rate, 0);
  t.deepEqual(
    children(f.rows, 'qemu').map((r) => [r.name, r.rate, r.share]),
    [['user IO', 4, null]],
  );
  t.is(f.rate, 40);
});

test('model: nested exits are child rows by handler (l0/l1) and reason, summed over ISA', (t) => {
  const prev = [exit('l1vm', 'npf', 0, 'svm'), nested('l1vm', 'l1', 'vmrun', 0), nested('l1vm', 'l0', 'npf', 0), nested('l1vm', 'l0', 'npf', 0, 'vmx')];
  const cur = [exit('l1vm', 'npf', 200, 'svm'), nested('l1vm', 'l1', 'vmrun', 50), nested('l1vm', 'l0', 'npf', 60), nested('l1vm', 'l0', 'npf', 10, 'vmx')];
  const f = buildFrame(prev, cur, 1);
  t.deepEqual(
    f.rows.map((r) => [r.kind, r.name, r.rate, r.share]),
    [
      ['vm', 'l1vm', 200, null],
      ['exit', 'npf', 200, 100],
      ['nested', 'nested l0 npf', 70, 35],
      ['nested', 'nested l1 vmrun', 50, 25],
    ],
  );
});

test('model: --limit keeps the top N rows per group and sums the rest into one row', (t) => {
  const names = ['A', 'B', 'C', 'D', 'E'];
  const prev = names.map((n) => exit('vm', n, 0));
  const cur = names.map((n, i) => exit('vm', n, (i + 1) * 10)); // E 50, D 40, C 30, B 20, A 10
  const f = buildFrame(prev, [...cur, user('vm', 'IO', 5), user('vm', 'MMIO', 3), user('vm', 'HLT', 1)], 1, { limit: 2 });
  t.deepEqual(
    children(f.rows, 'vm').map((r) => [r.kind, r.name, r.rate]),
    [
      ['exit', 'E', 50],
      ['exit', 'D', 40],
      ['other', '(3 more)', 60],
      ['user', 'user IO', 5],
      ['user', 'user MMIO', 3],
      ['other', 'user (1 more)', 1],
    ],
  );
  const other = children(f.rows, 'vm')[2]!;
  t.is(other.group, 'exit');
  t.is(other.count, 3);
  t.is(other.share, 40);
  t.is(buildFrame(prev, cur, 1).rows.length, 6);
  t.throws(() => buildFrame(prev, cur, 1, { limit: 0 }), { instanceOf: RangeError });
});

test('model: pio/mmio child rows, idle VMs from vm_info, zero-rate reasons hidden', (t) => {
  const cur = [
    exit('io', 'IO_INSTRUCTION', 100),
    exit('io', 'HLT', 7),
    s(M.kvmPio.name, { vm: 'io', direction: 'out' }, 80),
    s(M.kvmPio.name, { vm: 'io', direction: 'in' }, 20),
    s(M.kvmMmio.name, { vm: 'io', type: 'write' }, 5),
    s(M.kvmVmInfo.name, { vm: 'idle', pid: '42', source: 'qemu' }, 1),
    s(M.buildInfo.name, { version: '0', kernel: 'k', libbpf: '1' }, 1),
  ];
  const prev = [exit('io', 'IO_INSTRUCTION', 0), exit('io', 'HLT', 7)];
  const f = buildFrame(prev, cur, 1);
  t.deepEqual(
    f.rows.map((r) => [r.kind, r.name, r.rate]),
    [
      ['vm', 'io', 100],
      ['exit', 'IO_INSTRUCTION', 100],
      ['pio', 'pio out', 80],
      ['pio', 'pio in', 20],
      ['mmio', 'mmio write', 5],
      ['vm', 'idle', 0],
    ],
  );
  t.is(f.vms, 2);
});

test('model: an empty exposition is an empty frame; a non-positive interval is refused', (t) => {
  t.deepEqual(buildFrame([], [], 2), { seconds: 2, vms: 0, rate: 0, rows: [] });
  t.throws(() => buildFrame([], [], 0), { instanceOf: RangeError });
  t.throws(() => buildFrame([], [], -1), { instanceOf: RangeError });
  t.throws(() => buildFrame([], [], NaN), { instanceOf: RangeError });
});

// ---------------------------------------------------------------------------
// renderer

const BIG = buildFrame(
  [exit('x'.repeat(120), 'HLT', 0), exit('short', 'EPT_VIOLATION', 0)],
  [
    exit('x'.repeat(120), 'HLT', 9e12),
    exit('x'.repeat(120), `R${'y'.repeat(90)}`, 123456789),
    exit('short', 'EPT_VIOLATION', 0.3),
    exit('evil\x1b[2Jname', 'HLT\x07', 5),
    user('fb', 'IO', 3),
    nested('short', 'l1', 'vmrun', 1e15),
  ],
  0.5,
);

test('renderer: every line fits 80 columns and has no ANSI when not a TTY', (t) => {
  const lines = render(BIG, { url: `http://127.0.0.1:9477/${'p'.repeat(100)}`, time: new Date(), error: `boom ${'e'.repeat(100)}` });
  for (const l of lines) {
    t.true(l.length <= 80, `${l.length}: ${l}`);
    t.false(l.includes('\x1b'), l);
    t.false(/[\u0000-\u001f]/.test(l), JSON.stringify(l));
  }
  t.regex(lines[0]!, /^hvwatch top {2}\d\d:\d\d:\d\d {2}4 VMs {2}\S+ exits\/s {2}http:\/\/127\.0\.0\.1:9477\/p+…$/);
  t.true(lines.some((l) => l.startsWith('evil?[2Jname')));
  t.true(lines.some((l) => l.startsWith('fb *')));
  t.true(lines.some((l) => l.startsWith('* VM total counts userspace exits')));
  const head = lines.findIndex((l) => l.startsWith('VM / EXIT REASON'));
  t.true(head > 0);
  t.regex(lines[head]!, /EXITS\/S +SHARE +TOTAL$/);
  // Columns line up: every row's numbers end where the header's do.
  for (const l of lines.slice(head + 1)) t.is(l.length, 80, l);
});

test('renderer: the table fits narrower and wider terminals', (t) => {
  for (const width of [60, 100, 200]) {
    const lines = render(BIG, { url: 'http://h/metrics', time: new Date(), width });
    for (const l of lines) t.true(l.length <= width, `${width}: ${l}`);
  }
});

test('renderer: attributes on a TTY, and rows cut to the terminal height', (t) => {
  const lines = render(BIG, { url: 'http://h/metrics', time: new Date(), tty: true, height: 10 });
  t.true(lines.some((l) => l.includes('\x1b[7m')));
  t.true(lines.length <= 9);
  t.regex(lines.at(-1)!, /^… \d+ more rows/);
  // Still no control character from the data itself.
  t.false(lines.some((l) => l.includes('\x1b[2J')));
});

test('renderer: rate formatting', (t) => {
  t.is(formatRate(0), '0');
  t.is(formatRate(0.25), '0.3');
  t.is(formatRate(99.94), '99.9');
  t.is(formatRate(12345.6), '12346');
  t.is(formatRate(9e12), '9.0T');
  t.is(formatRate(123456789012), '123G');
  t.true(formatRate(1e20).length <= 10);
});

// ---------------------------------------------------------------------------
// end to end: the real CLI against a synthetic agent over HTTP

/** Serves an exposition whose counters grow by a fixed step per request. */
async function fakeAgent(body: (n: number) => string, status = 200): Promise<{ url: string; server: Server; hits: () => number }> {
  let n = 0;
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end('not found\n');
      return;
    }
    res.writeHead(status, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(body(n++));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`, server, hits: () => n };
}

const exposition = (n: number): string =>
  [
    '# HELP hvwatch_build_info Always 1.',
    '# TYPE hvwatch_build_info gauge',
    'hvwatch_build_info{version="0.1.0",kernel="6.8.0",libbpf="1.4"} 1',
    `# HELP ${M.kvmVmInfo.name} Always 1.`,
    `# TYPE ${M.kvmVmInfo.name} gauge`,
    `${M.kvmVmInfo.name}{vm="web",pid="100",source="libvirt"} 1`,
    `${M.kvmVmInfo.name}{vm="fc \\"db\\"",pid="200",source="firecracker"} 1`,
    `${M.kvmVmInfo.name}{vm="idle",pid="300",source="qemu"} 1`,
    `# TYPE ${M.kvmExits.name} counter`,
    `${M.kvmExits.name}{vm="web",isa="vmx",reason="EPT_VIOLATION"} ${1000 + 300 * n}`,
    `${M.kvmExits.name}{vm="web",isa="vmx",reason="HLT"} ${5000 + 100 * n}`,
    `${M.kvmExits.name}{vm="web",isa="vmx",reason="IO_INSTRUCTION"} ${50 * n}`,
    `${M.kvmExits.name}{vm="idle",isa="vmx",reason="HLT"} 77`,
    `# TYPE ${M.kvmNestedExits.name} counter`,
    `${M.kvmNestedExits.name}{vm="web",isa="vmx",reason="vmrun",handler="l1"} ${20 * n}`,
    `${M.kvmNestedExits.name}{vm="web",isa="vmx",reason="npf",handler="l0"} ${10 * n}`,
    `# TYPE ${M.kvmUserspaceExits.name} counter`,
    `${M.kvmUserspaceExits.name}{vm="web",reason="IO"} ${40 * n}`,
    `${M.kvmUserspaceExits.name}{vm="fc \\"db\\"",reason="MMIO"} ${10 * n}`,
    `${M.kvmUserspaceExits.name}{vm="fc \\"db\\"",reason="IO"} ${5 * n}`,
    `# TYPE ${M.kvmExitHandling.name} histogram`,
    `${M.kvmExitHandling.name}_bucket{vm="web",isa="vmx",reason="HLT",le="0.001"} ${n}`,
    `${M.kvmExitHandling.name}_bucket{vm="web",isa="vmx",reason="HLT",le="+Inf"} ${n}`,
    `${M.kvmExitHandling.name}_sum{vm="web",isa="vmx",reason="HLT"} NaN`,
    `${M.kvmExitHandling.name}_count{vm="web",isa="vmx",reason="HLT"} ${n}`,
    '',
  ].join('\n');

test('e2e: hvwatch top --once prints the frame from two scrapes of a real HTTP endpoint', async (t) => {
  const a = await fakeAgent(exposition);
  try {
    const r = await runCli(['top', '--once', '--interval', '0.5', '--url', a.url]);
    t.is(r.code, 0, r.stderr);
    t.is(r.stderr, '');
    t.is(a.hits(), 2);
    const lines = r.stdout.trimEnd().split('\n');
    t.false(r.stdout.includes('\x1b'));
    for (const l of lines) t.true(l.length <= 80, l);
    t.regex(lines[0]!, new RegExp(`^hvwatch top  \\d\\d:\\d\\d:\\d\\d  3 VMs  \\S+ exits/s  ${a.url.replace(/\./g, '\\.')}$`));
    const head = lines.findIndex((l) => l.startsWith('VM / EXIT REASON'));
    const table = lines.slice(head + 1).map((l) => {
      const m = /^(.*?)\s+(\d+(?:\.\d)?)\s+(\d+\.\d%|-)?\s+(\d+)$/.exec(l);
      t.truthy(m, `row: ${l}`);
      return { name: m![1]!, rate: Number(m![2]), share: m![3] ?? '', total: Number(m![4]) };
    });
    t.deepEqual(
      table.map((x) => [x.name, x.share, x.total]),
      [
        ['web', '', 1300 + 5100 + 50],
        ['  EPT_VIOLATION', '66.7%', 1300],
        ['  HLT', '22.2%', 5100],
        ['  IO_INSTRUCTION', '11.1%', 50],
        ['  nested l1 vmrun', '4.4%', 20],
        ['  nested l0 npf', '2.2%', 10],
        ['  user IO', '8.9%', 40],
        ['fc "db" *', '', 15],
        ['  user MMIO', '66.7%', 10],
        ['  user IO', '33.3%', 5],
        ['idle', '', 77],
      ],
    );
    t.is(table.at(-1)!.rate, 0);
    // Rates are increments over the measured interval (~0.5 s).
    const web = table[0]!;
    t.true(web.rate > 450 / 1.5 && web.rate <= 450 / 0.45, `web ${web.rate}/s`);
    t.true(lines.some((l) => l.startsWith('* VM total counts userspace exits')));
  } finally {
    a.server.close();
  }
});

test('e2e: hvwatch top --json prints the rows', async (t) => {
  const a = await fakeAgent(exposition);
  try {
    const r = await runCli(['top', '--json', '--interval', '0.5', '--limit', '2', '--url', a.url]);
    t.is(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { url: string; seconds: number; vms: number; rate: number; rows: Row[] };
    t.is(j.url, a.url);
    t.is(j.vms, 3);
    t.true(j.seconds >= 0.45 && j.seconds < 2, String(j.seconds));
    t.true(near(j.rate, (450 + 15) / j.seconds, 1e-6));
    t.deepEqual(
      j.rows.map((x) => [x.kind, x.vm, x.name, x.basis ?? null]),
      [
        ['vm', 'web', 'web', 'exits'],
        ['exit', 'web', 'EPT_VIOLATION', null],
        ['exit', 'web', 'HLT', null],
        ['other', 'web', '(1 more)', null],
        ['nested', 'web', 'nested l1 vmrun', null],
        ['nested', 'web', 'nested l0 npf', null],
        ['user', 'web', 'user IO', null],
        ['vm', 'fc "db"', 'fc "db"', 'userspace'],
        ['user', 'fc "db"', 'user MMIO', null],
        ['user', 'fc "db"', 'user IO', null],
        ['vm', 'idle', 'idle', 'exits'],
      ],
    );
    t.true(near(j.rows[1]!.rate, 300 / j.seconds, 1e-6));
    t.true(near(j.rows[1]!.share!, 200 / 3, 1e-9));
  } finally {
    a.server.close();
  }
});

test('e2e: an unreachable agent is one line and exit 2', async (t) => {
  const url = `http://127.0.0.1:${await freePort()}/metrics`;
  const r = await runCli(['top', '--once', '--interval', '0.5', '--url', url]);
  t.is(r.code, 2);
  t.is(r.stdout, '');
  t.regex(r.stderr, new RegExp(`^hvwatch top: cannot reach ${url.replace(/\./g, '\\.')}: \\S.*\\n$`));
  t.is(r.stderr.split('\n').length, 2);
});

test('e2e: an unparseable exposition, or an HTTP error, is one line and exit 2', async (t) => {
  const bad = await fakeAgent((n) => `up 1\nhvwatch_kvm_exits_total{vm="a" ${n}\n`);
  const err = await fakeAgent(() => 'scrape failed: map gone\n', 500);
  try {
    let r = await runCli(['top', '--once', '--interval', '0.5', '--url', bad.url]);
    t.is(r.code, 2);
    t.is(r.stdout, '');
    t.regex(r.stderr, /^hvwatch top: unparseable exposition from http:\/\/127\.0\.0\.1:\d+\/metrics: line 2: [^\n]+\n$/);
    r = await runCli(['top', '--once', '--interval', '0.5', '--url', err.url]);
    t.is(r.code, 2);
    t.regex(r.stderr, /^hvwatch top: http:\/\/127\.0\.0\.1:\d+\/metrics: HTTP 500 Internal Server Error: scrape failed: map gone\n$/);
  } finally {
    bad.server.close();
    err.server.close();
  }
});

test('e2e: top usage errors exit 2 with its usage', async (t) => {
  for (const args of [['--interval', '0'], ['--limit', 'x'], ['--url', 'ftp://h/'], ['--bogus'], ['extra']]) {
    const r = await runCli(['top', ...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, /^hvwatch top: [^\n]+\nusage: hvwatch top/, args.join(' '));
  }
  const h = await runCli(['top', '--help']);
  t.is(h.code, 0);
  t.regex(h.stdout, /--interval S/);
});
