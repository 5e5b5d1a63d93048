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
 * Prints one JSON line: {"ns":<wall ns>,"cpu_ns":<user+system ns of this process>,"pages":<pages
 * touched or written>}. CPU time leaves out time this process was not running (another
 * tenant on the CPU, I/O waits); wall time includes both. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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
	fprintf(stderr, "usage: hvbench fault <cgroup|-> <mib> <iters> | fsync <cgroup|-> <file> <mib> <chunk-kib> <passes>\n");
	return 2;
}
