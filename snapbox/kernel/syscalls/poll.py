"""Waiting on many files: poll, ppoll, select, pselect6, and epoll (create, ctl, wait, pwait)."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import (
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    POLLPRI,
    POLLRDNORM,
    POLLWRNORM,
)
from snapbox.kernel.eventfiles import EPOLL_MAX_NESTS, EPOLLERR, EPOLLET, EPOLLEXCLUSIVE, EPOLLHUP, EPOLLIN, \
    EPOLLOUT, EPOLLWAKEUP, EVENT_SIZE, EpollFile, pack_events, unpack_event
from snapbox.kernel.fd import O_CLOEXEC
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.time import NSEC, read_timespec

_POLLFD = struct.Struct("<ihh")
_ALWAYS = POLLERR | POLLHUP | POLLNVAL


def _revents(f, events: int) -> int:
    if f is None:
        return POLLNVAL
    r = f.ready()
    if r & POLLIN:
        r |= POLLRDNORM
    if r & POLLOUT:
        r |= POLLWRNORM
    return r & (events | _ALWAYS)


def _deadline(t, nr: int, timeout_ns: int | None) -> int | None:
    """The sandbox-monotonic deadline of a wait, kept across restarts; None: wait forever."""
    if timeout_ns is None:
        return None
    deadline = t.restart_value(nr)
    if deadline is None:
        deadline = t.kernel.timekeeper.monotonic_ns() + timeout_ns
        t.set_restart(nr, deadline)
    return deadline


def do_poll(t, nr: int, fds: int, nfds: int, timeout_ns: int | None) -> int:
    if nfds > t.fds.limit:
        raise SyscallError(errno.EINVAL)
    raw = t.mm.read(fds, nfds * _POLLFD.size)
    entries = [_POLLFD.unpack_from(raw, i * _POLLFD.size) for i in range(nfds)]
    out = []
    files = []
    for fd, events, _ in entries:
        f = t.fds.files.get(fd) if fd >= 0 else None
        files.append(f)
        out.append(0 if fd < 0 else _revents(f, events & 0xFFFF))
    count = sum(1 for r in out if r)
    deadline = _deadline(t, nr, timeout_ns)
    expired = timeout_ns == 0 or (deadline is not None and t.kernel.timekeeper.monotonic_ns() >= deadline)
    if count or expired:
        t.mm.write(fds, b"".join(_POLLFD.pack(fd, ev, r) for (fd, ev, _), r in zip(entries, out)))
        return count
    queues = tuple(q for f in files if f is not None for q in f.queues(t))
    raise WouldBlock(*queues, deadline=deadline)


@syscall(NR.poll)
def poll(t, fds, nfds, timeout):
    ms = i32(timeout)
    return do_poll(t, NR.poll, fds, nfds, None if ms < 0 else ms * 1_000_000)


@syscall(NR.ppoll)
def ppoll(t, fds, nfds, tsp, sigmask, sigsetsize):
    return do_poll(t, NR.ppoll, fds, nfds, read_timespec(t, tsp) if tsp else None)


def do_select(t, nr: int, nfds: int, readfds: int, writefds: int, exceptfds: int,
              timeout_ns: int | None) -> int:
    nfds = i32(nfds)
    if nfds < 0 or nfds > t.fds.limit:
        raise SyscallError(errno.EINVAL)
    nbytes = (nfds + 63) // 64 * 8
    sets = [int.from_bytes(t.mm.read(a, nbytes), "little") if a else 0
            for a in (readfds, writefds, exceptfds)]
    results = [0, 0, 0]
    queues = []
    for fd in range(nfds):
        want = [(s >> fd) & 1 for s in sets]
        if not any(want):
            continue
        f = t.fds.files.get(fd)
        if f is None:
            raise SyscallError(errno.EBADF)
        r = f.ready()
        if want[0] and r & (POLLIN | POLLHUP | POLLERR):
            results[0] |= 1 << fd
        if want[1] and r & (POLLOUT | POLLERR):
            results[1] |= 1 << fd
        if want[2] and r & POLLPRI:
            results[2] |= 1 << fd
        queues.extend(f.queues(t))
    count = sum(bin(r).count("1") for r in results)
    deadline = _deadline(t, nr, timeout_ns)
    expired = timeout_ns == 0 or (deadline is not None and t.kernel.timekeeper.monotonic_ns() >= deadline)
    if count or expired:
        for addr, r in zip((readfds, writefds, exceptfds), results):
            if addr:
                t.mm.write(addr, r.to_bytes(nbytes, "little"))
        return count
    raise WouldBlock(*queues, deadline=deadline)


@syscall(NR.select)
def select(t, nfds, readfds, writefds, exceptfds, timeout):
    timeout_ns = None
    if timeout:
        sec, usec = struct.unpack("<qq", t.mm.read(timeout, 16))
        if sec < 0 or not 0 <= usec < 1_000_000:
            raise SyscallError(errno.EINVAL)
        timeout_ns = sec * NSEC + usec * 1000
    return do_select(t, NR.select, nfds, readfds, writefds, exceptfds, timeout_ns)


@syscall(NR.pselect6)
def pselect6(t, nfds, readfds, writefds, exceptfds, tsp, sigmask):
    return do_select(t, NR.pselect6, nfds, readfds, writefds, exceptfds,
                     read_timespec(t, tsp) if tsp else None)


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
    fd, op = i32(fd), i32(op)
    events = data = 0
    if op in (EPOLL_CTL_ADD, EPOLL_CTL_MOD):
        events, data = unpack_event(t.mm.read(event, EVENT_SIZE))
    ep = t.fds.get(i32(epfd))
    f = t.fds.get(fd)
    if type(f).__name__ in ("RegularFile", "DirFile"):
        raise SyscallError(errno.EPERM)  # epoll_ctl(2): regular files and directories
    if f is ep or not isinstance(ep, EpollFile):
        raise SyscallError(errno.EINVAL)
    if events & EPOLLEXCLUSIVE and (op == EPOLL_CTL_MOD or isinstance(f, EpollFile) or
                                    events & ~_EXCLUSIVE_OK):
        raise SyscallError(errno.EINVAL)
    if op == EPOLL_CTL_ADD and isinstance(f, EpollFile) and \
            f.depth_below(ep) + 1 + ep.depth_above() > EPOLL_MAX_NESTS:
        raise SyscallError(errno.ELOOP)  # a cycle, or nested too deep
    if op == EPOLL_CTL_DEL:
        if not ep.remove_interest(fd):
            raise SyscallError(errno.ENOENT)
        return 0
    if op == EPOLL_CTL_ADD:
        if fd in ep.interest:
            raise SyscallError(errno.EEXIST)
    elif op == EPOLL_CTL_MOD:
        if fd not in ep.interest:
            raise SyscallError(errno.ENOENT)
        if ep.interest[fd][1] & EPOLLEXCLUSIVE:
            raise SyscallError(errno.EINVAL)
    else:
        raise SyscallError(errno.EINVAL)
    ep.set_interest(fd, f, events & 0xFFFFFFFF, data)
    return 0


# What EPOLLEXCLUSIVE may come with (Linux's EPOLLEXCLUSIVE_OK_BITS).
_EXCLUSIVE_OK = EPOLLEXCLUSIVE | EPOLLIN | EPOLLOUT | EPOLLERR | EPOLLHUP | EPOLLWAKEUP | EPOLLET


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


@syscall(NR.epoll_pwait2)
def epoll_pwait2(t, epfd, events, maxevents, timeout, sigmask, sigsetsize):
    """epoll_pwait with a timespec timeout (NULL: wait for ever)."""
    return _epoll_wait(t, NR.epoll_pwait2, epfd, events, maxevents, read_timespec(t, timeout) if timeout else None)
