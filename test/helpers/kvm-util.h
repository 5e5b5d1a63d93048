// What the /dev/kvm test guests share: one-line errors with an exit code, strict number
// parsing, ioctls retried on EINTR. The includer defines PROG, its name in messages.
#ifndef KVM_UTIL_H
#define KVM_UTIL_H
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>

__attribute__((noreturn, format(printf, 2, 3))) static void die(int code, const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

static uint64_t parse_u64(const char *name, const char *s, uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-' || v > max)
		die(2, "%s: invalid value '%s' (0..%" PRIu64 ")", name, s, max);
	return v;
}

static int xioctl(int fd, unsigned long req, void *arg)
{
	int r;
	do
		r = ioctl(fd, req, arg);
	while (r == -1 && errno == EINTR);
	return r;
}
#endif
