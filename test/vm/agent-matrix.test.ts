// The agent itself across kernels, real (no mocks): in one QEMU guest per kernel of kernelMatrix(),
// and on the host, run `bin/hvwatch probes --json --hot all` and, as an independent oracle, ask
// the kernel which hooks exist (tracefs events, `btf_trace_*` typedefs / FUNCs in its BTF via
// bpftool, /proc/kallsyms). Every probe must take the first candidate whose hook exists, and a
// probe without any hook must say which tracepoint/function is missing. The last test rewrites
// docs/kernel-matrix.md (between its markers) from this run's results.
// Skips, with the reason in the title, when QEMU/tools/kernel packages/root are unavailable.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { declaredFamilies } from '../../agent/families.js';
import type { Candidate, ProbeSpec } from '../../agent/model/family.js';
import {
  describeRun,
  kernelMatrix,
  prepareKernel,
  runInGuest,
  vmUnavailableReason,
  type GuestResult,
  type KernelEntry,
  hostToolsReason,
  q,
} from './harness.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url)); // dist/test/vm/ -> repo root
const HVWATCH = path.join(ROOT, 'bin/hvwatch');
const MATRIX_DOC = path.join(ROOT, 'docs/kernel-matrix.md');
const START = '<!-- kernel-matrix:start -->';
const END = '<!-- kernel-matrix:end -->';
const GUEST_TIMEOUT_MS = 150_000;
const PROBES: ProbeSpec[] = declaredFamilies().flatMap((f) => f.probes);

// ---- decided at module load: a missing tool, kernel package, build or privilege skips, never passes ----
const commonReason = hostToolsReason(ROOT, [['bpftool', 'the oracle needs it; apt-get install bpftool']]);
const hostReason = commonReason ?? (process.getuid?.() !== 0 ? 'hvwatch probes needs root (CAP_BPF/CAP_PERFMON)' : undefined);
const vmReason = commonReason ?? vmUnavailableReason();
const kernels: [KernelEntry, string | undefined][] = [];
if (!vmReason) {
  for (const k of kernelMatrix()) {
    const p = await prepareKernel(k);
    kernels.push([k, 'skip' in p ? p.skip : undefined]);
  }
}

// ---- the script: the agent, then the oracle (after the agent, which mounts tracefs on a host that has not) ----
const hooks = (kinds: string[]): string[] => [...new Set(PROBES.flatMap((p) => p.candidates.filter((c) => kinds.includes(c.attach)).map((c) => c.target)))];
const TRACEPOINTS = hooks(['tracepoint']);
const BTF_TYPEDEFS = hooks(['tp_btf', 'raw_tracepoint']).map((t) => `btf_trace_${t}`);
const BTF_FUNCS = hooks(['fentry', 'fexit']);
const KSYMS = hooks(['kprobe', 'kretprobe']);
const alt = (names: string[]): string => (names.length ? names.join('|') : 'x^'); // 'x^' matches nothing

const SCRIPT = `
tmp=$(mktemp -d)
read a0 _ < /proc/uptime
${q(HVWATCH)} probes --json --hot all > "$tmp/json" 2> "$tmp/err"
st=$?
read a1 _ < /proc/uptime
echo "agent_status=$st"
echo "agent_seconds=$(awk -v a="$a0" -v b="$a1" 'BEGIN { printf "%.2f", b - a }')"
echo "release=$(uname -r)"
echo '<<<probes-json'; cat "$tmp/json"; echo 'probes-json>>>'
echo '<<<agent-stderr'; cat "$tmp/err"; echo 'agent-stderr>>>'
T=/sys/kernel/tracing; [ -d $T/events ] || T=/sys/kernel/debug/tracing
[ -d $T/events ] && echo "tracefs=$T" || echo "tracefs=none"
for tp in ${TRACEPOINTS.map(q).join(' ')}; do [ -e "$T/events/$tp" ] && echo "hook tracepoint $tp yes" || echo "hook tracepoint $tp no"; done
# vmlinux, and each loaded module's split BTF (kvm's tracepoints live in the kvm module).
{ bpftool btf dump file /sys/kernel/btf/vmlinux; st=$?
  for m in /sys/kernel/btf/*; do [ "$m" = /sys/kernel/btf/vmlinux ] || bpftool -B /sys/kernel/btf/vmlinux btf dump file "$m"; done
} > "$tmp/btf"; echo "bpftool_status=$st"
grep -oE "^\\[[0-9]+\\] (TYPEDEF '(${alt(BTF_TYPEDEFS)})'|FUNC '(${alt(BTF_FUNCS)})')" "$tmp/btf" | sed -E "s/^\\[[0-9]+\\] (\\w+) '(.*)'/hook \\1 \\2 yes/"
awk -v l=${q(BTF_FUNCS.join(' '))} 'BEGIN { n = split(l, a, " "); for (i = 1; i <= n; i++) w[a[i]] = 1 }
  ($1 in w) { print "hook ftrace " $1 " yes"; delete w[$1] }' $T/available_filter_functions 2>/dev/null; echo "ftrace_status=$?"
# Each function's parameter count: the vlen of the FUNC_PROTO its FUNC points at, taken when the
# FUNC is read if the prototype came before it (module split BTFs reuse ids), else at the end.
awk -v l=${q(BTF_FUNCS.join(' '))} 'BEGIN { n = split(l, a, " "); for (i = 1; i <= n; i++) w["'"'"'" a[i] "'"'"'"] = a[i] }
  $2 == "FUNC_PROTO" { id = substr($1, 2, length($1) - 2); for (i = 3; i <= NF; i++) if ($i ~ /^vlen=/) v[id] = substr($i, 6) }
  $2 == "FUNC" && ($3 in w) { for (i = 4; i <= NF; i++) if ($i ~ /^type_id=/) { t = substr($i, 9); if (t in v) print "hook funcargs " w[$3] " " v[t]; else later[w[$3]] = t } }
  END { for (f in later) if (later[f] in v) print "hook funcargs " f " " v[later[f]] }' "$tmp/btf"
{ [ -e /sys/bus/event_source/devices/kprobe ] || [ -e $T/kprobe_events ]; } && echo "kprobes=yes" || echo "kprobes=no"
for s in ${KSYMS.map(q).join(' ')}; do awk -v s="$s" '$3 == s { f = 1 } END { exit !f }' /proc/kallsyms && echo "hook ksym $s yes" || echo "hook ksym $s no"; done
rm -rf "$tmp"
`;

// ---- parsing and the verdict (pure: the same function decides the assertions and the matrix's pass/fail) ----
interface ReportCandidate {
  attach: string;
  target: string;
  ok: boolean;
  error: string | null;
}
interface ReportProbe {
  name: string;
  family: string;
  enabled: boolean;
  skipped: string | null;
  candidates: ReportCandidate[];
  chosen: { attach: string; target: string } | null;
}
interface Run {
  label: string; // matrix row label
  status: number | null; // agent exit status
  agentSeconds: number | null;
  release: string;
  report: ReportProbe[] | null;
  agentStderr: string;
  facts: Map<string, boolean>; // "tracepoint memcg/x", "TYPEDEF btf_trace_x", "FUNC f", "ksym s" -> exists
  funcArgs: Map<string, number>; // a BTF function's parameter count (bpftool's FUNC_PROTO vlen)
  oracleOk: string | undefined; // why the oracle could not answer
  problems: string[];
}

const between = (s: string, tag: string): string | undefined => {
  const m = new RegExp(`^<<<${tag}\\n([\\s\\S]*?)^${tag}>>>$`, 'm').exec(s);
  return m?.[1];
};

function parseRun(label: string, stdout: string): Run {
  const kv = Object.fromEntries(
    stdout.split('\n').flatMap((l) => {
      const m = /^(\w+)=(.*)$/.exec(l);
      return m ? [[m[1]!, m[2]!]] : [];
    }),
  );
  const facts = new Map<string, boolean>();
  for (const name of TRACEPOINTS) facts.set(`tracepoint ${name}`, false);
  for (const name of BTF_TYPEDEFS) facts.set(`TYPEDEF ${name}`, false);
  for (const name of BTF_FUNCS) {
    facts.set(`FUNC ${name}`, false);
    facts.set(`ftrace ${name}`, false);
  }
  for (const name of KSYMS) facts.set(`ksym ${name}`, false);
  const funcArgs = new Map<string, number>();
  for (const l of stdout.split('\n')) {
    const m = /^hook (\S+) (\S+) (yes|no)$/.exec(l);
    if (m) facts.set(`${m[1]} ${m[2]}`, m[3] === 'yes');
    const a = /^hook funcargs (\S+) (\d+)$/.exec(l);
    if (a) funcArgs.set(a[1]!, Number(a[2]));
  }
  facts.set('kprobes', kv['kprobes'] === 'yes');
  let report: ReportProbe[] | null;
  const json = between(stdout, 'probes-json');
  try {
    report = json ? (JSON.parse(json) as ReportProbe[]) : null;
  } catch {
    report = null;
  }
  const oracleOk =
    kv['bpftool_status'] !== '0'
      ? `bpftool btf dump failed (status ${kv['bpftool_status'] ?? 'none'})`
      : kv['tracefs'] === 'none' || !kv['tracefs']
        ? 'tracefs not mounted'
        : undefined;
  const run: Run = {
    label,
    status: kv['agent_status'] !== undefined ? Number(kv['agent_status']) : null,
    agentSeconds: kv['agent_seconds'] !== undefined ? Number(kv['agent_seconds']) : null,
    release: kv['release'] ?? '?',
    report,
    agentStderr: between(stdout, 'agent-stderr') ?? '',
    facts,
    funcArgs,
    oracleOk,
    problems: [],
  };
  run.problems = verdict(run);
  return run;
}

/** A tp_btf candidate written for another tracepoint signature (Candidate.params), refused
 * by the agent's BTF parameter check, which names the tracepoint and both signatures. The
 * oracle's bpftool dump does not carry parameter names, so it takes that refusal at its word
 * (test/btf.test.ts checks the BTF reader behind it against bpftool). */
const SIGNATURE = /^tracepoint (\S+) has parameters \(/;
function otherSignature(r: Run, probe: string, c: Candidate | ReportCandidate): boolean {
  const spec = PROBES.find((p) => p.name === probe)?.candidates.find((d) => d.attach === c.attach && d.target === c.target);
  if (!spec?.params?.[c.target]) return false;
  const got = r.report?.find((x) => x.name === probe)?.candidates.find((d) => d.attach === c.attach && d.target === c.target);
  return SIGNATURE.exec(got?.error ?? '')?.[1] === c.target;
}

/** Does the kernel offer this candidate's hook, per the oracle? */
function hookExists(r: Run, c: Candidate | ReportCandidate, probe?: string): boolean {
  if (probe && otherSignature(r, probe, c)) return false;
  switch (c.attach) {
    case 'tracepoint':
      return r.facts.get(`tracepoint ${c.target}`) ?? false;
    case 'tp_btf':
    case 'raw_tracepoint':
      return r.facts.get(`TYPEDEF btf_trace_${c.target}`) ?? false;
    // A trampoline needs the function in BTF and ftrace-able (a kernel that hides
    // available_filter_functions, as a restricted host does, refuses fentry too).
    // And the function's arguments must fit the trampoline: at most 6 on x86-64 before 6.6
    // (arch/x86/net/bpf_jit_comp.c v6.1), 12 from 6.6 (MAX_BPF_FUNC_ARGS).
    case 'fentry':
    case 'fexit':
      return (
        !!r.facts.get(`FUNC ${c.target}`) &&
        !!r.facts.get(`ftrace ${c.target}`) &&
        (r.funcArgs.get(c.target) ?? 0) <= (releaseAtLeast(r.release, 6, 6) ? 12 : 6)
      );
    case 'kprobe':
    case 'kretprobe':
      return !!r.facts.get('kprobes') && !!r.facts.get(`ksym ${c.target}`);
    default:
      return false;
  }
}

function releaseAtLeast(release: string, major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return !!m && (Number(m[1]) > major || (Number(m[1]) === major && Number(m[2]) >= minor));
}

// A candidate the kernel cannot have is refused by the agent's precheck with one of these (agent/kernel.ts).
const MISSING_HOOK = /not in kernel BTF|not found in \S+\/events|not in \/proc\/kallsyms|kernel has no kprobes|BPF trampoline takes at most \d+/;
// Any other failure must at least be a libbpf/kernel error carrying its errno; anything else is a crash.
const EXPLAINED = new RegExp(`${MISSING_HOOK.source}|^tracepoint \\S+ has parameters \\(|\\(errno \\d+\\)`);

/** Whether a candidate whose hook is missing must name it: a missing tracepoint or BTF function must;
 * a kernel without kprobes, or one refusing trampolines, fails the whole tier (explained, not named). */
function mustName(r: Run, c: ReportCandidate): boolean {
  if (c.attach === 'fentry' || c.attach === 'fexit') return !r.facts.get(`FUNC ${c.target}`);
  if (c.attach === 'kprobe' || c.attach === 'kretprobe') return !!r.facts.get('kprobes');
  return true;
}

function verdict(r: Run): string[] {
  const p: string[] = [];
  if (r.status !== 0) p.push(`agent exit status ${r.status}`);
  if (r.oracleOk) p.push(`oracle: ${r.oracleOk}`);
  if (!r.report) return [...p, 'no parseable JSON from hvwatch probes --json'];
  const names = r.report.map((x) => x.name);
  if (names.join() !== PROBES.map((x) => x.name).join()) p.push(`probes reported ${names.join(',')}, expected ${PROBES.map((x) => x.name).join(',')}`);
  for (const spec of PROBES) {
    const got = r.report.find((x) => x.name === spec.name);
    if (!got) continue;
    if (!got.enabled || got.skipped !== null) {
      // Off is right only for a probe whose subsystem this kernel lacks (kvmi): no hook of any candidate exists.
      const exists = spec.candidates.filter((c) => hookExists(r, c, spec.name));
      if (exists.length)
        p.push(`${spec.name}: not enabled with --hot all although ${exists.map((c) => `${c.attach}:${c.target}`).join(', ')} exists (skipped: ${got.skipped})`);
      continue;
    }
    for (const c of got.candidates) {
      if (!c.ok && !EXPLAINED.test(c.error ?? '')) p.push(`${spec.name} ${c.attach}:${c.target}: unexplained error: ${c.error}`);
    }
    const want = spec.candidates.find((c) => hookExists(r, c, spec.name));
    const chosen = got.chosen ? `${got.chosen.attach}:${got.chosen.target}` : 'nothing';
    if (want) {
      if (chosen !== `${want.attach}:${want.target}`) {
        const tried = got.candidates.find((c) => c.attach === want.attach && c.target === want.target);
        p.push(`${spec.name}: hook ${want.attach}:${want.target} exists but the agent chose ${chosen}${tried?.error ? ` (${tried.error})` : ''}`);
      }
    } else if (got.chosen) {
      p.push(`${spec.name}: oracle found no hook for any candidate, yet the agent attached ${chosen}`);
    }
    // Candidates tried before the chosen one (all of them when nothing attached) lacked their hook:
    // each must say so, naming the missing tracepoint/function.
    const refused = got.chosen ? got.candidates.slice(0, -1) : got.candidates;
    const last = got.candidates.at(-1);
    if (got.chosen && !(last?.ok && last.attach === got.chosen.attach && last.target === got.chosen.target)) {
      p.push(`${spec.name}: chosen ${chosen} is not the last candidate tried`);
    }
    if (!got.chosen && refused.length !== spec.candidates.length) p.push(`${spec.name}: ${refused.length} of ${spec.candidates.length} candidates reported`);
    for (const c of refused) {
      if (c.ok) p.push(`${spec.name} ${c.attach}:${c.target}: ok but not chosen`);
      else if (
        !hookExists(r, c, spec.name) &&
        mustName(r, c) &&
        !((MISSING_HOOK.test(c.error ?? '') || SIGNATURE.test(c.error ?? '')) && (c.error ?? '').includes(c.target))
      ) {
        p.push(`${spec.name} ${c.attach}:${c.target}: hook missing, but the error does not name it: ${c.error}`);
      }
    }
  }
  for (const line of r.agentStderr.split('\n').filter(Boolean)) {
    if (!/^ts=\S+ level=(info|warn|debug) /.test(line)) p.push(`agent stderr: ${line}`);
  }
  return p;
}

// ---- docs/kernel-matrix.md section ----
function cell(r: Run, name: string): string {
  const got = r.report?.find((x) => x.name === name);
  if (!got) return '?';
  if (got.chosen) return `\`${got.chosen.attach}\``;
  if (!got.enabled) return '— off';
  const reasons = [
    ...new Set(
      got.candidates.map((c) => {
        const e = c.error ?? '';
        if (/no btf_trace_|not found in \S+\/events/.test(e)) return 'no tracepoint';
        if (/^function .* not in kernel BTF/.test(e)) return 'no function';
        if ((c.attach === 'fentry' || c.attach === 'fexit') && /Operation not permitted/.test(e)) return 'fentry refused';
        if (/not in \/proc\/kallsyms/.test(e)) return 'no symbol';
        if (/no kprobes/.test(e)) return 'no kprobes';
        return 'attach failed';
      }),
    ),
  ];
  return `— ${reasons.join(', ')}`;
}

function renderSection(runs: Run[]): string {
  const probes = PROBES.map((p) => p.name);
  return [
    START,
    'Which attach tier each probe takes (`hvwatch probes --json --hot all`) on each kernel we test, checked against',
    'what that kernel offers: its tracefs events, the `btf_trace_*` typedefs and functions in its BTF (read with',
    'bpftool), its ftrace-able functions and its kallsyms.',
    'Guests are Debian kernels booted under QEMU (`test/vm/harness.ts`); "host" is the machine that ran the tests.',
    '`—` is a probe that attached nothing, with the reason. `npm test` regenerates this table via',
    '`test/vm/agent-matrix.test.ts`; "pass" means the agent exited 0, took the first candidate whose hook exists,',
    'and named the missing hook for every candidate it could not use.',
    '',
    `| kernel | ${probes.map((n) => `\`${n}\``).join(' | ')} | checks |`,
    `|---|${probes.map(() => '---|').join('')}---|`,
    ...runs.map((r) => `| ${r.label} | ${probes.map((n) => cell(r, n)).join(' | ')} | ${r.problems.length ? 'fail' : 'pass'} |`),
    END,
  ].join('\n');
}

function writeMatrixDoc(section: string): 'unchanged' | 'rewritten' {
  const text = fs.readFileSync(MATRIX_DOC, 'utf8');
  let next: string;
  const s = text.indexOf(START),
    e = text.indexOf(END);
  if (s >= 0 && e > s) next = text.slice(0, s) + section + text.slice(e + END.length);
  else next = `${text.trimEnd()}\n\n${section}\n`;
  if (next === text) return 'unchanged';
  fs.writeFileSync(MATRIX_DOC, next);
  return 'rewritten';
}

// ---- tests ----
const runs = new Map<string, Run>(); // label -> run, in test order

function check(t: import('ava').ExecutionContext, r: Run, extra: () => string): void {
  t.log(`${r.label}: agent ${r.agentSeconds}s, status ${r.status}; ${PROBES.map((p) => `${p.name}=${cell(r, p.name)}`).join(' ')}`);
  t.deepEqual(r.problems, [], `${r.label}:\n${r.problems.join('\n')}\n${extra()}`);
}

for (const [k, skip] of kernels.length ? kernels : [[{ name: '6.1', package: '-', release: '-' } as KernelEntry, vmReason] as const]) {
  const reason = vmReason ?? skip;
  (reason ? test.skip : test.serial)(
    `${k.name} guest: every probe takes the first tier whose hook exists${reason ? ` (skipped: ${reason})` : ''}`,
    async (t) => {
      const label = `\`${k.release}\` (Debian, QEMU)`;
      let g: GuestResult;
      try {
        // kvm_amd (and with it kvm) is a module in Debian kernels: load it so the kvm family's hooks exist.
        g = await runInGuest(k, SCRIPT, { timeoutMs: GUEST_TIMEOUT_MS, modules: ['kvm_amd'] });
      } catch (e) {
        runs.set(label, { ...parseRun(label, ''), problems: [`guest run threw: ${(e as Error).message}`] });
        throw e;
      }
      const r = parseRun(label, g.stdout);
      if (g.status !== 0) r.problems.unshift(`guest script status ${g.status} (timedOut=${g.timedOut})`);
      if (r.release !== k.release) r.problems.unshift(`guest runs ${r.release}, expected ${k.release}`);
      t.log(`${k.package}: attempts=${g.attempts} wall=${g.seconds}s boot=${g.bootSeconds}s script=${g.scriptSeconds}s agent=${r.agentSeconds}s`);
      runs.set(label, r);
      check(t, r, () => describeRun(g));
    },
  );
}

(hostReason ? test.skip : test.serial)(
  `host kernel: every probe takes the first tier whose hook exists${hostReason ? ` (skipped: ${hostReason})` : ''}`,
  (t) => {
    const h = spawnSync('bash', ['-c', SCRIPT], { encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20 });
    const r = parseRun('', h.stdout ?? '');
    r.label = `\`${r.release}\` (host)`;
    if (h.status !== 0) r.problems.unshift(`host script status ${h.status} ${h.error?.message ?? ''}`.trim());
    runs.set(r.label, r);
    check(t, r, () => `--- stderr ---\n${h.stderr}`);
  },
);

const readmeReason = vmReason ?? hostReason ?? kernels.find(([, s]) => s)?.[1];
(readmeReason ? test.skip : test.serial)(
  `docs/kernel-matrix.md is regenerated from this run${readmeReason ? ` (skipped, docs/kernel-matrix.md left as is: ${readmeReason})` : ''}`,
  (t) => {
    const expected = kernels.length + 1;
    t.is(runs.size, expected, `only ${runs.size} of ${expected} runs produced results (run the whole file to regenerate docs/kernel-matrix.md)`);
    if (runs.size !== expected) return;
    const section = renderSection([...runs.values()]);
    t.log(`docs/kernel-matrix.md ${writeMatrixDoc(section)}:\n${section}`);
    const text = fs.readFileSync(MATRIX_DOC, 'utf8');
    t.true(text.includes(section));
    t.is(text.split(START).length, 2, 'exactly one kernel-matrix section');
    t.true(text.indexOf('# Kernel matrix') < text.indexOf(START));
  },
);
