// kvm-irq-guest: a /dev/kvm guest with an in-kernel irqchip (KVM_CREATE_IRQCHIP), into
// which this VMM injects interrupts the way a device model does, for the kvm_irq probes.
//
// The main thread pulses a GSI N times with KVM_IRQ_LINE (level 1, then 0: an edge) and
// sends M MSIs with KVM_SIGNAL_MSI, waiting after each for the guest to take it, so the
// counts it prints are exact and nothing coalesces:
//   - the GSI (default 4) goes through the default routing to the 8259 PIC and the IOAPIC
//     pin of the same number (arch/x86/kvm/irq.c, v6.18). The VMM programs the master PIC
//     to vector base 0x20 with only that pin unmasked, and the LAPIC's LVT0 to ExtINT, so
//     the PIC's interrupt reaches vCPU 0 as vector 0x20+pin; the IOAPIC pin stays masked
//     (its reset state), so each edge is seen by the IOAPIC but not delivered by it;
//   - each MSI (address 0xfee00000, fixed, edge, vector 0x30) goes to vCPU 0's LAPIC.
// The guest (real mode) does `sti; hlt` in a loop. Its handlers acknowledge the interrupt
// (PIC: EOI to port 0x20; LAPIC: EOI register write, the LAPIC page being relocated below
// 1 MiB so real mode can reach it) and report the vector with an `out` to the VMM's port,
// which is how this VMM knows the interrupt was delivered.
//
// stdout: with --wait-start, one ready line ({"ready":true,...}) once the VM exists; one
// result line (JSON) when done, printed before --hold-ms so a test can scrape an agent
// while the VM still exists. When the kernel refuses the irqchip the result line says so
// ("irqchip":false with the errno) and the exit status is 0: the caller decides.
// Failures: one line on stderr, exit 1 (usage errors exit 2).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
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

#define PROG "kvm-irq-guest"
#include "kvm-util.h"

// The ioctl numbers families/kvm_irq/kvm_irq.bpf.c filters on; the headers must agree.
_Static_assert(KVM_IRQ_LINE == 0x4008AE61u, "KVM_IRQ_LINE");
_Static_assert(KVM_IRQ_LINE_STATUS == 0xC008AE67u, "KVM_IRQ_LINE_STATUS");
_Static_assert(KVM_SIGNAL_MSI == 0x4020AEA5u, "KVM_SIGNAL_MSI");
_Static_assert(KVM_CREATE_VM == 0xAE01u, "KVM_CREATE_VM");

#define MEM_SIZE (64u * 1024u)
#define CODE_ADDR 0x1000u
#define MSI_HANDLER 0x1100u
#define PIC_HANDLER 0x1200u
#define STACK_TOP 0x8000u
#define APIC_BASE 0xF0000u // below 1 MiB and outside guest RAM: LAPIC MMIO in real mode
#define PIC_BASE 0x20u
#define MSI_VECTOR 0x30u
#define WAIT_MS 2000

static const uint8_t idle_code[] = {
	0xfb,       // sti
	0xf4,       // hlt
	0xeb, 0xfd, // jmp hlt
};

static const uint8_t msi_handler[] = {
	0x1e,                                     // push ds
	0xb8, APIC_BASE >> 4 & 0xff, APIC_BASE >> 12, // mov ax, APIC_BASE >> 4
	0x8e, 0xd8,                               // mov ds, ax
	0x66, 0xc7, 0x06, 0xb0, 0x00, 0, 0, 0, 0, // mov dword [0xb0], 0   (LAPIC EOI)
	0x1f,                                     // pop ds
	0xb0, MSI_VECTOR,                         // mov al, MSI_VECTOR
	0xee,                                     // out dx, al            (report to the VMM)
	0xcf,                                     // iret
};

static uint8_t pic_handler[] = {
	0xb0, 0x20,       // mov al, 0x20
	0xe6, 0x20,       // out 0x20, al   (non-specific EOI to the master PIC, in-kernel)
	0xb0, 0x00,       // mov al, vector (patched)
	0xee,             // out dx, al
	0xcf,             // iret
};

static struct {
	const char *kvm_path;
	uint64_t irq_line;
	unsigned gsi;
	uint64_t msi;
	unsigned port;
	uint64_t hold_ms;
	bool wait_start;
} opt = { "/dev/kvm", 10, 4, 10, 0x3f8, 0, false };

static int vcpu_fd;
static struct kvm_run *run;
static sem_t delivered;
static volatile int stop;
static uint64_t got_pic, got_msi, got_other, other_exits;
static char vcpu_error[160];

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		bool takes_value = !strcmp(a, "-name") || !strcmp(a, "--irq-line") || !strcmp(a, "--gsi") ||
				   !strcmp(a, "--msi") || !strcmp(a, "--port") || !strcmp(a, "--hold-ms") ||
				   !strcmp(a, "--kvm");
		const char *val = NULL;
		if (takes_value) {
			if (i + 1 >= argc)
				die(2, "%s needs a value", a);
			val = argv[++i];
		}
		if (!strcmp(a, "-name"))
			; // only for /proc/PID/cmdline (the agent's VM name)
		else if (!strcmp(a, "--irq-line"))
			opt.irq_line = parse_u64(a, val, 1000000);
		else if (!strcmp(a, "--gsi"))
			opt.gsi = (unsigned)parse_u64(a, val, 7); // master PIC pins; 2 is the cascade
		else if (!strcmp(a, "--msi"))
			opt.msi = parse_u64(a, val, 1000000);
		else if (!strcmp(a, "--port"))
			opt.port = (unsigned)parse_u64(a, val, 0xffff);
		else if (!strcmp(a, "--hold-ms"))
			opt.hold_ms = parse_u64(a, val, 24ull * 3600 * 1000);
		else if (!strcmp(a, "--kvm"))
			opt.kvm_path = val;
		else if (!strcmp(a, "--wait-start"))
			opt.wait_start = true;
		else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			puts("usage: kvm-irq-guest [-name guest=NAME] [--irq-line N] [--gsi G] [--msi M] [--port P]\n"
			     "                     [--hold-ms MS] [--wait-start] [--kvm PATH]");
			exit(0);
		} else
			die(2, "unknown argument '%s' (see --help)", a);
	}
	if (opt.gsi == 2)
		die(2, "--gsi: 2 is the PIC cascade");
}

static void on_signal(int sig)
{
	(void)sig; // only interrupts KVM_RUN
}

static void *vcpu_main(void *p)
{
	(void)p;
	for (;;) {
		if (ioctl(vcpu_fd, KVM_RUN, 0) == -1) {
			if (errno == EINTR || errno == EAGAIN) {
				if (stop)
					return NULL;
				continue;
			}
			snprintf(vcpu_error, sizeof(vcpu_error), "KVM_RUN: %s", strerror(errno));
			break;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == opt.port && run->io.direction == KVM_EXIT_IO_OUT) {
			uint8_t v = ((uint8_t *)run)[run->io.data_offset];
			if (v == PIC_BASE + opt.gsi)
				got_pic++;
			else if (v == MSI_VECTOR)
				got_msi++;
			else
				got_other++;
			sem_post(&delivered);
			continue;
		}
		if (run->exit_reason == KVM_EXIT_INTR && stop)
			return NULL;
		other_exits++;
		if (run->exit_reason != KVM_EXIT_INTR) {
			snprintf(vcpu_error, sizeof(vcpu_error), "unexpected exit reason %u", run->exit_reason);
			break;
		}
	}
	sem_post(&delivered); // unblock the injector
	return NULL;
}

/** Waits for the guest to report one interrupt; false after WAIT_MS. */
static bool wait_delivery(void)
{
	struct timespec t;
	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += WAIT_MS / 1000;
	int r;
	do
		r = sem_timedwait(&delivered, &t);
	while (r == -1 && errno == EINTR);
	return r == 0;
}

static void setup_guest(int vmfd)
{
	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die(1, "mmap guest memory: %s", strerror(errno));
	pic_handler[5] = (uint8_t)(PIC_BASE + opt.gsi);
	memcpy(mem + CODE_ADDR, idle_code, sizeof(idle_code));
	memcpy(mem + MSI_HANDLER, msi_handler, sizeof(msi_handler));
	memcpy(mem + PIC_HANDLER, pic_handler, sizeof(pic_handler));
	// Real-mode IVT: offset, segment per vector.
	uint16_t *ivt = (uint16_t *)mem;
	ivt[MSI_VECTOR * 2] = MSI_HANDLER;
	ivt[(PIC_BASE + opt.gsi) * 2] = PIC_HANDLER;
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem,
	};
	if (xioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die(1, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

	vcpu_fd = ioctl(vmfd, KVM_CREATE_VCPU, 0ul);
	if (vcpu_fd < 0)
		die(1, "KVM_CREATE_VCPU: %s", strerror(errno));

	struct kvm_sregs sregs;
	if (xioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0)
		die(1, "KVM_GET_SREGS: %s", strerror(errno));
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ss.base = 0;
	sregs.ss.selector = 0;
	sregs.apic_base = APIC_BASE | 0x900; // enabled (bit 11), BSP (bit 8)
	if (xioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0)
		die(1, "KVM_SET_SREGS (LAPIC at 0x%x): %s", APIC_BASE, strerror(errno));
	struct kvm_regs regs = { .rip = CODE_ADDR, .rflags = 0x2, .rsp = STACK_TOP, .rdx = opt.port };
	if (xioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0)
		die(1, "KVM_SET_REGS: %s", strerror(errno));

	// LAPIC: software-enabled (SVR bit 8, spurious vector 0xff) so MSIs are accepted, LVT0
	// ExtINT and unmasked so the PIC's output reaches the vCPU (kvm_apic_accept_pic_intr).
	struct kvm_lapic_state lapic;
	if (xioctl(vcpu_fd, KVM_GET_LAPIC, &lapic) < 0)
		die(1, "KVM_GET_LAPIC: %s", strerror(errno));
	*(uint32_t *)&lapic.regs[0xf0] = 0x1ff;
	*(uint32_t *)&lapic.regs[0x350] = 0x700;
	if (xioctl(vcpu_fd, KVM_SET_LAPIC, &lapic) < 0)
		die(1, "KVM_SET_LAPIC: %s", strerror(errno));

	// Master PIC: initialised (as ICW1-4 would), vector base 0x20, only our pin unmasked.
	struct kvm_irqchip chip = { .chip_id = KVM_IRQCHIP_PIC_MASTER };
	if (xioctl(vmfd, KVM_GET_IRQCHIP, &chip) < 0)
		die(1, "KVM_GET_IRQCHIP: %s", strerror(errno));
	chip.chip.pic.irq_base = PIC_BASE;
	chip.chip.pic.imr = (uint8_t)~(1u << opt.gsi);
	chip.chip.pic.init_state = 0;
	if (xioctl(vmfd, KVM_SET_IRQCHIP, &chip) < 0)
		die(1, "KVM_SET_IRQCHIP: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	int kvm = open(opt.kvm_path, O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die(1, "open %s: %s", opt.kvm_path, strerror(errno));
	int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0)
		die(1, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	int vmfd;
	do
		vmfd = ioctl(kvm, KVM_CREATE_VM, 0ul);
	while (vmfd < 0 && errno == EINTR);
	if (vmfd < 0)
		die(1, "KVM_CREATE_VM: %s", strerror(errno));
	if (xioctl(vmfd, KVM_CREATE_IRQCHIP, NULL) < 0) {
		int e = errno;
		printf("{\"pid\":%d,\"irqchip\":false,\"irqchip_errno\":\"%s\"}\n", getpid(),
		       strerrorname_np(e) ? strerrorname_np(e) : "?");
		return 0;
	}
	setup_guest(vmfd);
	run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
	if (run == MAP_FAILED)
		die(1, "mmap kvm_run: %s", strerror(errno));
	sem_init(&delivered, 0, 0);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGUSR1, &sa, NULL);

	if (opt.wait_start) {
		printf("{\"ready\":true,\"pid\":%d}\n", getpid());
		fflush(stdout);
		char c;
		ssize_t n;
		do
			n = read(STDIN_FILENO, &c, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			die(1, "--wait-start: stdin closed before the start byte");
	}

	pthread_t thread;
	int e = pthread_create(&thread, NULL, vcpu_main, NULL);
	if (e)
		die(1, "pthread_create: %s", strerror(e));
	pthread_setname_np(thread, "CPU 0/KVM");

	// Once one interrupt is not delivered in time, stop waiting for the others: the counts
	// of what was injected stay exact, only the delivered ones are short.
	bool delivering = true;
	uint64_t line_calls = 0, line_errors = 0, msi_calls = 0, msi_errors = 0, undelivered = 0;
	for (uint64_t i = 0; i < opt.irq_line; i++) {
		for (int level = 1; level >= 0; level--) {
			struct kvm_irq_level irq = { .irq = opt.gsi, .level = (uint32_t)level };
			line_calls++;
			if (xioctl(vmfd, KVM_IRQ_LINE, &irq) < 0)
				line_errors++;
		}
		if (delivering && !(delivering = wait_delivery()))
			undelivered++;
		else if (!delivering)
			undelivered++;
	}
	for (uint64_t i = 0; i < opt.msi; i++) {
		struct kvm_msi msi = { .address_lo = 0xfee00000u, .data = MSI_VECTOR };
		msi_calls++;
		if (xioctl(vmfd, KVM_SIGNAL_MSI, &msi) < 0)
			msi_errors++;
		if (delivering && !(delivering = wait_delivery()))
			undelivered++;
		else if (!delivering)
			undelivered++;
	}

	stop = 1;
	run->immediate_exit = 1;
	pthread_kill(thread, SIGUSR1);
	pthread_join(thread, NULL);

	printf("{\"pid\":%d,\"irqchip\":true,\"gsi\":%u,\"irq_line_calls\":%" PRIu64 ",\"irq_line_errors\":%" PRIu64
	       ",\"msi_calls\":%" PRIu64 ",\"msi_errors\":%" PRIu64 ",\"delivered\":{\"pic\":%" PRIu64
	       ",\"msi\":%" PRIu64 ",\"other\":%" PRIu64 "},\"undelivered\":%" PRIu64 ",\"other_exits\":%" PRIu64
	       ",\"vcpu_error\":%s%s%s}\n",
	       getpid(), opt.gsi, line_calls, line_errors, msi_calls, msi_errors, got_pic, got_msi, got_other,
	       undelivered, other_exits, vcpu_error[0] ? "\"" : "", vcpu_error[0] ? vcpu_error : "null",
	       vcpu_error[0] ? "\"" : "");
	fflush(stdout);

	struct timespec hold = { (time_t)(opt.hold_ms / 1000), (long)(opt.hold_ms % 1000) * 1000000 };
	while (nanosleep(&hold, &hold) == -1 && errno == EINTR)
		;
	return 0;
}
