// Real nested VM-exits, for real, no mocks: the kvm probe family (families/kvm/family.ts,
// families/kvm/kvm.bpf.c) inside Debian 6.1 / 6.12 guests under QEMU TCG (test/vm/harness.ts) with
// `kvm_amd nested=1`, so the guest kernel is an L0 hypervisor running L1 VMs that run L2 guests.
// One boot per kernel: the agent (`bin/hvwatch run`, default probes) on the guest's loopback, then
// the nested workload, then /metrics and /api/probes scraped inside the guest and checked here.
//
// The workload (test/vm/selftests.ts builds it on the host from Debian's linux-source-6.1):
//  - the kernel's own KVM selftests svm_vmcall_test, svm_nested_shutdown_test, svm_int_ctl_test
//    (L2 exits handled by L0: npf, io, vintr...; each but the shutdown test reflects its final
//    exit, a VMMCALL, to L1);
//  - state_test, the 6.1 selftest that saves nested state while L2 runs: it stops at GUEST_SYNC 1-7
//    (4 and 6 in L2), saves the vCPU with KVM_GET_NESTED_STATE at each stop and restores it into a
//    new VM with KVM_SET_NESTED_STATE (svm_nested_soft_inject_test cannot run under TCG: it needs
//    nRIP save);
//  - hvwatch_nested_state, a small selftest-style helper (same lib, selftests.ts) for exact counts
//    none of them gives: 21 VMMCALLs from L2 reflected to L1, 20 of which L1 resumes L2 after (the
//    L1 handling latency runs from the inject to the next nested VM-entry, which the three SVM
//    selftests never do after a reflected exit), and KVM_GET_NESTED_STATE at two stops in L1 and
//    two in L2, plus one KVM_SET_NESTED_STATE that fails with EINVAL.
//
// One vCPU in the guest (-smp 1). With the harness's default -smp 2, TCG guests running these
// programs sometimes froze (no console output at all: only the boot timeout ends it) or oopsed on
// an int3 inside __schedule, a kernel text-patching site; most likely code patching (static keys
// and calls flip as VMs come and go) racing with the other emulated CPU. Measured in loops:
// state_test froze the 6.1 guest in 4 of 22 runs; the other programs froze 6.1 once in about 120
// runs and oopsed 6.12 once in 17. With -smp 1: 200 of 200 runs of the other programs on each
// kernel and 30 of 30 state_test runs, and the guest is faster too (one emulated CPU competes
// less for the host's two cores).
//
// The oracle: the same kvm tracepoints, recorded by ftrace in the guest while the workload runs
// and reduced per thread by an awk script with the probe's definitions (exit -> next entry on the
// thread; an L2 exit not followed by an inject before the thread's next nested event was L0's; an
// inject followed by a nested VM-entry is one L1 handling). The agent's counts per VM and reason
// must equal the oracle's exactly.
//
// The vm label: the selftests have no -name, so agent/vms.ts names each VM `pid-<tgid>`, and the
// agent drops a VM's series as soon as its process is gone. A selftest runs for 0.1-0.5 s, so
// scraping "while one is running" would be a race. Instead every selftest runs with hold.so
// preloaded (selftests.ts): when it calls exit() its exit status is written to a file and the
// process waits, alive, until the script releases it. The script runs the programs one after
// the other, each to completion (held), scrapes once with all of them alive, then releases
// them and scrapes again to check that their series went away. Nothing races: every event of
// every VM happened before the scrape, and every VM process exists during it. The pid each
// program ran as is known to the script ($!), so each label is checked against its own program.
//
// Skips, with the reason in the title, when QEMU/tools/kernel packages/the selftest build are
// unavailable; never passes vacuously.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { M } from '../../agent/catalog.js';
import { parseExposition, pick, value, type Sample } from '../helpers/agent.js';
import {
  GUEST_AGENT_SHELL,
  describeRun,
  guestPlan,
  runInGuest,
  vmUnavailableReason,
  type GuestResult,
  type KernelEntry,
  hostToolsReason,
  q,
} from './harness.js';
import { NESTED_STATE_HELPER, prepareSelftests, type Selftests } from './selftests.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url)); // dist/test/vm/ -> repo root
const HVWATCH = path.join(ROOT, 'bin/hvwatch');
const GUEST_TIMEOUT_MS = 120_000;
// 6.1 is required; 6.12 runs the same 6.1-built binaries (the KVM ioctl ABI is stable) and costs
// one more boot of ~30 s warm, which the budget allows.
const SERIES = ['6.1', '6.12'];
const SELFTESTS = ['x86_64/svm_vmcall_test', 'x86_64/svm_nested_shutdown_test', 'x86_64/svm_int_ctl_test', 'x86_64/state_test', NESTED_STATE_HELPER.name];
// state_test.c (6.1), SVM: GUEST_SYNC 1-7, each saved (GET) and restored into a new VM (SET); the
// stops in L2 are 4 and 6.
const STATE_TEST = { gets: 7, sets: 7, guestModeGets: 2 };
const KVM_PROBES = ['kvm_exit', 'kvm_userspace_exit', 'kvm_ioctl', 'kvm_io', 'kvm_nested'];
// Listed too, off: hot probes of the family, opt-in (none is passed --hot here).
const KVM_HOT_PROBES = ['kvm_emulate'];

// ---- decided at module load: a missing tool, kernel package or build skips, never passes ----
// The guest runs the host's root: these must exist there.
const commonReason = hostToolsReason(ROOT, [
  ['ip', 'apt-get install iproute2; the guest needs it to bring up loopback'],
  ['awk', 'the trace oracle needs it'],
]);
const vmReason = commonReason ?? vmUnavailableReason();
const plan = await guestPlan(SERIES, vmReason);
let selftests: Selftests | undefined;
let selftestReason: string | undefined;
if (!vmReason) {
  const s = await prepareSelftests(SELFTESTS, '6.1');
  if ('skip' in s) selftestReason = `KVM selftests unavailable: ${s.skip}`;
  else selftests = s;
}

// ---- the guest script ----

// Reduces the ftrace record to counts per (kind, thread, reason). The selftests run their one vCPU
// on the main thread, so the thread id is the VMM's pid. Kinds: exit (kvm_exit), handled (a
// kvm_exit followed by the thread's next kvm_entry), l0 / l1 (nested exits handled by L0 /
// reflected to L1, the probe's split), vmenter (kvm_nested_vmenter), l1_resumed (an inject
// followed by the thread's next nested VM-entry: one L1 handling-latency sample, by the inject's
// reason). An L2 exit still pending at the end is in neither l0 nor l1, as in the probe.
const ORACLE_AWK = String.raw`
/^#/ { next }
{
  if (!match($0, /-[0-9]+ +\[[0-9]+\]/)) next
  tid = substr($0, RSTART + 1, RLENGTH - 1) + 0
  ev = ""; reason = "-"
  for (i = 1; i <= NF; i++) if ($i ~ /^kvm_[a-z_]+:$/) { ev = substr($i, 1, length($i) - 1); break }
  for (j = i + 1; j < NF; j++) if ($j == "reason" || $j == "reason:") { reason = $(j + 1); break }
  if (ev == "kvm_exit") { n["exit", tid, reason]++; pe[tid] = reason }
  else if (ev == "kvm_entry") { if (pe[tid] != "") n["handled", tid, pe[tid]]++; pe[tid] = "" }
  else if (ev == "kvm_nested_vmexit") { if (l2[tid] != "") n["l0", tid, l2[tid]]++; l2[tid] = reason; l1[tid] = "" }
  else if (ev == "kvm_nested_vmexit_inject") { n["l1", tid, reason]++; l2[tid] = ""; l1[tid] = reason }
  else if (ev == "kvm_nested_vmenter") {
    n["vmenter", tid, "-"]++
    if (l2[tid] != "") n["l0", tid, l2[tid]]++
    if (l1[tid] != "") n["l1_resumed", tid, l1[tid]]++
    l2[tid] = ""; l1[tid] = ""
  }
}
END { for (k in n) { split(k, a, SUBSEP); printf "oracle kind=%s tid=%s reason=%s n=%d\n", a[1], a[2], a[3], n[k] } }
`;

function script(st: Selftests): string {
  return `
set -u
HVWATCH=${q(HVWATCH)}
ST=${q(st.dir)}
HOLD=${q(st.hold)}
TESTS=${q(SELFTESTS.join(' '))}
PORT=9479
URL=http://127.0.0.1:$PORT
T=/sys/kernel/tracing
${GUEST_AGENT_SHELL}HD=$tmp/hold && mkdir $HD
echo "release=$(uname -r)"
P=/sys/module/kvm_amd/parameters
echo "kvm_amd=nested:$(cat $P/nested) npt:$(cat $P/npt) nrips:$(cat $P/nrips 2>/dev/null)"
echo "module_btf=$(cd /sys/kernel/btf && ls -d kvm kvm_amd 2>/dev/null | tr '\\n' ' ')"
ip link set lo up || ifconfig lo up || fail 'cannot bring up loopback'

# ---- the agent, on loopback, default probes (kvm_amd is loaded: the kvm tracepoints exist) ----
# Exited VMs' series go at the first scrape after exit (no linger): the test checks they go.
printf 'kvm:\n  exitedVmSeconds: 0\n' > "$tmp/hvwatch.yaml"
start_agent --config "$tmp/hvwatch.yaml"

# ---- the oracle: ftrace on the same tracepoints, global clock (one thread's events in order) ----
echo global > $T/trace_clock
echo 16384 > $T/buffer_size_kb
echo > $T/trace
for e in kvm_exit kvm_entry kvm_nested_vmexit kvm_nested_vmexit_inject kvm_nested_vmenter; do
  echo 1 > $T/events/kvm/$e/enable || fail "enable trace event $e"
done
echo 1 > $T/tracing_on

# ---- the workload: each program runs to its exit() and is held there, alive (hold.so) ----
PIDS=
for t in $TESTS; do
  n=\${t##*/}
  HVWATCH_HOLD_DIR=$HD LD_PRELOAD=$HOLD "$ST/$t" > "$tmp/$n.out" 2>&1 &
  pid=$!
  i=0
  until [ -e "$HD/$pid.done" ] || ! kill -0 $pid 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "$n did not finish in 60 s"
    sleep 0.1
  done
  echo "selftest=$n pid=$pid held_status=$(cat "$HD/$pid.done" 2>/dev/null || echo not_held)"
  PIDS="$PIDS $pid"
done
echo 0 > $T/tracing_on
echo "t_workload=$(ts)"
echo "trace_overrun=$(awk '/^overrun:/ { s += $2 } END { print s + 0 }' $T/per_cpu/cpu*/stats)"
echo "trace_lines=$(grep -vc '^#' $T/trace)"
awk ${q(ORACLE_AWK)} $T/trace

# ---- the scrape, every VM process alive ----
echo '<<<metrics'; get "$URL/metrics" || echo "guest_error=scrape failed"; echo 'metrics>>>'
echo '<<<probes'; get "$URL/api/probes"; echo; echo 'probes>>>'
echo "t_scraped=$(ts)"

# ---- release: the processes exit, and their series must go ----
for p in $PIDS; do touch "$HD/$p.release"; done
for p in $PIDS; do wait $p; echo "selftest_exit pid=$p status=$?"; done
for t in $TESTS; do n=\${t##*/}; echo "<<<out-$n"; cat "$tmp/$n.out"; echo "out-$n>>>"; done
echo '<<<metrics-after'; get "$URL/metrics"; echo 'metrics-after>>>'

kill $AG; wait $AG; echo "agent_exit=$?"
echo '<<<agent-stderr'; cat "$tmp/agent.err"; echo 'agent-stderr>>>'
echo "t_end=$(ts)"
exit 0
`;
}

// ---- parsing ----
interface Program {
  name: string;
  pid: number;
  vm: string;
  held: string;
  exit?: number;
  output: string;
}
interface ProbeStatusJson {
  name: string;
  family: string;
  enabled: boolean;
  skipped?: string;
  chosen: { attach: string; target: string } | null;
  candidates: { attach: string; target: string; ok: boolean; error?: string; log?: string[] }[];
}
interface GuestRun {
  g: GuestResult;
  kv: Record<string, string>;
  programs: Program[];
  oracle: Map<string, Map<string, number>>; // `${kind}/${pid}` -> reason -> n
  metrics: Sample[];
  metricsText: string;
  after: Sample[];
  probes: ProbeStatusJson[];
  probesText: string;
  agentStderr: string;
}

const between = (s: string, tag: string): string | undefined => new RegExp(`^<<<${tag}\\n([\\s\\S]*?)^${tag}>>>$`, 'm').exec(s)?.[1];

function parseGuest(g: GuestResult): GuestRun {
  const out = g.stdout;
  const kv = Object.fromEntries(
    out.split('\n').flatMap((l) => {
      const m = /^(\w+)=(.*)$/.exec(l);
      return m ? [[m[1]!, m[2]!]] : [];
    }),
  );
  const exits = new Map<number, number>();
  for (const m of out.matchAll(/^selftest_exit pid=(\d+) status=(\d+)$/gm)) exits.set(Number(m[1]), Number(m[2]));
  const programs = [...out.matchAll(/^selftest=(\S+) pid=(\d+) held_status=(\S+)$/gm)].map((m) => ({
    name: m[1]!,
    pid: Number(m[2]),
    vm: `pid-${m[2]}`,
    held: m[3]!,
    exit: exits.get(Number(m[2])),
    output: between(out, `out-${m[1]}`) ?? '',
  }));
  const oracle = new Map<string, Map<string, number>>();
  for (const m of out.matchAll(/^oracle kind=(\S+) tid=(\d+) reason=(\S+) n=(\d+)$/gm)) {
    const k = `${m[1]}/${m[2]}`;
    if (!oracle.has(k)) oracle.set(k, new Map());
    oracle.get(k)!.set(m[3]!, Number(m[4]));
  }
  const metricsText = between(out, 'metrics') ?? '';
  const probesText = between(out, 'probes')?.trim() ?? '';
  let probes: ProbeStatusJson[] = [];
  try {
    probes = JSON.parse(probesText) as ProbeStatusJson[];
  } catch {
    /* checked by the tests */
  }
  return {
    g,
    kv,
    programs,
    oracle,
    metrics: parseExposition(metricsText),
    metricsText,
    after: parseExposition(between(out, 'metrics-after') ?? ''),
    probes,
    probesText,
    agentStderr: between(out, 'agent-stderr') ?? '',
  };
}

/** The oracle's counts of one kind for one pid, by reason. */
const oracleOf = (r: GuestRun, kind: string, pid: number): Record<string, number> =>
  Object.fromEntries([...(r.oracle.get(`${kind}/${pid}`) ?? new Map<string, number>())].sort());
/** The agent's non-zero values of `name` for one VM, by reason (the BPF maps hold a key per reason
 * seen, so e.g. a reason only L0 handled also has an l1 series at 0: zeros are left out). */
function agentOf(s: Sample[], name: string, labels: Record<string, string>): Record<string, number> {
  const by: Record<string, number> = {};
  for (const x of pick(s, name, labels)) by[x.labels['reason'] ?? '-'] = (by[x.labels['reason'] ?? '-'] ?? 0) + x.value;
  return Object.fromEntries(
    Object.entries(by)
      .filter(([, v]) => v !== 0)
      .sort(),
  );
}
const sum = (o: Record<string, number>): number => Object.values(o).reduce((a, b) => a + b, 0);
const fmt = (o: Record<string, number>): string =>
  Object.entries(o)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ') || '(none)';
/** The kvm lines of an exposition (and the kvm probes' info), histogram buckets only where the
 * cumulative count steps up (a histogram has 27 buckets per VM and reason, mostly repeats). */
function kvmLines(text: string): string {
  let prev: { series: string; v: string } | undefined;
  return text
    .split('\n')
    .filter((l) => {
      if (/^hvwatch_probe_(info|attached)\{/.test(l)) return /probe="kvm_/.test(l);
      if (!/^hvwatch_kvm_/.test(l)) return false;
      const b = /^(\S+_bucket\{.*?)le="([^"]*)"(.*) (\S+)$/.exec(l);
      if (!b) return true;
      const series = `${b[1]}${b[3]}`;
      const keep = b[2] === '+Inf' || prev?.series !== series ? b[4] !== '0' || b[2] === '+Inf' : prev.v !== b[4];
      prev = { series, v: b[4]! };
      return keep;
    })
    .join('\n');
}

// ---- one boot per kernel, shared by that kernel's tests ----
const boots = new Map<string, Promise<GuestRun>>();
function boot(k: KernelEntry, st: Selftests): Promise<GuestRun> {
  let p = boots.get(k.package);
  if (!p) {
    p = runInGuest(k, script(st), { timeoutMs: GUEST_TIMEOUT_MS, smp: 1, modules: ['kvm_amd nested=1'] }).then(parseGuest);
    boots.set(k.package, p);
  }
  return p;
}
/** The kernel's run, or a failed assertion with the guest's report when the script did not complete. */
async function guest(t: ExecutionContext, k: KernelEntry, st: Selftests): Promise<GuestRun | undefined> {
  const r = await boot(k, st);
  if (r.g.status === 0 && r.metrics.length && r.programs.length === SELFTESTS.length) return r;
  t.fail(
    `guest script did not complete (${r.kv['guest_error'] ?? `status ${r.g.status}`})\n${r.agentStderr}\n${describeRun(r.g)}\n--- stdout ---\n${r.g.stdout.slice(-4000)}`,
  );
  return undefined;
}

for (const [k, skip] of plan) {
  const reason = vmReason ?? skip ?? selftestReason;
  const title = (what: string): string => `${k.name} guest kernel, nested SVM (QEMU): ${what}${reason ? ` (skipped: ${reason})` : ''}`;
  const run = reason ? test.skip : test.serial;
  const st = selftests!; // defined whenever reason is undefined

  run(title('the kvm probes attach (tiers reported) and the selftests pass'), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    const { g, kv } = r;
    t.log(
      `${k.package}: attempts=${g.attempts} wall=${g.seconds}s boot=${g.bootSeconds}s script=${g.scriptSeconds}s ` +
        `(guest: agent ready ${kv['t_ready']}s, workload done ${kv['t_workload']}s, scraped ${kv['t_scraped']}s, end ${kv['t_end']}s); ` +
        `selftests ${st.version} ${st.cached ? `cached (lookup ${st.seconds}s; built in ${st.buildSeconds}s)` : `built now in ${st.seconds}s`}; outDir=${g.outDir}`,
    );
    t.log(`kvm_amd ${kv['kvm_amd']}; module BTF: ${kv['module_btf'] || '(none)'}`);
    const kvmProbes = r.probes.filter((p) => p.family === 'kvm');
    for (const p of kvmProbes) {
      // chosen has no index, and two candidates can share attach and target (kvm_exit's classic
      // tracepoint paired with a tp_btf or a classic kvm_entry): the first ok one is the one taken.
      const idx = p.candidates.findIndex((c) => c.ok);
      t.log(
        `probe ${p.name}: ${p.chosen ? `${p.chosen.attach} ${p.chosen.target} (candidate #${idx + 1})` : 'NOT ATTACHED'}; tried ` +
          p.candidates.map((c) => `${c.attach} ${c.target} ${c.ok ? 'ok' : `failed (${c.error ?? '?'})`}`).join('; '),
      );
    }
    // The scrape and /api/probes, to stdout with markers (the full guest output is in outDir/stdout).
    console.log(
      `=== kvm-nested-guest ${k.release}: /metrics (kvm lines) ===\n${kvmLines(r.metricsText)}\n` +
        `=== kvm-nested-guest ${k.release}: /api/probes (kvm family, one probe a line) ===\n${kvmProbes.map((p) => JSON.stringify(p)).join('\n')}\n=== end ===`,
    );

    t.is(kv['release'], k.release);
    t.true(kv['kvm_amd']?.startsWith('nested:1') || kv['kvm_amd']?.startsWith('nested:Y'), `kvm_amd ${kv['kvm_amd']}`);
    t.deepEqual(kvmProbes.map((p) => p.name).sort(), [...KVM_PROBES, ...KVM_HOT_PROBES].sort(), 'kvm probes in /api/probes');
    for (const name of KVM_HOT_PROBES) t.regex(kvmProbes.find((x) => x.name === name)?.skipped ?? '', /^hot probe/, `${name} off: hot, not opted in`);
    for (const name of KVM_PROBES) {
      const p = kvmProbes.find((x) => x.name === name);
      t.truthy(p?.chosen, `${name} attached`);
      t.is(value(r.metrics, M.probeAttached.name, { probe: name }), 1, `${name}: ${M.probeAttached.name}`);
    }
    // Tiers. Since v5.16 the raw kvm_exit / kvm_nested_vmexit arguments are (vcpu, isa): the reason
    // exists only in the classic record, so kvm_exit must take its tracepoint candidate, with the
    // tp_btf one refused by the parameter precheck (which reads the kvm module's BTF). kvm_nested
    // has only the tracepoint.
    const exitProbe = kvmProbes.find((p) => p.name === 'kvm_exit');
    t.is(exitProbe?.chosen?.attach, 'tracepoint');
    t.is(exitProbe?.chosen?.target, 'kvm/kvm_exit');
    if (kv['module_btf']?.includes('kvm ')) {
      t.regex(exitProbe?.candidates.find((c) => c.attach === 'tp_btf')?.error ?? '', /parameters \(vcpu, isa/, 'tp_btf kvm_exit refused by its parameters');
    }
    t.deepEqual(kvmProbes.find((p) => p.name === 'kvm_nested')?.chosen, { attach: 'tracepoint', target: 'kvm/kvm_nested_vmexit' });

    // The workload: every program ran to completion, passed, and was held (so scraped alive).
    t.deepEqual(
      r.programs.map((p) => p.name),
      SELFTESTS.map((s) => path.basename(s)),
    );
    for (const p of r.programs) {
      t.is(p.held, '0', `${p.name} (pid ${p.pid}) exit status at hold: ${p.held}\n${p.output}`);
      t.is(p.exit, 0, `${p.name} exit status ${p.exit}\n${p.output}`);
    }
    t.is(kv['agent_exit'], '0', 'agent exits 0 on SIGTERM');
    const bad = r.agentStderr.split('\n').filter((l) => l && !/^ts=\S+ level=(info|debug) /.test(l));
    t.deepEqual(bad, [], 'agent logged warnings/errors');
  });

  // The loader falls back to the next candidate when one fails to load, so a program the verifier
  // refuses on a kernel whose hooks exist would only show up as a lower tier. Refusals by the
  // precheck (hook absent, tracepoint parameters differ) are by design and not counted here.
  run(title('no kvm candidate whose hooks exist is refused by the verifier or fails to attach'), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    const refused = r.probes
      .filter((p) => p.family === 'kvm')
      .flatMap((p) =>
        p.candidates
          .filter((c) => !c.ok && (c.log?.length || /^(open|load|attach|set attach target|set autoload) /.test(c.error ?? '')))
          .map((c) => `${p.name}: ${c.attach} ${c.target}: ${c.error}\n  ${(c.log ?? []).slice(-6).join('\n  ')}`),
      );
    t.deepEqual(refused, [], `kvm programs refused on ${k.release}:\n${refused.join('\n')}`);
  });

  run(title("VM-exits by reason and exit-handling latency (kvm_exit -> kvm_entry) equal the tracepoints', per selftest VM"), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    t.is(r.kv['trace_overrun'], '0', 'the oracle lost trace events');
    let total = 0;
    let handled = 0;
    for (const p of r.programs) {
      const exits = agentOf(r.metrics, M.kvmExits.name, { vm: p.vm, isa: 'svm' });
      const count = agentOf(r.metrics, `${M.kvmExitHandling.name}_count`, { vm: p.vm, isa: 'svm' });
      const hsum = agentOf(r.metrics, `${M.kvmExitHandling.name}_sum`, { vm: p.vm, isa: 'svm' });
      t.log(
        `${p.name} (${p.vm}): exits ${fmt(exits)}; handled ${fmt(count)}; handling sum ${Object.entries(hsum)
          .map(([k2, v]) => `${k2}=${(v * 1e6).toFixed(0)}us`)
          .join(' ')}`,
      );
      t.deepEqual(exits, oracleOf(r, 'exit', p.pid), `${p.name}: exits by reason vs kvm:kvm_exit`);
      t.deepEqual(count, oracleOf(r, 'handled', p.pid), `${p.name}: exit-handling samples by reason vs kvm_exit -> kvm_entry pairs`);
      for (const reason of Object.keys(count)) t.true((hsum[reason] ?? 0) > 0, `${p.name}: handling sum for ${reason}`);
      // All of this VM's exits are SVM ones, under its own label.
      t.deepEqual(agentOf(r.metrics, M.kvmExits.name, { vm: p.vm }), exits, `${p.name}: exits with another isa`);
      total += sum(exits);
      handled += sum(count);
    }
    t.true(total > 0, 'no VM-exit counted');
    t.true(handled > 0, 'no exit-handling latency sample');
    // Nothing outside the selftests' VMs (there is no other VM in the guest).
    const vms = new Set(r.programs.map((p) => p.vm));
    t.deepEqual(
      pick(r.metrics, M.kvmExits.name)
        .filter((s) => !vms.has(s.labels['vm'] ?? ''))
        .map((s) => s.labels),
      [],
    );
  });

  run(title("nested exits split L0 / L1 by reason and nested VM-entries equal the tracepoints', per selftest VM"), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    t.is(r.kv['trace_overrun'], '0', 'the oracle lost trace events');
    let l0 = 0;
    let l1 = 0;
    let enters = 0;
    for (const p of r.programs) {
      const a0 = agentOf(r.metrics, M.kvmNestedExits.name, { vm: p.vm, isa: 'svm', handler: 'l0' });
      const a1 = agentOf(r.metrics, M.kvmNestedExits.name, { vm: p.vm, isa: 'svm', handler: 'l1' });
      const ve = value(r.metrics, M.kvmNestedVmenters.name, { vm: p.vm }) ?? 0;
      t.log(`${p.name} (${p.vm}): l0 ${fmt(a0)}; l1 ${fmt(a1)}; nested vmenters ${ve}`);
      t.deepEqual(a0, oracleOf(r, 'l0', p.pid), `${p.name}: L0-handled nested exits vs the trace`);
      t.deepEqual(a1, oracleOf(r, 'l1', p.pid), `${p.name}: exits reflected to L1 vs kvm:kvm_nested_vmexit_inject`);
      t.is(ve, oracleOf(r, 'vmenter', p.pid)['-'] ?? 0, `${p.name}: nested VM-entries vs kvm:kvm_nested_vmenter`);
      t.true(ve >= 1, `${p.name}: L1 never entered L2`);
      t.is(sum(agentOf(r.metrics, M.kvmNestedVmenterFailures.name, { vm: p.vm })), 0, `${p.name}: nested VM-entry failures`);
      l0 += sum(a0);
      l1 += sum(a1);
      enters += ve;
    }
    t.true(l0 > 0, 'no L2 exit handled by L0');
    t.true(l1 > 0, 'no exit reflected to L1');
    t.true(enters > 0, 'no nested VM-entry');
    // Each selftest reflects one VMMCALL (hypercall) to L1 at its end, except the shutdown test.
    for (const name of ['svm_vmcall_test', 'svm_int_ctl_test']) {
      const p = r.programs.find((x) => x.name === name)!;
      t.is(agentOf(r.metrics, M.kvmNestedExits.name, { vm: p.vm, handler: 'l1' })['hypercall'], 1, `${name}: reflected VMMCALL`);
    }
    // L2's first accesses fault into L0's nested page tables (L1 does not use nested paging here).
    t.true(
      r.programs.some((p) => (agentOf(r.metrics, M.kvmNestedExits.name, { vm: p.vm, handler: 'l0' })['npf'] ?? 0) > 0),
      'npf handled by L0',
    );
    t.is(value(r.metrics, M.kvmUnpaired.name, { pairing: 'nested_l1' }), 0, 'unpaired inject -> vmenter');
  });

  run(title("L1 handling latency (inject -> next nested VM-entry) per reason equals the tracepoints'"), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    t.is(r.kv['trace_overrun'], '0', 'the oracle lost trace events');
    for (const p of r.programs) {
      const count = agentOf(r.metrics, `${M.kvmNestedL1Handling.name}_count`, { vm: p.vm, isa: 'svm' });
      const s = agentOf(r.metrics, `${M.kvmNestedL1Handling.name}_sum`, { vm: p.vm, isa: 'svm' });
      t.log(
        `${p.name} (${p.vm}): L1 handling count ${fmt(count)}; sum ${
          Object.entries(s)
            .map(([k2, v]) => `${k2}=${(v * 1e6).toFixed(0)}us`)
            .join(' ') || '0'
        }`,
      );
      t.deepEqual(count, oracleOf(r, 'l1_resumed', p.pid), `${p.name}: L1 handling samples vs inject -> vmenter pairs`);
      for (const reason of Object.keys(count)) t.true((s[reason] ?? 0) > 0, `${p.name}: L1 handling sum for ${reason}`);
    }
    // The helper: 21 VMMCALLs reflected, L1 resumes L2 after 20 of them.
    const h = r.programs.find((p) => p.name === path.basename(NESTED_STATE_HELPER.name))!;
    const labels = { vm: h.vm, isa: 'svm', reason: 'hypercall' };
    t.is(value(r.metrics, M.kvmNestedExits.name, { ...labels, handler: 'l1' }), NESTED_STATE_HELPER.vmmcalls);
    t.is(value(r.metrics, `${M.kvmNestedL1Handling.name}_count`, labels), NESTED_STATE_HELPER.l1Resumes);
    t.is(value(r.metrics, M.kvmNestedVmenters.name, { vm: h.vm }), NESTED_STATE_HELPER.vmmcalls);
    const inf = pick(r.metrics, `${M.kvmNestedL1Handling.name}_bucket`, { ...labels, le: '+Inf' })[0]?.value;
    t.is(inf, NESTED_STATE_HELPER.l1Resumes, '+Inf bucket = count');
    t.true((value(r.metrics, `${M.kvmNestedL1Handling.name}_sum`, labels) ?? 0) > 0);
  });

  run(title('KVM_GET/SET_NESTED_STATE: saves while L2 runs count GUEST_MODE (state_test, helper); a failed SET has its errno'), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    const h = r.programs.find((p) => p.name === path.basename(NESTED_STATE_HELPER.name))!;
    const line = /^hvwatch_nested_state .*$/m.exec(h.output)?.[0] ?? '(no output line)';
    const ops = pick(r.metrics, M.kvmNestedStateOps.name).map((s) => `${s.labels['vm']}:${s.labels['op']}/${s.labels['result']}=${s.value}`);
    const saves = pick(r.metrics, M.kvmNestedStateSaves.name).map((s) => `${s.labels['vm']}:${s.labels['flag']}=${s.value}`);
    t.log(`helper says: ${line}`);
    t.log(
      `agent: ops ${ops.join(' ') || '(none)'}; saves ${saves.join(' ') || '(none)'}; ` +
        `op time count ${value(r.metrics, `${M.kvmNestedStateOpTime.name}_count`, { vm: h.vm })}`,
    );
    t.regex(
      line,
      new RegExp(`gets=${NESTED_STATE_HELPER.gets} guest_mode=${NESTED_STATE_HELPER.guestModeGets} run_pending=0 set_einval=${NESTED_STATE_HELPER.setEinval} `),
    );
    t.is(value(r.metrics, M.kvmNestedStateOps.name, { vm: h.vm, op: 'get', result: 'ok' }), NESTED_STATE_HELPER.gets);
    t.is(value(r.metrics, M.kvmNestedStateSaves.name, { vm: h.vm, flag: 'guest_mode' }), NESTED_STATE_HELPER.guestModeGets);
    t.is(
      value(r.metrics, M.kvmNestedStateSaves.name, { vm: h.vm, flag: 'run_pending' }),
      undefined,
      'no RUN_PENDING save: not born (README "Series lifecycle")',
    );
    t.is(value(r.metrics, M.kvmNestedStateOps.name, { vm: h.vm, op: 'set', result: 'EINVAL' }), NESTED_STATE_HELPER.setEinval);
    t.is(value(r.metrics, `${M.kvmNestedStateOpTime.name}_count`, { vm: h.vm, op: 'get' }), NESTED_STATE_HELPER.gets);
    // The kernel's own state_test: every stop saved and restored, GUEST_MODE at its two L2 stops.
    const s = r.programs.find((p) => p.name === 'state_test')!;
    t.is(value(r.metrics, M.kvmNestedStateOps.name, { vm: s.vm, op: 'get', result: 'ok' }), STATE_TEST.gets, 'state_test GETs');
    t.is(value(r.metrics, M.kvmNestedStateOps.name, { vm: s.vm, op: 'set', result: 'ok' }), STATE_TEST.sets, 'state_test SETs');
    t.is(value(r.metrics, M.kvmNestedStateSaves.name, { vm: s.vm, flag: 'guest_mode' }), STATE_TEST.guestModeGets, 'state_test GUEST_MODE saves');
    t.deepEqual(
      pick(r.metrics, M.kvmNestedStateOps.name, { vm: s.vm })
        .filter((x) => x.labels['result'] !== 'ok')
        .map((x) => x.labels),
      [],
    );
    // The SVM selftests never save or restore nested state.
    const savers = new Set([h.vm, s.vm]);
    t.deepEqual(
      pick(r.metrics, M.kvmNestedStateOps.name)
        .filter((x) => !savers.has(x.labels['vm'] ?? ''))
        .map((x) => x.labels),
      [],
    );
  });

  run(title("every series carries its selftest's VM (pid-<N>, hvwatch_kvm_vm_info) and goes when the process exits"), async (t) => {
    const r = await guest(t, k, st);
    if (!r) return;
    const info = pick(r.metrics, M.kvmVmInfo.name);
    t.log(
      `vm_info: ${info.map((s) => `${s.labels['vm']}(pid ${s.labels['pid']}, ${s.labels['source']})`).join(' ')}; ` +
        `programs: ${r.programs.map((p) => `${p.name}=${p.pid}`).join(' ')}`,
    );
    t.deepEqual(
      info.map((s) => s.labels).sort((a, b) => Number(a['pid']) - Number(b['pid'])),
      r.programs.map((p) => ({ vm: p.vm, pid: String(p.pid), source: 'pid' })).sort((a, b) => Number(a.pid) - Number(b.pid)),
    );
    t.true(info.every((s) => s.value === 1));
    // Every kvm series with a vm label names one of the programs, and each program has exits.
    const vms = new Set(r.programs.map((p) => p.vm));
    const foreign = r.metrics.filter((s) => s.name.startsWith('hvwatch_kvm_') && 'vm' in s.labels && !vms.has(s.labels['vm']!));
    t.deepEqual(
      foreign.map((s) => `${s.name}${JSON.stringify(s.labels)}`),
      [],
    );
    for (const p of r.programs) t.true((value(r.metrics, M.kvmExits.name, { vm: p.vm }) ?? 0) > 0, `${p.name}: no exits under ${p.vm}`);
    // Released, the processes exited: the next scrape has none of their series.
    t.true(r.after.length > 0, 'no scrape after the release');
    const left = r.after.filter((s) => s.name.startsWith('hvwatch_kvm_') && 'vm' in s.labels);
    t.deepEqual(
      left.map((s) => `${s.name}${JSON.stringify(s.labels)}`),
      [],
      'series of exited VMs',
    );
  });
}
