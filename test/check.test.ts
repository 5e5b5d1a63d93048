// hvwatch check (CI regression mode), end to end through bin/hvwatch: the shipped memcg
// example on the real kernel (pass, and exit 1 on an injected breach), a failing workload
// reported as such, baseline regressions from synthetic traces whose latencies are 2x the
// baseline's, the JUnit file parsed, and usage errors.
import test from 'ava';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ROOT, runCli } from './helpers/agent.js';
import { memoryHierarchy } from './helpers/memcg.js';
import { writeSynthTrace } from './helpers/trace.js';
import { histogramQuantile } from '../agent/check/quantile.js';
import { folded, log2Histogram } from '../agent/aggregate/histogram.js';

const dir = mkdtempSync(join(tmpdir(), 'hvwatch-check-'));

const EXAMPLE = join(ROOT, 'examples/memcg-check');

/** A small XML 1.0 well-formedness check: prolog, balanced elements, quoted attributes,
 * known entities, one root. Returns the elements as [name, attributes] in document order. */
export function parseXml(xml: string): { name: string; attrs: Record<string, string> }[] {
  let s = xml.replace(/^<\?xml[^?]*\?>\s*/, '');
  const out: { name: string; attrs: Record<string, string> }[] = [];
  const stack: string[] = [];
  let roots = 0;
  const chars = (t: string): void => {
    if (/&(?!(?:lt|gt|amp|quot|apos|#\d+|#x[0-9a-fA-F]+);)/.test(t) || t.includes('<')) throw new Error(`bad character data: ${t.slice(0, 40)}`);
  };
  const text = (t: string): void => {
    chars(t);
    if (stack.length === 0 && t.trim()) throw new Error('text outside the root element');
  };
  while (s.length) {
    const lt = s.indexOf('<');
    if (lt < 0) {
      text(s);
      break;
    }
    text(s.slice(0, lt));
    s = s.slice(lt);
    const m = /^<(\/?)([A-Za-z_][\w.-]*)((?:\s+[A-Za-z_][\w.-]*\s*=\s*"[^"<]*")*)\s*(\/?)>/.exec(s);
    if (!m) throw new Error(`malformed tag at: ${s.slice(0, 40)}`);
    const [all, close, name, attrText, selfClose] = m;
    if (close) {
      if (stack.pop() !== name) throw new Error(`mismatched </${name}>`);
    } else {
      const attrs: Record<string, string> = {};
      for (const a of attrText!.matchAll(/([A-Za-z_][\w.-]*)\s*=\s*"([^"]*)"/g)) {
        chars(a[2]!);
        if (a[1]! in attrs) throw new Error(`duplicate attribute ${a[1]}`);
        attrs[a[1]!] = a[2]!
          .replace(/&quot;/g, '"')
          .replace(/&apos;/g, "'")
          .replace(/&lt;/g, '<')
          .replace(/&gt;/g, '>')
          .replace(/&amp;/g, '&');
      }
      if (stack.length === 0 && ++roots > 1) throw new Error('more than one root element');
      out.push({ name: name!, attrs });
      if (!selfClose) stack.push(name!);
    }
    s = s.slice(all.length);
  }
  if (stack.length) throw new Error(`unclosed <${stack.at(-1)}>`);
  return out;
}

test('the XML checker rejects what is not well-formed (so the JUnit assertions below mean something)', (t) => {
  t.notThrows(() => parseXml('<?xml version="1.0"?>\n<a x="1"><b/>t &amp; u</a>\n'));
  for (const bad of ['<a><b></a></b>', '<a x=1/>', '<a>&nbsp;</a>', '<a/><b/>', '<a>', '<a x="1" x="2"/>']) t.throws(() => parseXml(bad), undefined, bad);
});

test('histogramQuantile interpolates like PromQL histogram_quantile, from 0 in the first bucket', (t) => {
  const h = folded(log2Histogram([0, 0, 10, 10], { minSlot: 0, maxSlot: 3, scale: 1, classicStep: 1 })); // le 1, 3, 7, 15
  t.is(histogramQuantile(h, 0.5), 7); // rank 10 ends the [4,7] bucket
  t.is(histogramQuantile(h, 0.25), 5); // halfway through (3, 7]
  t.is(histogramQuantile(h, 1), 15);
  t.is(histogramQuantile(folded(log2Histogram([], { minSlot: 0, maxSlot: 3, scale: 1, classicStep: 1 })), 0.99), undefined);
});

test('check passes on the memcg example workload, writes JUnit and JSON; an injected breach exits 1 naming it', async (t) => {
  const cgName = `hvwatch-check-${process.pid}`;
  t.teardown(() => {
    try {
      fs.rmdirSync(join(memoryHierarchy().mountPoint, cgName));
    } catch {
      /* not made */
    }
  });
  const env = { HVWATCH_EXAMPLE_CGROUP: cgName, HVWATCH_EXAMPLE_MIB: '8' };
  const junit = join(dir, 'pass.xml');
  const json = join(dir, 'pass.json');
  const args = ['check', '-t', join(EXAMPLE, 'thresholds.yaml'), '--hot', 'memcg_writeback', '--hot', 'memcg_writeback_wait', '--quiet'];
  const ok = await runCli([...args, '--junit', junit, '--json', json, '--', join(EXAMPLE, 'workload.sh')], { env });
  t.is(ok.code, 0, ok.stdout + ok.stderr);
  t.regex(ok.stdout, /result: PASS/);
  t.regex(ok.stdout, /ok {3}probe memcg_writeback attached/);
  t.regex(ok.stdout, /ok {3}race indicators: 0 within <= 0/);
  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as { verdict: string; rules: { name: string; outcome: string; value?: number }[] };
  t.is(report.verdict, 'pass');
  t.true(report.rules.find((r) => r.name === "the workload's writeback was seen")!.value! >= 2048);
  const els = parseXml(fs.readFileSync(junit, 'utf8'));
  const cases = els.filter((e) => e.name === 'testcase');
  t.true(cases.some((c) => c.attrs.name === 'race indicators' && c.attrs.classname === 'hvwatch.threshold'));
  t.true(cases.some((c) => c.attrs.classname === 'hvwatch.workload'));
  t.is(els.filter((e) => e.name === 'failure' || e.name === 'error').length, 0);

  // The same run against a threshold this workload must break: its own cgroup's pages.
  const breach = join(dir, 'breach.yaml');
  fs.writeFileSync(
    breach,
    `rules:\n  - name: injected breach\n    metric: hvwatch_memcg_writeback_started_pages_total\n    labels: { cgroup: /${cgName} }\n    max: 10\n`,
  );
  const junit2 = join(dir, 'breach.xml');
  const bad = await runCli(['check', '-t', breach, '--hot', 'memcg_writeback', '--quiet', '--junit', junit2, '--', join(EXAMPLE, 'workload.sh')], { env });
  t.is(bad.code, 1, bad.stdout + bad.stderr);
  t.regex(bad.stdout, /FAIL injected breach: \d+ breaks <= 10/);
  t.regex(bad.stdout, /result: REGRESSION/);
  const failures = parseXml(fs.readFileSync(junit2, 'utf8')).filter((e) => e.name === 'failure');
  t.is(failures.length, 1);
  t.regex(failures[0]!.attrs.message!, /breaks <= 10/);
});

test('a failing workload is reported as a failed workload (exit 2, JUnit <error>), not as a regression', async (t) => {
  const junit = join(dir, 'wl.xml');
  const r = await runCli(['check', '--quiet', '--disable', 'kvm_exit', '--junit', junit, '--', 'sh', '-c', 'exit 3']);
  t.is(r.code, 2, r.stdout + r.stderr);
  t.regex(r.stdout, /workload: sh -c exit 3: FAILED \(exit status 3\)/);
  t.regex(r.stdout, /result: WORKLOAD FAILED/);
  const els = parseXml(fs.readFileSync(junit, 'utf8'));
  t.is(els.filter((e) => e.name === 'error').length, 1);
  t.is(els.filter((e) => e.name === 'failure').length, 0);
});

test('baseline: a synthetic trace with 2x the latencies regresses (exit 1), saying which figure, by how much, against what', async (t) => {
  const base = join(dir, 'base.trace');
  const slow = join(dir, 'slow.trace');
  writeSynthTrace(base, { 20: 900, 22: 100 }); // ~1 ms and ~4 ms writebacks
  writeSynthTrace(slow, { 21: 900, 23: 100 }); // every latency doubled
  const bfile = join(dir, 'baseline.json');
  const w = await runCli(['check', '--replay', base, '--write-baseline', bfile]);
  t.is(w.code, 0, w.stderr);
  const figures = (JSON.parse(fs.readFileSync(bfile, 'utf8')) as { figures: Record<string, number> }).figures;
  const p99 = 'hvwatch_memcg_writeback_latency_seconds{cgroup="/synthetic"} p99';
  t.true(figures[p99]! > 0);

  const same = await runCli(['check', '--replay', base, '--baseline', bfile]);
  t.is(same.code, 0, same.stdout);
  t.regex(same.stdout, /0 regressed/);

  const junit = join(dir, 'baseline.xml');
  const json = join(dir, 'baseline-report.json');
  const r = await runCli(['check', '--replay', slow, '--baseline', bfile, '--junit', junit, '--json', json]);
  t.is(r.code, 1, r.stdout + r.stderr);
  t.true(r.stdout.includes(`FAIL ${p99}: `), r.stdout);
  t.regex(r.stdout, /p99: [\d.e-]+ vs baseline [\d.e-]+ \(\+100\.0%, tolerance 25%\)/);
  t.regex(r.stdout, /result: REGRESSION/);
  const rep = JSON.parse(fs.readFileSync(json, 'utf8')) as {
    baseline: { figures: { figure: string; regressed: boolean; change: number; baseline: number }[] };
  };
  const f = rep.baseline.figures.find((x) => x.figure === p99)!;
  t.true(f.regressed);
  t.is(f.baseline, figures[p99]!);
  t.is(Math.round(f.change * 100), 100);
  // Counts did not change: only the quantiles regress.
  t.false(rep.baseline.figures.find((x) => x.figure.endsWith(' count'))!.regressed);
  const failed = parseXml(fs.readFileSync(junit, 'utf8')).filter((e) => e.name === 'testcase' && e.attrs.classname === 'hvwatch.baseline');
  t.true(failed.some((c) => c.attrs.name === p99));

  // A wider tolerance for that metric accepts the same run.
  const tol = join(dir, 'tol.yaml');
  fs.writeFileSync(tol, 'baseline:\n  figures: { hvwatch_memcg_writeback_latency_seconds: 1.5 }\n');
  const ok = await runCli(['check', '--replay', slow, '--baseline', bfile, '-t', tol]);
  t.is(ok.code, 0, ok.stdout);
});

test('check usage and setup errors exit 2 with one line', async (t) => {
  const bad = join(dir, 'bad.yaml');
  fs.writeFileSync(bad, 'thresholds:\n  racez: 0\n');
  const cases: [string[], RegExp][] = [
    [['check'], /give a workload after --, --duration S, or --replay FILE/],
    [['check', '--require', 'no_such_probe', '--duration', '1'], /--require no_such_probe: unknown probe/],
    [['check', '-t', bad, '--duration', '1'], /bad\.yaml: key thresholds\.racez: Unrecognized key/],
    [['check', '--replay', join(dir, 'missing.trace')], /trace .*missing\.trace: cannot read: ENOENT/],
    [['check', '--replay', bad, '--', 'true'], /--replay judges a recorded run/],
  ];
  for (const [args, re] of cases) {
    const r = await runCli(args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr.split('\n')[0]!, re);
  }
});
