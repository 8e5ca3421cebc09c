"""Time syscalls: clocks, sleeps, interval timers, POSIX timers and timerfd, all on the
Timekeeper's virtual clocks."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.creds import CAP_SYS_TIME, capable
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.eventfiles import TimerFd
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.syscalls import NR, i32, i64, syscall
from snapbox.kernel.timers import SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD_ID, PosixTimer
from snapbox.kernel.time import (
    CLOCK_MONOTONIC,
    CLOCK_MONOTONIC_COARSE,
    CLOCK_PROCESS_CPUTIME_ID,
    CLOCK_REALTIME_COARSE,
    CLOCK_THREAD_CPUTIME_ID,
    MONOTONIC_CLOCKS,
    REALTIME_CLOCKS,
)

_TIMESPEC = struct.Struct("<qq")
NSEC = 1_000_000_000
TIMER_ABSTIME = 1


def clock_now(t, clock: int) -> int:
    """The reading of `clock` in ns, as the sandbox sees it."""
    tk = t.kernel.timekeeper
    if clock in MONOTONIC_CLOCKS:
        return tk.monotonic_ns()
    if clock in REALTIME_CLOCKS:
        return tk.realtime_ns()
    if clock == CLOCK_THREAD_CPUTIME_ID:
        return t.kernel.cpu_time_ns(t)
    if clock == CLOCK_PROCESS_CPUTIME_ID:
        return sum(t.kernel.cpu_time_ns(x) for x in t.tg.tasks)
    if clock < 0:
        return _cpu_clock(t, clock)
    raise SyscallError(errno.EINVAL)


def _cpu_clock(t, clock: int) -> int:
    """A CPU-time clock of another thread or process (clock_getcpuclockid(3),
    pthread_getcpuclockid(3)): ~id << 3, | 4 for a thread, | 0-2 for PROF, VIRT, SCHED
    (all the CPU time here). A thread's only from its own process, as on Linux."""
    ident, kind = ~(clock >> 3), clock & 3
    if kind == 3:
        raise SyscallError(errno.EINVAL)  # a clock of a file descriptor (posix clocks): none here
    pidns = t.kernel.tasks.pidns
    if clock & 4:
        task = t if ident == 0 else pidns.tasks.get(ident)
        if task is None or task.tg is not t.tg:
            raise SyscallError(errno.EINVAL)
        return t.kernel.cpu_time_ns(task)
    tg = t.tg if ident == 0 else pidns.groups.get(ident)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.EINVAL)
    return sum(t.kernel.cpu_time_ns(x) for x in tg.tasks)


def read_timespec(t, addr: int) -> int:
    sec, nsec = _TIMESPEC.unpack(t.mm.read(addr, _TIMESPEC.size))
    if sec < 0 or not 0 <= nsec < NSEC:
        raise SyscallError(errno.EINVAL)
    return sec * NSEC + nsec


def write_timespec(t, addr: int, ns: int) -> None:
    t.mm.write(addr, _TIMESPEC.pack(*divmod(ns, NSEC)))


@syscall(NR.clock_gettime)
def clock_gettime(t, clock, tp):
    write_timespec(t, tp, clock_now(t, i32(clock)))
    return 0


@syscall(NR.clock_getres)
def clock_getres(t, clock, res):
    clock = i32(clock)
    clock_now(t, clock)  # EINVAL for an unknown clock
    if res:
        coarse = clock in (CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE)
        write_timespec(t, res, 4_000_000 if coarse else 1)
    return 0


@syscall(NR.gettimeofday)
def gettimeofday(t, tv, tz):
    if tv:
        sec, nsec = divmod(t.kernel.timekeeper.realtime_ns(), NSEC)
        t.mm.write(tv, struct.pack("<qq", sec, nsec // 1000))
    if tz:
        t.mm.write(tz, struct.pack("<ii", *t.kernel.timekeeper.timezone))
    return 0


@syscall(NR.clock_settime)
def clock_settime(t, clock, tp):
    """Only the realtime clock is set, the sandbox's own (CAP_SYS_TIME)."""
    clock = i32(clock)
    ns = read_timespec(t, tp)
    if clock != 0:  # CLOCK_REALTIME
        clock_now(t, clock)  # EINVAL for a clock there is not
        raise SyscallError(errno.EINVAL)  # one that cannot be set
    if not capable(t.tg, CAP_SYS_TIME):
        raise SyscallError(errno.EPERM)
    t.kernel.timekeeper.set_realtime(ns)
    return 0


@syscall(NR.settimeofday)
def settimeofday(t, tv, tz):
    ns = zone = None
    if tv:
        sec, usec = struct.unpack("<qq", t.mm.read(tv, 16))
        if sec < 0 or not 0 <= usec < 1_000_000:
            raise SyscallError(errno.EINVAL)
        ns = sec * NSEC + usec * 1000
    if tz:
        zone = struct.unpack("<ii", t.mm.read(tz, 8))
        if not -15 * 60 <= zone[0] <= 15 * 60:
            raise SyscallError(errno.EINVAL)
    if not capable(t.tg, CAP_SYS_TIME):
        raise SyscallError(errno.EPERM)
    if zone is not None:
        t.kernel.timekeeper.timezone = zone
    if ns is not None:
        t.kernel.timekeeper.set_realtime(ns)
    return 0


@syscall(NR.time)
def time_(t, tloc):
    now = t.kernel.timekeeper.realtime_ns() // NSEC
    if tloc:
        t.mm.write(tloc, struct.pack("<q", now))
    return now


def sleep(t, nr: int, clock: int, request: int, absolute: bool) -> int:
    """Sleep until `request` on `clock`; restartable: the deadline lives in t.restart.

    A relative sleep is an interval on the monotonic clock whatever `clock` is: setting
    the realtime clock has no effect on it (clock_nanosleep(2)), and neither does the
    wall-clock time a checkpoint spends on disk.
    """
    if not absolute:
        clock = CLOCK_MONOTONIC
    deadline = t.restart_value(nr)
    if deadline is None:
        deadline = request if absolute else clock_now(t, clock) + request
        t.set_restart(nr, deadline)
    left = deadline - clock_now(t, clock)
    if left <= 0:
        return 0
    raise WouldBlock(deadline=t.kernel.timekeeper.monotonic_ns() + left)


@syscall(NR.nanosleep)
def nanosleep(t, req, rem):
    return sleep(t, NR.nanosleep, CLOCK_MONOTONIC, read_timespec(t, req), False)


@syscall(NR.clock_nanosleep)
def clock_nanosleep(t, clock, flags, req, rem):
    clock = i32(clock)
    if clock == CLOCK_THREAD_CPUTIME_ID:
        raise SyscallError(errno.EINVAL)
    if clock not in MONOTONIC_CLOCKS | REALTIME_CLOCKS:
        raise SyscallError(errno.EINVAL if clock != CLOCK_PROCESS_CPUTIME_ID else errno.ENOTSUP)
    return sleep(t, NR.clock_nanosleep, clock, read_timespec(t, req), bool(i64(flags) & TIMER_ABSTIME))


ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF = 0, 1, 2
TICK_NS = 4_000_000  # a scheduler tick at Linux's usual CONFIG_HZ=250
_ITIMERVAL = struct.Struct("<qqqq")  # it_interval (sec, usec), it_value (sec, usec)


def _itimer_now(t, which: int = ITIMER_REAL) -> tuple[int, int]:
    """An interval timer as (time left, interval) in ns."""
    if which != ITIMER_REAL:
        at, interval = t.tg.itimer_cpu.get(which, (0, 0))
        return (max(1, at - t.kernel.process_cpu_ns(t.tg)) if at else 0), interval
    deadline, interval = t.tg.itimer_real
    left = max(0, deadline - t.kernel.timekeeper.monotonic_ns()) if deadline else 0
    return left, interval


def _pack_itimer(left: int, interval: int) -> bytes:
    return _ITIMERVAL.pack(interval // NSEC, interval % NSEC // 1000, left // NSEC, left % NSEC // 1000)


def _set_itimer(t, value: int, interval: int, which: int = ITIMER_REAL) -> None:
    if which != ITIMER_REAL:
        if value:  # a tick later, as Linux's set_cpu_itimer, so that it never fires early
            t.tg.itimer_cpu[which] = (t.kernel.process_cpu_ns(t.tg) + value + TICK_NS, interval)
        else:
            t.tg.itimer_cpu.pop(which, None)
        t.kernel.arm_cpu_itimers(t.tg)
        return
    now = t.kernel.timekeeper.monotonic_ns()
    t.tg.itimer_real = (now + value, interval) if value else (0, 0)
    t.kernel.arm_itimer(t.tg)


@syscall(NR.setitimer)
def setitimer(t, which, new, old):
    which = i32(which)
    if which not in (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF):
        raise SyscallError(errno.EINVAL)
    left, interval = _itimer_now(t, which)
    if new:
        isec, iusec, vsec, vusec = _ITIMERVAL.unpack(t.mm.read(new, _ITIMERVAL.size))
        if min(isec, vsec) < 0 or not (0 <= iusec < 10**6 and 0 <= vusec < 10**6):
            raise SyscallError(errno.EINVAL)
        _set_itimer(t, vsec * NSEC + vusec * 1000, isec * NSEC + iusec * 1000, which)
    if old:
        t.mm.write(old, _pack_itimer(left, interval))
    return 0


@syscall(NR.getitimer)
def getitimer(t, which, cur):
    which = i32(which)
    if which not in (ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF):
        raise SyscallError(errno.EINVAL)
    t.mm.write(cur, _pack_itimer(*_itimer_now(t, which)))
    return 0


@syscall(NR.alarm)
def alarm(t, seconds):
    left, _ = _itimer_now(t)
    _set_itimer(t, (seconds & 0xFFFFFFFF) * NSEC, 0)
    # alarm(2): the seconds remaining, rounded, and at least 1 if a timer was pending
    return (left + NSEC // 2) // NSEC or (1 if left else 0)


_SIGEVENT = struct.Struct("<Qiii")  # sigev_value, sigev_signo, sigev_notify, sigev_notify_thread_id
_ITIMERSPEC = struct.Struct("<qqqq")


@syscall(NR.timer_create)
def timer_create(t, clock, sevp, timerid):
    clock = i32(clock)
    if clock not in MONOTONIC_CLOCKS | REALTIME_CLOCKS:
        raise SyscallError(errno.EINVAL)
    tid = 0
    if sevp:
        value, signo, notify, tid = _SIGEVENT.unpack(t.mm.read(sevp, _SIGEVENT.size))
        if notify not in (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID):
            raise SyscallError(errno.EINVAL)
        if notify != SIGEV_NONE and not 1 <= signo <= 64:
            raise SyscallError(errno.EINVAL)
        if notify == SIGEV_THREAD_ID and not any(x.tid == tid for x in t.tg.tasks):
            raise SyscallError(errno.EINVAL)
    else:
        value, signo, notify = 0, 14, SIGEV_SIGNAL
    timers = t.tg.posix_timers
    tid_ = next(i for i in range(len(timers) + 1) if i not in timers)
    timers[tid_] = PosixTimer(id=tid_, clock=clock, notify=notify, signo=signo, value=value or tid_, tid=tid)
    t.mm.write(timerid, struct.pack("<i", tid_))
    return 0


def _timer(t, timerid: int):
    timer = t.tg.posix_timers.get(i32(timerid))
    if timer is None:
        raise SyscallError(errno.EINVAL)
    return timer


def itimerspec_now(t, deadline: int, interval: int) -> bytes:
    """struct itimerspec of a timer: its interval and the time left to `deadline` (0: disarmed)."""
    left = max(0, deadline - t.kernel.timekeeper.monotonic_ns()) if deadline else 0
    return _ITIMERSPEC.pack(*divmod(interval, NSEC), *divmod(left, NSEC))


def read_itimerspec(t, addr: int, clock: int, absolute: bool) -> tuple[int, int]:
    """A struct itimerspec being set: (sandbox-monotonic deadline or 0 to disarm, interval)."""
    isec, insec, vsec, vnsec = _ITIMERSPEC.unpack(t.mm.read(addr, _ITIMERSPEC.size))
    if min(isec, vsec) < 0 or not (0 <= insec < NSEC and 0 <= vnsec < NSEC):
        raise SyscallError(errno.EINVAL)
    value = vsec * NSEC + vnsec
    now = t.kernel.timekeeper.monotonic_ns()
    if not value:
        deadline = 0
    elif absolute:
        deadline = now + max(0, value - clock_now(t, clock))
    else:
        deadline = now + value
    return deadline, isec * NSEC + insec


@syscall(NR.timer_settime)
def timer_settime(t, timerid, flags, new, old):
    timer = _timer(t, timerid)
    deadline, interval = read_itimerspec(t, new, timer.clock, bool(i32(flags) & TIMER_ABSTIME))
    if old:
        t.mm.write(old, itimerspec_now(t, timer.deadline, timer.interval))
    timer.deadline, timer.interval = deadline, interval
    timer.arm(t.kernel, t.tg)
    return 0


@syscall(NR.timer_gettime)
def timer_gettime(t, timerid, cur):
    timer = _timer(t, timerid)
    t.mm.write(cur, itimerspec_now(t, timer.deadline, timer.interval))
    return 0


@syscall(NR.timer_getoverrun)
def timer_getoverrun(t, timerid):
    return _timer(t, timerid).overrun


@syscall(NR.timer_delete)
def timer_delete(t, timerid):
    timer = _timer(t, timerid)
    timer.token += 1
    del t.tg.posix_timers[timer.id]
    return 0


TFD_TIMER_ABSTIME = 1


@syscall(NR.timerfd_create)
def timerfd_create(t, clockid, flags):
    clockid = i32(clockid)
    if clockid not in MONOTONIC_CLOCKS | REALTIME_CLOCKS or flags & ~(O_CLOEXEC | O_NONBLOCK):
        raise SyscallError(errno.EINVAL)
    f = TimerFd(flags=flags & O_NONBLOCK, clock=clockid)
    return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))


def _timerfd(t, fd: int) -> TimerFd:
    f = t.fds.get(i32(fd))
    if not isinstance(f, TimerFd):
        raise SyscallError(errno.EINVAL)
    return f


@syscall(NR.timerfd_settime)
def timerfd_settime(t, fd, flags, new, old):
    f = _timerfd(t, fd)
    deadline, interval = read_itimerspec(t, new, f.clock, bool(flags & TFD_TIMER_ABSTIME))
    if old:
        t.mm.write(old, itimerspec_now(t, f.deadline, f.interval))
    f.deadline, f.interval, f.expirations = deadline, interval, 0
    f.arm(t.kernel)
    return 0


@syscall(NR.timerfd_gettime)
def timerfd_gettime(t, fd, cur):
    f = _timerfd(t, fd)
    t.mm.write(cur, itimerspec_now(t, f.deadline, f.interval))
    return 0
