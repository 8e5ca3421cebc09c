"""eventfd, timerfd and epoll."""

from __future__ import annotations

import errno

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.eventfiles import (
    EFD_SEMAPHORE,
    EVENT_SIZE,
    EpollFile,
    EventFd,
    TimerFd,
    pack_events,
    unpack_event,
)
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.poll import _deadline
from snapbox.kernel.syscalls.time import itimerspec_now, read_itimerspec
from snapbox.kernel.time import MONOTONIC_CLOCKS, REALTIME_CLOCKS

TFD_TIMER_ABSTIME = 1


@syscall(NR.eventfd2)
def eventfd2(t, initval, flags):
    if flags & ~(O_CLOEXEC | O_NONBLOCK | EFD_SEMAPHORE):
        raise SyscallError(errno.EINVAL)
    f = EventFd(flags=2 | (flags & O_NONBLOCK), counter=initval & 0xFFFFFFFF,
                semaphore=bool(flags & EFD_SEMAPHORE))
    return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))


@syscall(NR.eventfd)
def eventfd(t, initval):
    return eventfd2(t, initval, 0)


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


EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3


@syscall(NR.epoll_create1)
def epoll_create1(t, flags):
    if flags & ~O_CLOEXEC:
        raise SyscallError(errno.EINVAL)
    return t.fds.install(EpollFile(flags=2), cloexec=bool(flags & O_CLOEXEC))


@syscall(NR.epoll_create)
def epoll_create(t, size):
    if i32(size) <= 0:
        raise SyscallError(errno.EINVAL)
    return epoll_create1(t, 0)


@syscall(NR.epoll_ctl)
def epoll_ctl(t, epfd, op, fd, event):
    ep = t.fds.get(i32(epfd))
    if not isinstance(ep, EpollFile):
        raise SyscallError(errno.EINVAL)
    fd, op = i32(fd), i32(op)
    f = t.fds.get(fd)
    if f is ep:
        raise SyscallError(errno.EINVAL)
    if type(f).__name__ in ("RegularFile", "DirFile"):
        raise SyscallError(errno.EPERM)  # epoll_ctl(2): regular files and directories
    if op == EPOLL_CTL_DEL:
        if ep.interest.pop(fd, None) is None:
            raise SyscallError(errno.ENOENT)
        return 0
    events, data = unpack_event(t.mm.read(event, EVENT_SIZE))
    if op == EPOLL_CTL_ADD:
        if fd in ep.interest:
            raise SyscallError(errno.EEXIST)
    elif op == EPOLL_CTL_MOD:
        if fd not in ep.interest:
            raise SyscallError(errno.ENOENT)
    else:
        raise SyscallError(errno.EINVAL)
    ep.interest[fd] = [f, events & 0xFFFFFFFF, data]
    return 0


def _epoll_wait(t, nr: int, epfd: int, events: int, maxevents: int, timeout_ns: int | None) -> int:
    ep = t.fds.get(i32(epfd))
    if not isinstance(ep, EpollFile) or i32(maxevents) <= 0:
        raise SyscallError(errno.EINVAL)
    ready = ep.collect(t, i32(maxevents))
    if ready:
        t.mm.write(events, pack_events(ready))
        return len(ready)
    deadline = _deadline(t, nr, timeout_ns)
    if timeout_ns == 0 or (deadline is not None and t.kernel.timekeeper.monotonic_ns() >= deadline):
        return 0
    raise WouldBlock(*ep.wait_queues(t), deadline=deadline)


@syscall(NR.epoll_wait)
def epoll_wait(t, epfd, events, maxevents, timeout):
    ms = i32(timeout)
    return _epoll_wait(t, NR.epoll_wait, epfd, events, maxevents, None if ms < 0 else ms * 1_000_000)


@syscall(NR.epoll_pwait)
def epoll_pwait(t, epfd, events, maxevents, timeout, sigmask, sigsetsize):
    ms = i32(timeout)
    return _epoll_wait(t, NR.epoll_pwait, epfd, events, maxevents, None if ms < 0 else ms * 1_000_000)
