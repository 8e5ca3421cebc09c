/* The sandbox's vDSO: clock_gettime, gettimeofday and time, read without the sentry.
 *
 * A sandbox's clocks are the host's plus offsets (snapbox/kernel/time.py: monotonic time
 * goes on from where it was across a restore; realtime is the sandbox's own once it set
 * it). The sentry publishes the offsets in the vvar page, mapped read-only just below this
 * image (snapbox/kernel/vdso.py); the host clock is read with a host clock_gettime that the
 * stubs' seccomp filter lets through, for CLOCK_REALTIME and CLOCK_MONOTONIC, only with
 * VDSO_TAG in its third argument (snapbox/platform/stub.py). Other clocks, and a
 * timezone asked of gettimeofday, are the sentry's to answer: a plain syscall.
 *
 * The vvar page: a sequence number, then two slots of (monotonic offset, realtime offset),
 * in ns. The sentry writes the slot the next sequence number selects, then the number:
 * a reader that saw the number change (the offsets were republished, or the sandbox was
 * checkpointed and restored on another host between its reads) reads again.
 */

typedef long time_t;
struct timespec { time_t tv_sec; long tv_nsec; };
struct timeval { time_t tv_sec; long tv_usec; };

struct vvar {
	unsigned long seq;
	struct { long monotonic; long realtime; } slot[2];
};

extern const volatile struct vvar snapbox_vvar __attribute__((visibility("hidden")));

#define VDSO_TAG 0x736e6170626f7856UL /* VDSO_TAG of snapbox/platform/stub.py */
#define NSEC 1000000000L
#define SYS_gettimeofday 96
#define SYS_time 201
#define SYS_clock_gettime 228

static long host_clock(long clock, struct timespec *ts)
{
	long ret;
	register unsigned long tag asm("rdx") = VDSO_TAG;
	asm volatile("syscall" : "=a"(ret) : "0"((long)SYS_clock_gettime), "D"(clock), "S"(ts), "r"(tag)
		     : "rcx", "r11", "memory");
	return ret;
}

static long trap(long nr, long a, long b)
{
	long ret;
	register unsigned long zero asm("rdx") = 0;
	asm volatile("syscall" : "=a"(ret) : "0"(nr), "D"(a), "S"(b), "r"(zero) : "rcx", "r11", "memory");
	return ret;
}

/* 1: a monotonic clock, 0: a realtime one, -1: one the sentry answers. As
 * snapbox/kernel/time.py: MONOTONIC, MONOTONIC_RAW, MONOTONIC_COARSE, BOOTTIME and
 * BOOTTIME_ALARM are one clock; REALTIME, REALTIME_COARSE, REALTIME_ALARM and TAI another. */
static int kind(int clock)
{
	switch (clock) {
	case 1: case 4: case 6: case 7: case 9:
		return 1;
	case 0: case 5: case 8: case 11:
		return 0;
	}
	return -1;
}

static long sandbox_clock(int monotonic, struct timespec *ts)
{
	for (;;) {
		unsigned long seq = snapbox_vvar.seq;
		asm volatile("" ::: "memory");
		long ret = host_clock(monotonic, ts);
		if (ret)
			return ret;
		long offset = monotonic ? -snapbox_vvar.slot[seq & 1].monotonic : snapbox_vvar.slot[seq & 1].realtime;
		asm volatile("" ::: "memory");
		if (snapbox_vvar.seq != seq)
			continue;
		long ns = ts->tv_nsec + offset % NSEC;
		long sec = ts->tv_sec + offset / NSEC;
		if (ns < 0) {
			ns += NSEC;
			sec--;
		} else if (ns >= NSEC) {
			ns -= NSEC;
			sec++;
		}
		ts->tv_sec = sec;
		ts->tv_nsec = ns;
		return 0;
	}
}

long __vdso_clock_gettime(int clock, struct timespec *ts)
{
	int k = kind(clock);
	if (k < 0)
		return trap(SYS_clock_gettime, clock, (long)ts);
	return sandbox_clock(k, ts);
}

long __vdso_gettimeofday(struct timeval *tv, void *tz)
{
	if (tz)
		return trap(SYS_gettimeofday, (long)tv, (long)tz);
	if (tv) {
		struct timespec ts;
		long ret = sandbox_clock(0, &ts);
		if (ret)
			return ret;
		tv->tv_sec = ts.tv_sec;
		tv->tv_usec = ts.tv_nsec / 1000;
	}
	return 0;
}

time_t __vdso_time(time_t *t)
{
	struct timespec ts;
	if (sandbox_clock(0, &ts))
		return trap(SYS_time, (long)t, 0);
	if (t)
		*t = ts.tv_sec;
	return ts.tv_sec;
}

long clock_gettime(int, struct timespec *) __attribute__((weak, alias("__vdso_clock_gettime")));
long gettimeofday(struct timeval *, void *) __attribute__((weak, alias("__vdso_gettimeofday")));
time_t time(time_t *) __attribute__((weak, alias("__vdso_time")));
