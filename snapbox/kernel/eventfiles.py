"""Files that carry events rather than data: eventfd, timerfd, signalfd and epoll."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDNORM, O_NONBLOCK, OpenFile
from snapbox.kernel.task import take_signal
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import nosave, savable

if TYPE_CHECKING:
    from snapbox.kernel.task import ThreadGroup

EVENTFD_MAX = (1 << 64) - 2
EFD_SEMAPHORE = 1
_U64 = struct.Struct("<Q")


@savable
@dataclass(eq=False)
class EventFd(OpenFile):
    """eventfd(2): a 64-bit counter that reads drain and writes add to."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    counter: int = 0
    semaphore: bool = False  # EFD_SEMAPHORE: each read takes 1
    readable_q: WaitQueue = field(default_factory=WaitQueue)  # readers waiting for a non-zero count
    writable_q: WaitQueue = field(default_factory=WaitQueue)  # writers waiting for room

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if count < 8:
            raise SyscallError(errno.EINVAL)
        if self.counter == 0:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.readable_q)
        value = 1 if self.semaphore else self.counter
        self.counter -= value
        self.writable_q.notify()
        return _U64.pack(value)

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if len(data) < 8:
            raise SyscallError(errno.EINVAL)
        (value,) = _U64.unpack(data[:8])
        if value == (1 << 64) - 1:
            raise SyscallError(errno.EINVAL)
        if self.counter + value > EVENTFD_MAX:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.writable_q)
        self.counter += value
        self.readable_q.notify()
        return 8

    def signal(self) -> None:
        """eventfd_signal(): one more, from the kernel (an AIO completion); never blocks."""
        self.counter = min(self.counter + 1, EVENTFD_MAX)
        self.readable_q.notify()

    def ready(self) -> int:
        return (POLLIN if self.counter else 0) | (POLLOUT if self.counter < EVENTFD_MAX else 0)

    def queues(self, t) -> tuple:
        return (self.readable_q, self.writable_q)

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return f"eventfd (count {self.counter})"


# struct signalfd_siginfo: signo, errno, code, pid, uid, fd, tid, band, overrun, trapno,
# status, int, ptr, utime, stime, addr, addr_lsb, then padding to 128 bytes.
_SIGNALFD_SIGINFO = struct.Struct("<IiiIIiIIIIiiQQQQH46x")
SIGNALFD_SIGINFO_SIZE = _SIGNALFD_SIGINFO.size
SI_QUEUE, SI_TIMER, SI_TKILL = -1, -2, -6
_FAULTS = {4, 5, 7, 8, 11}  # SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV: si_addr


def signalfd_siginfo(info: bytes) -> bytes:
    """A siginfo_t as signalfd(2) reads it (struct signalfd_siginfo)."""
    signo, err, code = struct.unpack_from("<iii", info)
    pid = uid = tid = overrun = status = value = addr = 0
    if code > 0 and signo in _FAULTS:
        (addr,) = struct.unpack_from("<Q", info, 16)
    elif code == SI_TIMER:
        tid, overrun, value = struct.unpack_from("<iiQ", info, 16)
    elif code > 0 and signo == 17:  # SIGCHLD: pid, uid, status
        pid, uid, status = struct.unpack_from("<iIi", info, 16)
    else:  # kill, tkill, sigqueue: the sender
        pid, uid = struct.unpack_from("<iI", info, 16)
        if code == SI_QUEUE:
            (value,) = struct.unpack_from("<Q", info, 24)
    return _SIGNALFD_SIGINFO.pack(signo, err, code, pid, uid, 0, tid, 0, overrun, 0, status,
                                  value & 0xFFFFFFFF if value < 1 << 63 else 0, value, 0, 0, addr, 0)


@savable
@dataclass(eq=False)
class SignalFd(OpenFile):
    """signalfd(2): the signals in `mask` that are pending for the reader, read as
    signalfd_siginfo records instead of being delivered (the program blocks them)."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    mask: int = 0  # sigset bits (SIGKILL and SIGSTOP never)
    owner: ThreadGroup | None = None  # the process that made it: whose pending signals poll reports

    def readable(self) -> bool:
        return True

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if count < SIGNALFD_SIGINFO_SIZE:
            raise SyscallError(errno.EINVAL)
        out = []
        while len(out) < count // SIGNALFD_SIGINFO_SIZE:
            taken = self._take(t)
            if taken is None:
                break
            out.append(signalfd_siginfo(taken))
        if out:
            return b"".join(out)
        if self.flags & O_NONBLOCK:
            raise SyscallError(errno.EAGAIN)
        raise WouldBlock(t.tg.signal_wait)

    def _take(self, t) -> bytes | None:
        """Dequeue the lowest pending signal of the mask: the thread's, then the process's."""
        for holder in (t, t.tg):
            ready = holder.pending & self.mask
            if ready:
                sig = (ready & -ready).bit_length()
                info = take_signal(holder, sig)
                return info or struct.pack("<iii4xiI", sig, 0, 0, 0, 0).ljust(128, b"\0")
        return None

    def ready(self) -> int:
        tg = self.owner
        if tg is None:
            return 0
        pending = tg.pending
        for task in tg.tasks:
            pending |= task.pending
        return POLLIN if pending & self.mask else 0

    def queues(self, t) -> tuple:
        return (t.tg.signal_wait,)

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return f"signalfd (mask {self.mask:#x})"


@savable
@dataclass(eq=False)
class TimerFd(OpenFile):
    """timerfd_create(2): expirations of a timer, read as a 64-bit count."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    clock: int = 1
    deadline: int = 0  # next expiry on the sandbox monotonic clock, 0 when disarmed
    interval: int = 0  # ns between expiries, 0 for a one-shot timer
    expirations: int = 0  # expiries since the last read
    readable_q: WaitQueue = field(default_factory=WaitQueue)
    token: int = nosave(default=0)  # bumped to cancel the armed kernel timer

    def readable(self) -> bool:
        return True

    def arm(self, kernel) -> None:
        """(Re)start the kernel timer for `deadline` (called on settime and on restore)."""
        self.token += 1
        if not self.deadline:
            return
        token = self.token

        def fire() -> None:
            if self.token != token:
                return
            self.expirations += 1
            if self.interval:
                now = kernel.timekeeper.monotonic_ns()
                missed = max(0, (now - self.deadline) // self.interval)
                self.expirations += missed
                self.deadline += (missed + 1) * self.interval
                self.arm(kernel)
            else:
                self.deadline = 0
            self.readable_q.notify()

        kernel.call_at(self.deadline, fire)

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if count < 8:
            raise SyscallError(errno.EINVAL)
        if not self.expirations:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.readable_q)
        n, self.expirations = self.expirations, 0
        return _U64.pack(n)

    def ready(self) -> int:
        return POLLIN if self.expirations else 0

    def queues(self, t) -> tuple:
        return (self.readable_q,)

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return "timerfd"


EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = 0x1, 0x4, 0x8, 0x10
EPOLLEXCLUSIVE, EPOLLWAKEUP, EPOLLONESHOT, EPOLLET = 1 << 28, 1 << 29, 1 << 30, 1 << 31
EPOLL_MAX_NESTS = 4  # epoll(7): how deep epolls may be put inside each other
_EVENT = struct.Struct("<IQ")  # struct epoll_event is packed on x86-64


@savable
@dataclass(eq=False)
class EpollFile(OpenFile):
    """epoll(7): an interest list. Level-triggered interests are reported while their file
    is ready; an edge-triggered one (EPOLLET) once per event, as Linux's wake-up callback
    queues it: when its file is ready and one of the file's wait queues has been notified
    since the last report (a write, a read, a connection...). A file whose readiness comes
    from the host (a host socket, a host file) is reported level-triggered: the sentry
    hears of its events only while someone waits, and a missed edge would leave a program
    waiting forever, where a repeated one only costs it an EAGAIN."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    interest: dict = field(default_factory=dict)  # fd -> [OpenFile, events, data]
    within: list = field(default_factory=list)  # the EpollFiles this one was added to (nesting depth)
    changed: WaitQueue = field(default_factory=WaitQueue)  # its interest list changed (a wait looks again)
    # fd -> (id, seq) of its file's wait queues at its last edge-triggered report. Not
    # saved: after a restore each one is reported once more if ready.
    edges: dict = nosave(dict)

    def readable(self) -> bool:
        return True

    def collect(self, t, maxevents: int) -> list[tuple[int, int]]:
        out = []
        for fd, entry in list(self.interest.items()):
            f, events, data = entry
            if t.fds.files.get(fd) is not f:
                del self.interest[fd]  # closed: epoll forgets it (the last fd of the file)
                self.edges.pop(fd, None)
                continue
            if not events & ~(EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE | EPOLLWAKEUP):
                continue  # a fired one-shot waits for EPOLL_CTL_MOD
            r = f.ready() & events
            if not r:
                continue
            if events & EPOLLET:
                marks = _marks(f, t)
                if marks is not None:
                    if self.edges.get(fd) == marks:
                        continue  # reported, and nothing has happened to it since
                    self.edges[fd] = marks
            out.append((r, data))
            if events & EPOLLONESHOT:
                entry[1] = events & (EPOLLONESHOT | EPOLLET)
            if len(out) == maxevents:
                break
        return out

    def set_interest(self, fd: int, f: OpenFile, events: int, data: int) -> None:
        """EPOLL_CTL_ADD or MOD: a file ready now is reported by the next wait, whatever
        its trigger. EPOLLERR and EPOLLHUP are always asked for, as ep_insert adds them (a
        fired one-shot drops them with the rest)."""
        self.interest[fd] = [f, events | POLLERR | POLLHUP, data]
        self.edges.pop(fd, None)
        if isinstance(f, EpollFile) and self not in f.within:
            f.within.append(self)
        self.changed.notify()

    def remove_interest(self, fd: int) -> bool:
        entry = self.interest.pop(fd, None)
        self.edges.pop(fd, None)
        return entry is not None

    def wait_queues(self, t) -> tuple:
        return (self.changed, *(q for f, _, _ in self.interest.values() for q in f.queues(t)))

    def queues(self, t) -> tuple:
        return self.wait_queues(t)  # an epoll inside another

    def ready(self) -> int:
        """Readable while one of its interests is ready (an epoll inside another, or
        polled): edge-triggered ones counted as if level-triggered."""
        for f, events, _ in self.interest.values():
            if events & ~(EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE | EPOLLWAKEUP) and \
                    f.ready() & (events | POLLERR | POLLHUP):
                return POLLIN | POLLRDNORM
        return 0

    def depth_below(self, inserting_into: EpollFile) -> int:
        """How deep epolls nest inside this one; more than EPOLL_MAX_NESTS if
        `inserting_into` is among them (adding this one there would make a cycle)."""
        depth = 0
        for f, _, _ in self.interest.values():
            if isinstance(f, EpollFile):
                if f is inserting_into:
                    return EPOLL_MAX_NESTS + 1
                depth = max(depth, f.depth_below(inserting_into) + 1)
                if depth > EPOLL_MAX_NESTS:
                    break
        return depth

    def depth_above(self) -> int:
        """How deep this epoll is inside others."""
        self.within = [p for p in self.within if any(f is self for f, _, _ in p.interest.values())]
        return max((p.depth_above() + 1 for p in self.within), default=0)

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return f"epoll ({len(self.interest)} fds)"


@savable
@dataclass(eq=False)
class PidFile(OpenFile):
    """A pidfd (pidfd_open(2), clone's CLONE_PIDFD): a process held by reference, not by a
    pid that may be reused. Polls readable once the process has exited, and hung up too
    once it has been reaped."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    group: ThreadGroup | None = None

    def ready(self) -> int:
        g = self.group
        return (POLLIN | POLLRDNORM if g.exit_status is not None else 0) | (POLLHUP if g.reaped else 0)

    def queues(self, t) -> tuple:
        return (self.group.exited,)

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return f"pidfd (pid {self.group.tgid})"


def pidfd_process(t, fd: int) -> ThreadGroup:
    """The process the caller's pidfd `fd` holds: EBADF for another file, ESRCH once the
    process has exited."""
    f = t.fds.get(fd)
    if not isinstance(f, PidFile):
        raise SyscallError(errno.EBADF)
    if f.group.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    return f.group


def _marks(f: OpenFile, t) -> tuple | None:
    """Where `f`'s wait queues stand (None: it has none the sentry follows itself)."""
    queues = f.queues(t)
    if not queues or any(q.host_fd >= 0 for q in queues):
        return None
    return tuple((id(q), q.seq) for q in queues)


def pack_events(events: list[tuple[int, int]]) -> bytes:
    return b"".join(_EVENT.pack(e, d) for e, d in events)


def unpack_event(data: bytes) -> tuple[int, int]:
    return _EVENT.unpack(data)


EVENT_SIZE = _EVENT.size


def _anon_stat() -> dict:
    return dict(dev=0xB, ino=1, mode=0o600, nlink=1, uid=0, gid=0, rdev=0, size=0, blksize=4096,
                blocks=0, atime=0, mtime=0, ctime=0)
