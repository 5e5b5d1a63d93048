/* Workload driver for bench/: compiled at bench time (clang -O2) into a temp dir.
 * Timing happens here, after the process has joined its memory cgroup, so exec and
 * cgroup migration are not part of the measured interval.
 *
 *   hvbench fault <cgroup-dir|-> <mib> <iters>
 *       iters x (mmap anonymous <mib>, write one byte per page, munmap)
 *   hvbench fsync <cgroup-dir|-> <file> <mib> <chunk-kib> <passes>
 *       passes x (write <mib> to <file> from offset 0 in <chunk-kib> writes, fsync after
 *       each); the file is truncated before the first pass and unlinked at the end
 *
 *   hvbench churn <parent-cgroup-dir> <n> <data-dir> <anon-kib> <write-kib>
 *       n x (mkdir a memory cgroup under parent, fork a child into it that touches
 *       <anon-kib> of anonymous memory and writes <write-kib> to a file with fsync, then
 *       unlinks it and exits; rmdir the cgroup): short-lived cgroups for the agent's
 *       cgroup-id decoders
 *   hvbench populate <parent-cgroup-dir> <n> <data-dir> <prefix>
 *       n x (mkdir <parent>/<prefix>-<i>, join it, write one page with fsync, unlink):
 *       leaves n memory cgroups that each saw writeback and an uncharge (the caller removes
 *       them)
 *
 * Prints one JSON line: {"ns":<wall ns>,"cpu_ns":<user+system ns of this process>,"pages":<pages
 * touched or written>}. CPU time leaves out time this process was not running (another
 * tenant on the CPU, I/O waits); wall time includes both. churn adds its children's CPU. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "hvbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static unsigned long long cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void join_cgroup(const char *dir)
{
	char path[4096], pid[32];
	if (strcmp(dir, "-") == 0)
		return;
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		die(path);
	int n = snprintf(pid, sizeof(pid), "%d\n", getpid());
	if (write(fd, pid, n) != n)
		die(path);
	close(fd);
}

static unsigned long long children_cpu_ns(void)
{
	struct rusage ru;
	getrusage(RUSAGE_CHILDREN, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ull +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ull;
}

static void write_fsync(const char *file, size_t len)
{
	static char buf[1 << 16];
	memset(buf, 0x5a, sizeof(buf));
	int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die(file);
	for (size_t off = 0; off < len; off += sizeof(buf)) {
		size_t n = len - off < sizeof(buf) ? len - off : sizeof(buf);
		if (pwrite(fd, buf, n, off) != (ssize_t)n)
			die("pwrite");
	}
	if (fsync(fd))
		die("fsync");
	close(fd);
	unlink(file);
}

/* A child that has been reaped can still pin its cgroup for a moment (the css_set is
 * released asynchronously): retry rmdir on EBUSY. */
static void rmdir_retry(const char *dir)
{
	for (int i = 0; i < 2000; i++) {
		if (rmdir(dir) == 0)
			return;
		if (errno != EBUSY)
			die(dir);
		usleep(500);
	}
	die(dir);
}

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	if (argc >= 5 && strcmp(argv[1], "fault") == 0) {
		join_cgroup(argv[2]);
		size_t len = (size_t)atol(argv[3]) << 20;
		long iters = atol(argv[4]);
		unsigned long long t0 = now_ns(), c0 = cpu_ns();
		for (long i = 0; i < iters; i++) {
			volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (p == MAP_FAILED)
				die("mmap");
			for (size_t off = 0; off < len; off += page)
				p[off] = 1;
			if (munmap((void *)p, len))
				die("munmap");
		}
		unsigned long long ns = now_ns() - t0, cns = cpu_ns() - c0;
		printf("{\"ns\":%llu,\"cpu_ns\":%llu,\"pages\":%llu}\n", ns, cns, (unsigned long long)(len / page) * iters);
		return 0;
	}
	if (argc >= 7 && strcmp(argv[1], "fsync") == 0) {
		join_cgroup(argv[2]);
		const char *file = argv[3];
		size_t len = (size_t)atol(argv[4]) << 20;
		size_t chunk = (size_t)atol(argv[5]) << 10;
		long passes = atol(argv[6]);
		char *buf = malloc(chunk);
		if (!buf)
			die("malloc");
		memset(buf, 0x5a, chunk);
		int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			die(file);
		unsigned long long t0 = now_ns(), c0 = cpu_ns();
		for (long p = 0; p < passes; p++) {
			for (size_t off = 0; off < len; off += chunk) {
				buf[0] = (char)(p + off); /* each pass really dirties the page */
				if (pwrite(fd, buf, chunk, off) != (ssize_t)chunk)
					die("pwrite");
				if (fsync(fd))
					die("fsync");
			}
		}
		unsigned long long ns = now_ns() - t0, cns = cpu_ns() - c0;
		close(fd);
		unlink(file);
		printf("{\"ns\":%llu,\"cpu_ns\":%llu,\"pages\":%llu}\n", ns, cns, (unsigned long long)(len / page) * passes);
		return 0;
	}
	if (argc >= 7 && strcmp(argv[1], "churn") == 0) {
		const char *parent = argv[2];
		long n = atol(argv[3]);
		const char *data = argv[4];
		size_t anon = (size_t)atol(argv[5]) << 10, wlen = (size_t)atol(argv[6]) << 10;
		char dir[4096], file[4096];
		unsigned long long t0 = now_ns(), c0 = cpu_ns() + children_cpu_ns();
		for (long i = 0; i < n; i++) {
			snprintf(dir, sizeof(dir), "%s/churn-%d-%ld", parent, getpid(), i);
			if (mkdir(dir, 0755))
				die(dir);
			pid_t pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0) {
				join_cgroup(dir);
				volatile char *p = mmap(NULL, anon, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				if (p == MAP_FAILED)
					die("mmap");
				for (size_t off = 0; off < anon; off += page)
					p[off] = 1;
				snprintf(file, sizeof(file), "%s/churn-%d.dat", data, getpid());
				write_fsync(file, wlen);
				_exit(0);
			}
			int st;
			if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
				fprintf(stderr, "hvbench: churn child failed\n");
				return 1;
			}
			rmdir_retry(dir);
		}
		unsigned long long ns = now_ns() - t0, cns = cpu_ns() + children_cpu_ns() - c0;
		printf("{\"ns\":%llu,\"cpu_ns\":%llu,\"pages\":%llu}\n", ns, cns, (unsigned long long)(anon + wlen) / page * n);
		return 0;
	}
	if (argc >= 6 && strcmp(argv[1], "populate") == 0) {
		const char *parent = argv[2];
		long n = atol(argv[3]);
		const char *data = argv[4], *prefix = argv[5];
		char dir[4096], file[4096];
		unsigned long long t0 = now_ns(), c0 = cpu_ns();
		for (long i = 0; i < n; i++) {
			snprintf(dir, sizeof(dir), "%s/%s-%ld", parent, prefix, i);
			if (mkdir(dir, 0755) && errno != EEXIST)
				die(dir);
			join_cgroup(dir);
			snprintf(file, sizeof(file), "%s/populate-%d.dat", data, getpid());
			write_fsync(file, page);
		}
		join_cgroup(parent);
		unsigned long long ns = now_ns() - t0, cns = cpu_ns() - c0;
		printf("{\"ns\":%llu,\"cpu_ns\":%llu,\"pages\":%ld}\n", ns, cns, n);
		return 0;
	}
	fprintf(stderr, "usage: hvbench fault <cgroup|-> <mib> <iters> | fsync <cgroup|-> <file> <mib> <chunk-kib> <passes>\n"
			"       | churn <parent> <n> <data-dir> <anon-kib> <write-kib> | populate <parent> <n> <data-dir> <prefix>\n");
	return 2;
}
