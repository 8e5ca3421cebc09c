"""Files that carry events rather than data: eventfd, timerfd, signalfd and epoll."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import POLLERR, POLLHUP, POLLIN, POLLOUT, O_NONBLOCK, OpenFile
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
EPOLLONESHOT, EPOLLET = 1 << 30, 1 << 31
_EVENT = struct.Struct("<IQ")  # struct epoll_event is packed on x86-64


@savable
@dataclass(eq=False)
class EpollFile(OpenFile):
    """epoll(7): an interest list, polled level-triggered (edge-triggered interests are
    reported like level-triggered ones: a program may see an event more than once)."""

    interest: dict = field(default_factory=dict)  # fd -> [OpenFile, events, data]

    def readable(self) -> bool:
        return True

    def collect(self, t, maxevents: int) -> list[tuple[int, int]]:
        out = []
        for fd, entry in list(self.interest.items()):
            f, events, data = entry
            if t.fds.files.get(fd) is not f:
                del self.interest[fd]  # closed: epoll forgets it (the last fd of the file)
                continue
            if not events & ~(EPOLLONESHOT | EPOLLET):
                continue  # a fired one-shot waits for EPOLL_CTL_MOD
            r = f.ready() & (events | POLLERR | POLLHUP)
            if r:
                out.append((r, data))
                if events & EPOLLONESHOT:
                    entry[1] = events & (EPOLLONESHOT | EPOLLET)
                if len(out) == maxevents:
                    break
        return out

    def wait_queues(self, t) -> tuple:
        return tuple(q for f, _, _ in self.interest.values() for q in f.queues(t))

    def ready(self) -> int:
        return 0

    def stat(self) -> dict:
        return _anon_stat()

    def describe(self) -> str:
        return f"epoll ({len(self.interest)} fds)"


def pack_events(events: list[tuple[int, int]]) -> bytes:
    return b"".join(_EVENT.pack(e, d) for e, d in events)


def unpack_event(data: bytes) -> tuple[int, int]:
    return _EVENT.unpack(data)


EVENT_SIZE = _EVENT.size


def _anon_stat() -> dict:
    return dict(dev=0xB, ino=1, mode=0o600, nlink=1, uid=0, gid=0, rdev=0, size=0, blksize=4096,
                blocks=0, atime=0, mtime=0, ctime=0)
