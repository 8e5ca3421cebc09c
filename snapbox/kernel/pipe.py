"""Pipes: a byte channel with a read end and a write end (pipe(7))."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLERR, POLLHUP, POLLIN, POLLOUT, OpenFile
from snapbox.kernel.signals import SIGPIPE
from snapbox.kernel.vfs import Inode
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

PIPE_BUF = 4096  # writes up to this size are atomic
PIPE_CAPACITY = 65536


@savable
@dataclass(eq=False)
class Pipe:
    """A unidirectional byte channel shared by a read end and a write end."""

    ino: int = 0  # for fstat and /proc/pid/fd ("pipe:[ino]")
    buf: bytearray = field(default_factory=bytearray)  # bytes written and not yet read
    capacity: int = PIPE_CAPACITY
    readers: int = 0  # open read ends; 0 makes writes fail with EPIPE
    writers: int = 0  # open write ends; 0 makes reads of an empty pipe return EOF
    opens_for_read: int = 0  # times a FIFO was opened for reading (what waiting writers watch)
    opens_for_write: int = 0  # times a FIFO was opened for writing (what waiting readers watch)
    readable: WaitQueue = field(default_factory=WaitQueue)  # readers waiting for data or EOF
    writable: WaitQueue = field(default_factory=WaitQueue)  # writers waiting for room

    def open_end(self, mode: int) -> None:
        """Count one more open of this pipe for reading (mode 0), writing (1) or both (2),
        and wake whoever waits on its ends."""
        if mode in (0, 2):
            self.readers += 1
            self.opens_for_read += 1
        if mode in (1, 2):
            self.writers += 1
            self.opens_for_write += 1
        self.readable.notify()
        self.writable.notify()

    def put(self, data: bytes, nonblock: bool, atomic: bool) -> int:
        """Append what fits of `data` (all of it, or wait, if `atomic` and it is at most
        PIPE_BUF bytes); EAGAIN or WouldBlock when nothing fits."""
        room = self.capacity - len(self.buf)
        if room == 0 or (atomic and len(data) <= PIPE_BUF and room < len(data)):
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.writable)
        n = min(room, len(data))
        self.buf += data[:n]
        self.readable.notify()
        return n


@savable
@dataclass(eq=False)
class PipeFile(OpenFile):
    """One end of a pipe."""

    stream = True
    pipe: Pipe | None = None

    def unread(self) -> int:
        """FIONREAD: the bytes in the pipe."""
        return len(self.pipe.buf)

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        p = self.pipe
        if not p.buf:
            if p.writers == 0 or count == 0:
                return b""
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(p.readable)
        data = bytes(p.buf[:count])
        del p.buf[:count]
        p.writable.notify()
        return data

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        p = self.pipe
        if p.readers == 0:
            t.kernel.send_signal(t.tg, SIGPIPE)
            raise SyscallError(errno.EPIPE)
        # pipe(7): writes of at most PIPE_BUF bytes are atomic; larger ones may be split.
        return p.put(data, bool(self.flags & O_NONBLOCK), atomic=True)

    def stat(self) -> dict:
        return dict(dev=0xA, ino=self.pipe.ino, mode=stat.S_IFIFO | 0o600, nlink=1, uid=0, gid=0,
                    rdev=0, size=len(self.pipe.buf), blksize=PIPE_BUF, blocks=0, atime=0, mtime=0, ctime=0)

    def release(self) -> None:
        p = self.pipe
        if self.readable():
            p.readers -= 1
        if self.writable():
            p.writers -= 1
        p.readable.notify()
        p.writable.notify()

    def ready(self) -> int:
        p = self.pipe
        if self.readable():
            return (POLLIN if p.buf else 0) | (POLLHUP if p.writers == 0 else 0)
        return (POLLOUT if len(p.buf) + PIPE_BUF <= p.capacity else 0) | (POLLERR if p.readers == 0 else 0)

    def queues(self, t) -> tuple[WaitQueue, ...]:
        return (self.pipe.readable,) if self.readable() else (self.pipe.writable,)

    def describe(self) -> str:
        return f"pipe:[{self.pipe.ino}] ({'read' if self.readable() else 'write'} end)"


def make_pipe(kernel, flags: int) -> tuple[PipeFile, PipeFile]:
    kernel.pipe_ino += 1
    p = Pipe(ino=kernel.pipe_ino, readers=1, writers=1)
    return PipeFile(flags=flags & O_NONBLOCK, pipe=p), PipeFile(flags=1 | (flags & O_NONBLOCK), pipe=p)


@savable
@dataclass(eq=False)
class FifoNode(Inode):
    """A named pipe (mkfifo): opening it joins the pipe it holds (fifo(7))."""

    pipe: Pipe | None = None
    opened: WaitQueue = field(default_factory=WaitQueue)  # openers waiting for the other end

    def size(self) -> int:
        return 0


def open_fifo(t, node: FifoNode, flags: int) -> PipeFile:
    """Open a FIFO as Linux does (fs/pipe.c fifo_open): a reader waits until some writer
    has opened it since the reader came, and a writer waits for a reader, unless
    O_NONBLOCK (a writer without a reader then fails with ENXIO) or O_RDWR. The end is
    counted before waiting; the count it waits to see change is kept in t.restart."""
    p = node.pipe
    mode = flags & 3
    state = t.restart[1] if t.restart is not None and isinstance(t.restart[1], tuple) else None
    if mode == 1 and flags & O_NONBLOCK and p.readers == 0:
        raise SyscallError(errno.ENXIO)
    if state is None:
        p.open_end(mode)
        node.opened.notify()
        state = ("fifo", p.opens_for_write if mode == 0 else p.opens_for_read)
    if mode == 0 and not flags & O_NONBLOCK and p.writers == 0 and p.opens_for_write == state[1]:
        t.set_restart(t.regs.orig_rax, state)
        raise WouldBlock(node.opened)
    if mode == 1 and p.readers == 0 and p.opens_for_read == state[1]:
        t.set_restart(t.regs.orig_rax, state)
        raise WouldBlock(node.opened)
    return PipeFile(flags=flags & ~0o2000000, pipe=p)
