// What `hvwatch check` tells: a human summary, JUnit XML (one testcase per threshold,
// required probe and baseline figure; a failed workload is an <error>, a regression a
// <failure>) and JSON.
import type { FigureResult } from './baseline.js';
import type { RuleResult } from './thresholds.js';

export type Verdict = 'pass' | 'regression' | 'workload-failed';

export interface WorkloadResult {
  command: string[];
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** Why it did not start (spawn error). */
  error?: string;
}

export interface CheckReport {
  verdict: Verdict;
  exitCode: 0 | 1 | 2;
  source: 'live' | 'replay';
  trace?: string;
  elapsedSeconds: number;
  events: number;
  races: number;
  workload?: WorkloadResult;
  rules: RuleResult[];
  baseline?: { file: string; figures: FigureResult[] };
  wroteBaseline?: string;
}

export function workloadFailed(w: WorkloadResult | undefined): boolean {
  return !!w && (w.exitCode !== 0 || w.timedOut);
}

function workloadText(w: WorkloadResult): string {
  if (w.error) return `did not start: ${w.error}`;
  if (w.timedOut) return `killed after --duration (${w.signal ?? 'signal'})`;
  return w.signal ? `killed by ${w.signal}` : `exit status ${w.exitCode}`;
}

export function formatSummary(r: CheckReport): string {
  const lines: string[] = [];
  const mark = { pass: 'ok  ', fail: 'FAIL', skip: 'skip' } as const;
  lines.push(
    `hvwatch check: ${r.source === 'replay' ? `replayed ${r.trace}` : 'live'}, ${r.elapsedSeconds.toFixed(1)}s, ${r.events} events, ${r.races} race indicators`,
  );
  if (r.workload) {
    lines.push(`  workload: ${r.workload.command.join(' ')}: ${workloadFailed(r.workload) ? `FAILED (${workloadText(r.workload)})` : 'ok'}`);
  }
  for (const x of r.rules) lines.push(`  ${mark[x.outcome]} ${x.name}: ${x.message}`);
  if (r.baseline) {
    const reg = r.baseline.figures.filter((f) => f.regressed);
    lines.push(`  baseline ${r.baseline.file}: ${r.baseline.figures.length} figures compared, ${reg.length} regressed`);
    for (const f of reg) lines.push(`  FAIL ${f.figure}: ${f.message}`);
  }
  if (r.wroteBaseline) lines.push(`  baseline written to ${r.wroteBaseline}`);
  const verdict = r.verdict === 'pass' ? 'PASS' : r.verdict === 'regression' ? 'REGRESSION' : 'WORKLOAD FAILED (thresholds not judged as pass or regression)';
  lines.push(`result: ${verdict}`);
  return `${lines.join('\n')}\n`;
}

export function xmlEscape(s: string): string {
  return (
    s
      .replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!)
      // XML 1.0 cannot carry most control characters even escaped.
      .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, '?')
  );
}

export function formatJunit(r: CheckReport): string {
  const cases: string[] = [];
  let failures = 0;
  let errors = 0;
  let skipped = 0;
  const tc = (cls: string, name: string, body = ''): void => {
    cases.push(`    <testcase classname="${xmlEscape(cls)}" name="${xmlEscape(name)}" time="0"${body ? `>\n${body}\n    </testcase>` : '/>'}`);
  };
  if (r.workload) {
    const failed = workloadFailed(r.workload);
    if (failed) errors++;
    tc('hvwatch.workload', r.workload.command.join(' '), failed ? `      <error message="${xmlEscape(`workload ${workloadText(r.workload)}`)}"/>` : '');
  }
  for (const x of r.rules) {
    const cls = x.kind === 'require' ? 'hvwatch.require' : 'hvwatch.threshold';
    if (x.outcome === 'fail') {
      failures++;
      tc(cls, x.name, `      <failure message="${xmlEscape(x.message)}"/>`);
    } else if (x.outcome === 'skip') {
      skipped++;
      tc(cls, x.name, `      <skipped message="${xmlEscape(x.message)}"/>`);
    } else tc(cls, x.name, `      <system-out>${xmlEscape(x.message)}</system-out>`);
  }
  for (const f of r.baseline?.figures ?? []) {
    if (f.regressed) {
      failures++;
      tc('hvwatch.baseline', f.figure, `      <failure message="${xmlEscape(`regressed: ${f.message}`)}"/>`);
    } else tc('hvwatch.baseline', f.figure, `      <system-out>${xmlEscape(f.message)}</system-out>`);
  }
  return `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="hvwatch check" tests="${cases.length}" failures="${failures}" errors="${errors}" skipped="${skipped}" time="${r.elapsedSeconds.toFixed(3)}">
  <testsuite name="hvwatch check" tests="${cases.length}" failures="${failures}" errors="${errors}" skipped="${skipped}" time="${r.elapsedSeconds.toFixed(3)}">
${cases.join('\n')}
  </testsuite>
</testsuites>
`;
}

export function formatJson(r: CheckReport): string {
  return `${JSON.stringify(r, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v), 2)}\n`;
}
