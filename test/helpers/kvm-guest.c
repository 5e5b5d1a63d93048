// kvm-guest: the smallest VMM that runs a real KVM guest, for tests and benchmarks.
//
// Each vCPU runs the same 11 bytes of real-mode code: N one-byte `out` writes to one port,
// then `hlt`. Without an in-kernel irqchip every `out` and the `hlt` exit to this process,
// so the exit counts it prints are exact and a probe's counts can be checked against them.
//
// It takes QEMU's `-name guest=NAME[,debug-threads=on]` (and ignores it) so that the name
// is in /proc/PID/cmdline where a VM-identity resolver looks for it, and names its vCPU
// threads "CPU <i>/KVM" as QEMU does with debug-threads=on.
//
// stdout: with --wait-start, one ready line ({"ready":true,...}) before the guest runs;
// always one result line (JSON) when all vCPUs have halted, printed before --hold-ms so a
// test can scrape an agent while the VM still exists. Failures: one line on stderr, exit 1
// (usage errors exit 2).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PROG "kvm-guest"
#include "kvm-util.h"

// The numbers the agent's probes and the issue tracker talk about; the headers must agree.
_Static_assert(KVM_GET_NESTED_STATE == 0xC080AEBEu, "KVM_GET_NESTED_STATE");
_Static_assert(KVM_SET_NESTED_STATE == 0x4080AEBFu, "KVM_SET_NESTED_STATE");

#define MEM_SIZE (64u * 1024u)
#define CODE_ADDR 0x1000u
#define MAX_VCPUS 64
#define MAX_REASON 64 // exit reasons below this are counted by number; the rest together
#define NESTED_BUF (16u * 1024u)

// Real mode, 16-bit code. The VMM preloads ecx = writes, dx = port, al = 'a', so the code
// does not depend on the options and N can exceed 16 bits.
static const uint8_t guest_code[] = {
	0x66, 0x85, 0xc9, // 0x00: test ecx, ecx
	0x74, 0x05,       // 0x03: jz   hlt (0x0a)     -- --writes 0
	0xee,             // 0x05: out  dx, al
	0x66, 0x49,       // 0x06: dec  ecx
	0x75, 0xfb,       // 0x08: jnz  0x05
	0xf4,             // 0x0a: hlt
	0xeb, 0xfd,       // 0x0b: jmp  0x0a            -- never reached: HLT stops the vCPU
};

struct vcpu {
	int id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	uint64_t io_exits;
	uint64_t io_unexpected; // an IO exit on another port or direction: a launcher bug
	uint64_t hlt_exits;
	uint64_t other[MAX_REASON + 1];
	char error[160]; // first failure of this vCPU, empty when it halted cleanly
};

static struct {
	const char *kvm_path;
	uint64_t writes;
	unsigned vcpus;
	unsigned port;
	uint64_t hold_ms;
	bool nested_state;
	bool wait_start;
} opt = { "/dev/kvm", 1000, 1, 0x3f8, 0, false, false };

static struct vcpu vcpus[MAX_VCPUS];
static size_t run_size;
static pthread_mutex_t go_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cond = PTHREAD_COND_INITIALIZER;
static bool go_flag;

static const char *exit_name(unsigned r)
{
	static const char *const names[] = {
		[KVM_EXIT_UNKNOWN] = "unknown", [KVM_EXIT_EXCEPTION] = "exception",
		[KVM_EXIT_IO] = "io", [KVM_EXIT_HYPERCALL] = "hypercall",
		[KVM_EXIT_DEBUG] = "debug", [KVM_EXIT_HLT] = "hlt",
		[KVM_EXIT_MMIO] = "mmio", [KVM_EXIT_IRQ_WINDOW_OPEN] = "irq_window_open",
		[KVM_EXIT_SHUTDOWN] = "shutdown", [KVM_EXIT_FAIL_ENTRY] = "fail_entry",
		[KVM_EXIT_INTR] = "intr", [KVM_EXIT_SET_TPR] = "set_tpr",
		[KVM_EXIT_TPR_ACCESS] = "tpr_access", [KVM_EXIT_NMI] = "nmi",
		[KVM_EXIT_INTERNAL_ERROR] = "internal_error", [KVM_EXIT_SYSTEM_EVENT] = "system_event",
		[KVM_EXIT_IOAPIC_EOI] = "ioapic_eoi", [KVM_EXIT_HYPERV] = "hyperv",
		[KVM_EXIT_X86_RDMSR] = "x86_rdmsr", [KVM_EXIT_X86_WRMSR] = "x86_wrmsr",
		[KVM_EXIT_DIRTY_RING_FULL] = "dirty_ring_full", [KVM_EXIT_X86_BUS_LOCK] = "x86_bus_lock",
		[KVM_EXIT_NOTIFY] = "notify",
	};
	return r < sizeof(names) / sizeof(names[0]) ? names[r] : NULL;
}

// Exits after which the guest cannot make progress: stop the vCPU and fail the run.
static bool exit_is_fatal(unsigned r)
{
	return r == KVM_EXIT_UNKNOWN || r == KVM_EXIT_EXCEPTION || r == KVM_EXIT_SHUTDOWN ||
	       r == KVM_EXIT_FAIL_ENTRY || r == KVM_EXIT_INTERNAL_ERROR;
}

static void usage(FILE *f)
{
	fputs("usage: kvm-guest [-name guest=NAME[,debug-threads=on]] [--writes N] [--vcpus K]\n"
	      "                 [--port P] [--hold-ms MS] [--nested-state] [--wait-start] [--kvm PATH]\n",
	      f);
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
		char key[32];
		// --key=value as well as --key value
		const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
		if (eq && (size_t)(eq - a) < sizeof(key)) {
			memcpy(key, a, (size_t)(eq - a));
			key[eq - a] = 0;
			a = key;
			val = eq + 1;
		}
		bool takes_value = !strcmp(a, "-name") || !strcmp(a, "--name") || !strcmp(a, "--writes") ||
				   !strcmp(a, "--vcpus") || !strcmp(a, "--port") || !strcmp(a, "--hold-ms") ||
				   !strcmp(a, "--kvm");
		if (takes_value && !val) {
			if (i + 1 >= argc)
				die(2, "%s needs a value", a);
			val = argv[++i];
		} else if (!takes_value && val) {
			die(2, "%s takes no value", a);
		}
		if (!strcmp(a, "-name") || !strcmp(a, "--name"))
			; // only for /proc/PID/cmdline
		else if (!strcmp(a, "--writes"))
			opt.writes = parse_u64(a, val, UINT32_MAX); // the guest counts in ecx
		else if (!strcmp(a, "--vcpus"))
			opt.vcpus = (unsigned)parse_u64(a, val, MAX_VCPUS);
		else if (!strcmp(a, "--port"))
			opt.port = (unsigned)parse_u64(a, val, 0xffff);
		else if (!strcmp(a, "--hold-ms"))
			opt.hold_ms = parse_u64(a, val, 24ull * 3600 * 1000);
		else if (!strcmp(a, "--kvm"))
			opt.kvm_path = val;
		else if (!strcmp(a, "--nested-state"))
			opt.nested_state = true;
		else if (!strcmp(a, "--wait-start"))
			opt.wait_start = true;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		} else {
			die(2, "unknown argument '%s' (see --help)", argv[i]);
		}
	}
	if (opt.vcpus == 0)
		die(2, "--vcpus: must be at least 1");
}

static void *vcpu_main(void *p)
{
	struct vcpu *v = p;

	pthread_mutex_lock(&go_lock);
	while (!go_flag)
		pthread_cond_wait(&go_cond, &go_lock);
	pthread_mutex_unlock(&go_lock);

	// A guest that loops on exits we do not expect must still end.
	uint64_t budget = opt.writes + 100000;
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) == -1) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			snprintf(v->error, sizeof(v->error), "vCPU %d: KVM_RUN: %s", v->id, strerror(errno));
			return NULL;
		}
		unsigned r = v->run->exit_reason;
		if (r == KVM_EXIT_IO) {
			v->io_exits++;
			if (v->run->io.port != opt.port || v->run->io.direction != KVM_EXIT_IO_OUT)
				v->io_unexpected++;
		} else if (r == KVM_EXIT_HLT) {
			v->hlt_exits++;
			return NULL;
		} else {
			v->other[r < MAX_REASON ? r : MAX_REASON]++;
			if (exit_is_fatal(r)) {
				snprintf(v->error, sizeof(v->error), "vCPU %d: exit %s (%u)", v->id,
					 exit_name(r) ? exit_name(r) : "?", r);
				return NULL;
			}
		}
		if (v->io_exits + v->hlt_exits > budget) {
			snprintf(v->error, sizeof(v->error), "vCPU %d: more than %" PRIu64 " exits", v->id, budget);
			return NULL;
		}
	}
}

static void setup_vcpu(int vmfd, struct vcpu *v, int id)
{
	v->id = id;
	v->fd = ioctl(vmfd, KVM_CREATE_VCPU, (unsigned long)id);
	if (v->fd < 0)
		die(1, "KVM_CREATE_VCPU %d: %s", id, strerror(errno));
	v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED)
		die(1, "mmap kvm_run: %s", strerror(errno));

	struct kvm_sregs sregs;
	if (xioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		die(1, "KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (xioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
		die(1, "KVM_SET_SREGS: %s", strerror(errno));

	struct kvm_regs regs = {
		.rip = CODE_ADDR,
		.rflags = 0x2, // bit 1 is reserved and must be set
		.rcx = opt.writes,
		.rdx = opt.port,
		.rax = 'a',
	};
	if (xioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		die(1, "KVM_SET_REGS: %s", strerror(errno));
}

static void print_call(const char *key, int ret, int err)
{
	printf("\"%s\":{\"ret\":%d,", key, ret);
	if (ret < 0)
		printf("\"errno\":\"%s\",\"errno_num\":%d}", strerrorname_np(err) ? strerrorname_np(err) : "?", err);
	else
		printf("\"errno\":null,\"errno_num\":0}");
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);

	int kvm = open(opt.kvm_path, O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die(1, "open %s: %s", opt.kvm_path, strerror(errno));
	int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		die(1, "%s: KVM API version %d, want %d", opt.kvm_path, api, KVM_API_VERSION);
	int cap_nested = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_NESTED_STATE);
	if (cap_nested < 0)
		cap_nested = 0;
	int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0)
		die(1, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	run_size = (size_t)mmap_size;

	int vmfd;
	do
		vmfd = ioctl(kvm, KVM_CREATE_VM, 0ul);
	while (vmfd < 0 && errno == EINTR);
	if (vmfd < 0)
		die(1, "KVM_CREATE_VM: %s", strerror(errno));

	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die(1, "mmap guest memory: %s", strerror(errno));
	memcpy(mem + CODE_ADDR, guest_code, sizeof(guest_code));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = 0,
		.memory_size = MEM_SIZE,
		.userspace_addr = (uintptr_t)mem,
	};
	if (xioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die(1, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

	for (unsigned i = 0; i < opt.vcpus; i++)
		setup_vcpu(vmfd, &vcpus[i], (int)i);
	for (unsigned i = 0; i < opt.vcpus; i++) {
		int e = pthread_create(&vcpus[i].thread, NULL, vcpu_main, &vcpus[i]);
		if (e)
			die(1, "pthread_create: %s", strerror(e));
		// Named here, not in the thread, so the names are there before the ready line.
		char name[16];
		snprintf(name, sizeof(name), "CPU %u/KVM", i);
		pthread_setname_np(vcpus[i].thread, name);
	}

	if (opt.wait_start) {
		printf("{\"ready\":true,\"pid\":%d,\"vcpus\":%u}\n", getpid(), opt.vcpus);
		fflush(stdout);
		char c;
		ssize_t n;
		do
			n = read(STDIN_FILENO, &c, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			die(1, "--wait-start: stdin closed before the start byte");
	}

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&go_lock);
	go_flag = true;
	pthread_cond_broadcast(&go_cond);
	pthread_mutex_unlock(&go_lock);
	for (unsigned i = 0; i < opt.vcpus; i++)
		pthread_join(vcpus[i].thread, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);

	int get_ret = 0, get_err = 0, set_ret = 0, set_err = 0;
	struct kvm_nested_state *ns = NULL;
	if (opt.nested_state) {
		ns = aligned_alloc(64, NESTED_BUF);
		if (!ns)
			die(1, "out of memory");
		memset(ns, 0, NESTED_BUF);
		ns->size = NESTED_BUF;
		get_ret = xioctl(vcpus[0].fd, KVM_GET_NESTED_STATE, ns);
		get_err = get_ret < 0 ? errno : 0;
		struct kvm_nested_state zero;
		memset(&zero, 0, sizeof(zero));
		set_ret = xioctl(vcpus[0].fd, KVM_SET_NESTED_STATE, &zero);
		set_err = set_ret < 0 ? errno : 0;
	}

	uint64_t io = 0, hlt = 0, unexpected = 0, other[MAX_REASON + 1] = { 0 };
	const char *error = NULL;
	for (unsigned i = 0; i < opt.vcpus; i++) {
		io += vcpus[i].io_exits;
		hlt += vcpus[i].hlt_exits;
		unexpected += vcpus[i].io_unexpected;
		for (unsigned r = 0; r <= MAX_REASON; r++)
			other[r] += vcpus[i].other[r];
		if (!error && vcpus[i].error[0])
			error = vcpus[i].error;
	}

	printf("{\"pid\":%d,\"vcpus\":%u,\"writes\":%" PRIu64 ",\"port\":%u,\"io_exits\":%" PRIu64
	       ",\"hlt_exits\":%" PRIu64 ",\"other_exits\":{",
	       getpid(), opt.vcpus, opt.writes, opt.port, io, hlt);
	const char *sep = "";
	if (unexpected) {
		printf("\"io_unexpected\":%" PRIu64, unexpected);
		sep = ",";
	}
	for (unsigned r = 0; r <= MAX_REASON; r++) {
		if (!other[r])
			continue;
		if (r == MAX_REASON)
			printf("%s\"reason_ge_%u\":%" PRIu64, sep, MAX_REASON, other[r]);
		else if (exit_name(r))
			printf("%s\"%s\":%" PRIu64, sep, exit_name(r), other[r]);
		else
			printf("%s\"reason_%u\":%" PRIu64, sep, r, other[r]);
		sep = ",";
	}
	printf("},\"per_vcpu\":[");
	for (unsigned i = 0; i < opt.vcpus; i++)
		printf("%s{\"io_exits\":%" PRIu64 ",\"hlt_exits\":%" PRIu64 "}", i ? "," : "", vcpus[i].io_exits,
		       vcpus[i].hlt_exits);
	printf("],\"run_ns\":%" PRId64 ",\"cap_nested_state\":%d",
	       (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec), cap_nested);
	if (opt.nested_state) {
		printf(",\"nested_state\":{");
		print_call("get", get_ret, get_err);
		if (get_ret >= 0)
			printf(",\"get_state\":{\"flags\":%u,\"format\":%u,\"size\":%u}", ns->flags, ns->format, ns->size);
		printf(",");
		print_call("set", set_ret, set_err);
		printf("}");
	}
	printf("}\n");
	fflush(stdout);
	free(ns);

	if (error)
		die(1, "%s", error);

	// The VM (and its vCPU fds) stays alive for --hold-ms after the result line.
	struct timespec hold = { (time_t)(opt.hold_ms / 1000), (long)(opt.hold_ms % 1000) * 1000000 };
	while (nanosleep(&hold, &hold) == -1 && errno == EINTR)
		;
	return 0;
}
