/**
 * The kernel's own KVM selftests (tools/testing/selftests/kvm) as a nested-virtualization workload
 * for the in-guest tests (see /work/shared/VM-RECIPE.md). Built on the host from Debian's
 * `linux-source-<series>` package without installing it: `apt-get download` + `dpkg-deb -x` into a
 * temporary directory of the cache, then only what the build needs is taken out of the source
 * tarball (the top Makefile, scripts/, the uapi headers, arch/x86's syscall tables and tools, and
 * the selftest tree: about 17 MB of the 1.3 GB tree), `make headers` installs the uapi headers
 * into the tree's usr/include, and the selftest Makefile builds only the requested programs (and
 * the ~20 files of its lib). The binaries are kept in
 *   $HVWATCH_VM_CACHE/selftests/<source package version>/x86_64/<test>
 * and the unpacked source is deleted: a rebuild happens only when apt offers another version of
 * the source package (or a test is asked for that the cached build lacks).
 *
 * Measured on a 2-core Debian 12 machine (linux-source-6.1 6.1.192-2, 139 MB .deb): download 1-2 s
 * (from a fast mirror), selective untar ~10 s (xz decompression of the whole tarball dominates),
 * `make headers` 7-10 s, five programs and the lib 4-6 s: 17.6 s cold on an idle machine, 23.8 s
 * with other QEMU guests running; a cached lookup (one `apt-cache policy` call) takes 0.4-0.6 s.
 *
 * Also built here, from the C source below: hold.so, an LD_PRELOAD helper that keeps a finished
 * selftest's process alive (see HOLD_SOURCE) so a scrape can still see its VM.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CACHE_DIR, which } from './harness.js';

export interface Selftests {
  version: string; // the linux-source package version the binaries were built from
  dir: string; // cache dir: x86_64/<test> + hold-<hash>.so
  bin: (test: string) => string; // absolute path of a built test, e.g. bin('x86_64/svm_vmcall_test')
  hold: string; // absolute path of the LD_PRELOAD hold helper
  cached: boolean; // true when no build was needed
  seconds: number; // wall time of this call (download + build when cold)
  buildSeconds: number; // wall time of the build that produced the cached binaries
}

const execFileP = promisify(execFile);
const sha = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 12);
const tmpName = (p: string): string => `${p}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
// The last lines of a command's output, without make's echoed compiler command lines (each a few
// hundred characters of flags), so the error itself shows.
const tail = (s: string, n = 25): string =>
  s
    .trimEnd()
    .split('\n')
    .filter((l) => !/^(gcc|cc|clang) /.test(l))
    .slice(-n)
    .join('\n');

/** Runs a command; on failure throws an Error whose message is the command and its output's tail. */
async function run(cmd: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { cwd, env: env ?? process.env, maxBuffer: 256 << 20, encoding: 'utf8' });
    return stdout + stderr;
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; code?: unknown; message: string };
    const out = `${x.stdout ?? ''}${x.stderr ?? ''}`.trim() || x.message;
    throw new Error(`${[cmd, ...args].join(' ').slice(0, 300)} failed (exit ${String(x.code)}):\n${tail(out)}`, { cause: e });
  }
}

// What the headers and the selftests need out of the source tarball (paths under its top dir).
// `make headers`: Makefile, scripts/, include/uapi, arch/x86/{Makefile,Kbuild,entry/syscalls,tools,
// include/uapi}. The kvm selftests: tools/{include,arch/x86/include,build,scripts},
// tools/lib/rbtree.c (lib/rbtree.c includes "../../../../lib/rbtree.c" relative to itself: without
// it the compiler silently finds the kernel's lib/rbtree.c through -I and the link fails),
// selftests/{kvm,lib.mk,kselftest*.h}.
const MEMBERS = [
  'Makefile',
  'scripts',
  'include/uapi',
  'arch/x86/Makefile',
  'arch/x86/Kbuild',
  'arch/x86/entry/syscalls',
  'arch/x86/tools',
  'arch/x86/include/uapi',
  'tools/include',
  'tools/arch/x86/include',
  'tools/build',
  'tools/scripts',
  'tools/lib/rbtree.c',
  'tools/testing/selftests/kvm',
  'tools/testing/selftests/lib.mk',
  'tools/testing/selftests/kselftest*',
];

/**
 * hold.so: with HVWATCH_HOLD_DIR set, a process that calls exit() (a selftest returning from main,
 * passing, skipping or failing an assertion) first writes "<exit status>\n" to $DIR/<pid>.done and
 * then waits, still alive, until $DIR/<pid>.release exists (at most HVWATCH_HOLD_MS, default
 * 120000 ms) before exiting with the same status. The hook is an on_exit() handler registered by a
 * constructor, so it runs after the test's own atexit handlers and sees the real exit status. A
 * test that dies from a signal or calls _exit() is not held (the caller sees the process go away
 * without a .done file). The selftest binaries themselves are unmodified.
 */
export const HOLD_SOURCE = `// hold.so (test/vm/selftests.ts): keep a finished process alive until released.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void hold(int status, void *arg)
{
	(void)arg;
	const char *dir = getenv("HVWATCH_HOLD_DIR");
	if (!dir || !*dir)
		return;
	fflush(NULL);
	char done[4096], tmp[4200], rel[4096];
	int pid = getpid();
	snprintf(done, sizeof(done), "%s/%d.done", dir, pid);
	snprintf(tmp, sizeof(tmp), "%s.tmp", done);
	snprintf(rel, sizeof(rel), "%s/%d.release", dir, pid);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return;
	fprintf(f, "%d\\n", status);
	if (fclose(f) != 0 || rename(tmp, done) != 0)
		return;
	const char *t = getenv("HVWATCH_HOLD_MS");
	long max = t ? atol(t) : 120000, waited = 0;
	struct timespec d = { 0, 20 * 1000 * 1000 };
	while (access(rel, F_OK) != 0 && waited < max) {
		nanosleep(&d, NULL);
		waited += 20;
	}
}

__attribute__((constructor)) static void hold_init(void)
{
	if (getenv("HVWATCH_HOLD_DIR"))
		on_exit(hold, NULL);
}
`;

/**
 * Programs of our own, built by the selftest Makefile with its lib like any selftest (listed in
 * TEST_GEN_PROGS_EXTENDED through a wrapper makefile, so they link against the lib), by path under
 * tools/testing/selftests/kvm. Ask for them in prepareSelftests' test list like the real ones.
 *
 * x86_64/hvwatch_nested_state: nested work with counts known in advance, for what the 6.1 SVM
 * selftests do not give: (1) exits reflected to L1 that L1 then resumes L2 from
 * (kvm_nested_vmexit_inject followed by a nested VM-entry; svm_vmcall_test and svm_int_ctl_test
 * reflect only their last exit, so they never give an L1 handling latency), and (2)
 * KVM_GET_NESTED_STATE at a known number of stops in L1 and in L2. state_test also saves nested
 * state while L2 runs, but restores every save into a new VM too, and its counts follow from its
 * stages rather than being printed.
 */
export const HELPERS: Readonly<Record<string, string>> = {
  'x86_64/hvwatch_nested_state': `// SPDX-License-Identifier: GPL-2.0-only
/*
 * hvwatch_nested_state: nested SVM with exits reflected to L1 and resumed, and nested-state saves
 * while L2 runs. Built with the KVM selftests by test/vm/selftests.ts (hvwatch's in-guest tests).
 *
 * L1 runs L2, which does VMMCALL L2_VMMCALLS + 1 times; L1 intercepts VMMCALL, so KVM reflects
 * each one to L1 (kvm_nested_vmexit_inject), and L1 skips it and re-enters L2
 * (kvm_nested_vmenter) for all but the last. L1 and L2 also stop twice each at GUEST_SYNC, a port
 * read L1 does not intercept, so KVM_RUN returns here with the vCPU in L1 or still in L2; every
 * stop saves the state with KVM_GET_NESTED_STATE (GUEST_MODE exactly at the L2 stops); nothing is
 * restored. One KVM_SET_NESTED_STATE with size 0 fails with EINVAL and changes nothing. Prints
 * one line with what it did.
 */
#include <errno.h>
#include <string.h>
#include "test_util.h"
#include "kvm_util.h"
#include "processor.h"
#include "svm_util.h"

#define L2_VMMCALLS 20

static void l2_guest_code(void)
{
	GUEST_SYNC(2);
	for (volatile int i = 0; i < L2_VMMCALLS; i++)
		vmmcall();
	GUEST_SYNC(2);
	vmmcall();
}

static void l1_guest_code(struct svm_test_data *svm)
{
	#define L2_GUEST_STACK_SIZE 64
	unsigned long l2_guest_stack[L2_GUEST_STACK_SIZE];
	struct vmcb *vmcb = svm->vmcb;

	generic_svm_setup(svm, l2_guest_code, &l2_guest_stack[L2_GUEST_STACK_SIZE]);
	GUEST_SYNC(1);
	for (int i = 0; i <= L2_VMMCALLS; i++) {
		run_guest(vmcb, svm->vmcb_gpa);
		GUEST_ASSERT(vmcb->control.exit_code == SVM_EXIT_VMMCALL);
		vmcb->save.rip += 3; /* no nRIP save under TCG: skip the 3-byte VMMCALL by hand */
	}
	GUEST_SYNC(1);
	GUEST_DONE();
}

int main(int argc, char *argv[])
{
	struct kvm_vcpu *vcpu;
	vm_vaddr_t svm_gva;
	struct kvm_vm *vm;
	int gets = 0, guest_mode = 0, run_pending = 0, set_einval = 0;
	char flags[256] = "";

	TEST_REQUIRE(kvm_cpu_has(X86_FEATURE_SVM));
	int size = kvm_check_cap(KVM_CAP_NESTED_STATE);
	TEST_REQUIRE(size > 0);
	struct kvm_nested_state *state = calloc(1, size);
	TEST_ASSERT(state, "calloc");

	vm = vm_create_with_one_vcpu(&vcpu, l1_guest_code);
	vcpu_alloc_svm(vm, &svm_gva);
	vcpu_args_set(vcpu, 1, svm_gva);

	for (;;) {
		volatile struct kvm_run *run = vcpu->run;
		struct ucall uc;

		vcpu_run(vcpu);
		TEST_ASSERT(run->exit_reason == KVM_EXIT_IO, "Got exit_reason other than KVM_EXIT_IO: %u (%s)\\n",
			    run->exit_reason, exit_reason_str(run->exit_reason));
		switch (get_ucall(vcpu, &uc)) {
		case UCALL_ABORT:
			REPORT_GUEST_ASSERT(uc);
			/* NOT REACHED */
		case UCALL_SYNC:
			memset(state, 0, size);
			state->size = size;
			vcpu_nested_state_get(vcpu, state);
			gets++;
			guest_mode += !!(state->flags & KVM_STATE_NESTED_GUEST_MODE);
			run_pending += !!(state->flags & KVM_STATE_NESTED_RUN_PENDING);
			snprintf(flags + strlen(flags), sizeof(flags) - strlen(flags), "%s%#x", gets > 1 ? "," : "", state->flags);
			/* L1 stops are sync 1, L2 stops sync 2: the saved GUEST_MODE flag must agree. */
			TEST_ASSERT(!!(state->flags & KVM_STATE_NESTED_GUEST_MODE) == (uc.args[1] == 2),
				    "sync %lu: nested state flags %#x", (unsigned long)uc.args[1], state->flags);
			if (gets == 1) {
				struct kvm_nested_state bad = { .size = 0 };
				int r = __vcpu_nested_state_set(vcpu, &bad);
				TEST_ASSERT(r == -1 && errno == EINVAL, "KVM_SET_NESTED_STATE size 0: %d errno %d", r, errno);
				set_einval++;
			}
			break;
		case UCALL_DONE:
			goto done;
		default:
			TEST_FAIL("Unknown ucall 0x%lx.", uc.cmd);
		}
	}
done:
	printf("hvwatch_nested_state gets=%d guest_mode=%d run_pending=%d set_einval=%d vmmcalls=%d flags=%s\\n",
	       gets, guest_mode, run_pending, set_einval, L2_VMMCALLS + 1, flags);
	kvm_vm_free(vm);
	free(state);
	return 0;
}
`,
};
/** The counts hvwatch_nested_state's one output line reports (it asserts them itself). */
export const NESTED_STATE_HELPER = { name: 'x86_64/hvwatch_nested_state', vmmcalls: 21, l1Resumes: 20, gets: 4, guestModeGets: 2, setEinval: 1 } as const;

/** The candidate version of a package in apt's lists, or undefined. */
async function candidate(pkg: string): Promise<string | undefined> {
  try {
    const out = await run('apt-cache', ['policy', pkg], '/');
    const v = /Candidate: (\S+)/.exec(out)?.[1];
    return v && v !== '(none)' ? v : undefined;
  } catch {
    return undefined;
  }
}

interface Stamp {
  version: string;
  tests: string[];
  helpers: Record<string, string>;
  buildSeconds: number;
}
const readStamp = (dir: string): Stamp | undefined => {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, '.ready'), 'utf8')) as Stamp;
  } catch {
    return undefined;
  }
};

async function ensureHold(dir: string): Promise<string> {
  const so = path.join(dir, `hold-${sha(HOLD_SOURCE)}.so`);
  if (fs.existsSync(so)) return so;
  const tmp = tmpName(so);
  fs.writeFileSync(`${tmp}.c`, HOLD_SOURCE);
  try {
    await run('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-shared', '-fPIC', '-o', tmp, `${tmp}.c`], dir);
    fs.renameSync(tmp, so);
  } finally {
    fs.rmSync(tmp, { force: true });
    fs.rmSync(`${tmp}.c`, { force: true });
  }
  return so;
}

/**
 * Build (once per source version) the given selftests, e.g. ['x86_64/svm_vmcall_test'], from
 * Debian's linux-source-<series>; returns the binaries or why they cannot be had (a skip reason:
 * missing tool, package not offered, download or build failure with the output's last lines).
 */
export async function prepareSelftests(tests: string[], series = '6.1'): Promise<Selftests | { skip: string }> {
  const t0 = Date.now();
  const pkg = `linux-source-${series}`;
  for (const [cmd, deb] of [
    ['make', 'make'],
    ['gcc', 'gcc'],
    ['tar', 'tar'],
    ['xz', 'xz-utils'],
    ['apt-get', 'apt'],
    ['apt-cache', 'apt'],
    ['dpkg-deb', 'dpkg'],
  ] as const) {
    if (!which(cmd)) return { skip: `${cmd} not installed (apt-get install ${deb}; see test/vm/deps.txt)` };
  }
  if (!fs.existsSync('/usr/include/stdio.h')) return { skip: 'libc6-dev not installed (no /usr/include/stdio.h; see test/vm/deps.txt)' };
  const root = path.join(CACHE_DIR, 'selftests');
  try {
    fs.mkdirSync(root, { recursive: true });
  } catch (e) {
    return { skip: `cannot create ${root}: ${(e as Error).message}` };
  }

  let version = await candidate(pkg);
  if (!version) {
    // Offline, or apt lists without the package: a build of any version will do.
    const built = fs
      .readdirSync(root)
      .filter((d) => !d.includes('.tmp-') && readStamp(path.join(root, d)))
      .sort();
    version = built.at(-1);
    if (!version) return { skip: `apt-cache offers no ${pkg} package (apt-get update?) and no build is cached in ${root}` };
  }
  const dir = path.join(root, version);
  const result = (cached: boolean, hold: string, stamp: Stamp): Selftests => ({
    version,
    dir,
    hold,
    cached,
    bin: (t) => path.join(dir, t),
    buildSeconds: stamp.buildSeconds,
    seconds: Math.round((Date.now() - t0) / 100) / 10,
  });

  const helperHash = (t: string): string => sha(HELPERS[t]!);
  const have = readStamp(dir);
  const fresh = (st: Stamp, t: string): boolean =>
    st.tests.includes(t) && fs.existsSync(path.join(dir, t)) && (!(t in HELPERS) || st.helpers?.[t] === helperHash(t));
  if (have && tests.every((t) => fresh(have, t))) {
    try {
      return result(true, await ensureHold(dir), have);
    } catch (e) {
      return { skip: `building the hold helper failed: ${(e as Error).message}` };
    }
  }

  // A cached build of this version lacking a test: rebuild with the union, so nothing is lost.
  tests = [...new Set([...(have?.tests ?? []), ...tests])];
  const unknownHelper = tests.find((t) => /\/hvwatch_/.test(t) && !(t in HELPERS));
  if (unknownHelper) return { skip: `no source for helper ${unknownHelper}` };
  const tmp = tmpName(dir);
  fs.mkdirSync(tmp, { recursive: true });
  try {
    try {
      await run('apt-get', ['-q', '-o', 'APT::Sandbox::User=root', 'download', `${pkg}=${version}`], tmp);
    } catch (e) {
      return { skip: `apt-get download ${pkg}=${version}: ${(e as Error).message}` };
    }
    const deb = fs.readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (!deb) return { skip: `apt-get download ${pkg}=${version} produced no .deb` };
    const src = path.join(tmp, 'src');
    try {
      await run('dpkg-deb', ['-x', deb, src], tmp);
      fs.rmSync(path.join(tmp, deb));
      const tarball = path.join(src, 'usr/src', `${pkg}.tar.xz`);
      if (!fs.existsSync(tarball)) return { skip: `${pkg}_${version} has no usr/src/${pkg}.tar.xz` };
      await run('tar', ['-xJf', tarball, '--wildcards', ...MEMBERS.map((m) => `${pkg}/${m}`)], src);
      fs.rmSync(tarball);
      const tree = path.join(src, pkg);
      const jobs = String(os.availableParallelism());
      // uapi headers into <tree>/usr/include, where the selftest Makefile looks (-I and -isystem).
      await run('make', ['-s', '-j', jobs, 'ARCH=x86', 'headers'], tree);
      const kvmDir = path.join(tree, 'tools/testing/selftests/kvm');
      const helpers = tests.filter((t) => t in HELPERS);
      for (const h of helpers) fs.writeFileSync(path.join(kvmDir, `${h}.c`), HELPERS[h]!);
      // The Makefile sets TEST_GEN_PROGS_x86_64 with '=' but extends TEST_GEN_PROGS_EXTENDED_x86_64
      // with '+=': set before the include, our programs get the lib objects as prerequisites.
      fs.writeFileSync(path.join(kvmDir, 'hvwatch.mk'), helpers.map((h) => `TEST_GEN_PROGS_EXTENDED_x86_64 += ${h}\n`).join('') + 'include Makefile\n');
      const out = path.join(tmp, 'out');
      await run('make', ['-f', 'hvwatch.mk', '-j', jobs, `OUTPUT=${out}`, ...tests.map((t) => path.join(out, t))], kvmDir);
      for (const t of tests) {
        fs.mkdirSync(path.dirname(path.join(tmp, t)), { recursive: true });
        fs.renameSync(path.join(out, t), path.join(tmp, t));
      }
    } catch (e) {
      return { skip: `building ${tests.join(', ')} from ${pkg}_${version} failed: ${(e as Error).message}` };
    } finally {
      fs.rmSync(src, { recursive: true, force: true });
      fs.rmSync(path.join(tmp, 'out'), { recursive: true, force: true });
    }
    const stamp: Stamp = {
      version,
      tests,
      helpers: Object.fromEntries(tests.filter((t) => t in HELPERS).map((t) => [t, helperHash(t)])),
      buildSeconds: Math.round((Date.now() - t0) / 100) / 10,
    };
    fs.writeFileSync(path.join(tmp, '.ready'), JSON.stringify(stamp) + '\n');
    if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true }); // an older, smaller build, or a crashed run's
    try {
      fs.renameSync(tmp, dir);
    } catch {
      /* another process won the race: use its build */
    }
    const now = readStamp(dir);
    if (!now) return { skip: `selftest build vanished from ${dir}` };
    try {
      return result(false, await ensureHold(dir), now);
    } catch (e) {
      return { skip: `building the hold helper failed: ${(e as Error).message}` };
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
