"""Unix stream sockets made by socketpair(2): two connected ends, a pipe each way."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLERR, POLLHUP, POLLIN, POLLOUT, OpenFile
from snapbox.kernel.pipe import PIPE_BUF, Pipe
from snapbox.kernel.signals import SIGPIPE
from snapbox.state import savable

AF_UNIX = 1
SOCK_STREAM = 1
MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK = 0x40, 0x4000, 0x2
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2


@savable
@dataclass(eq=False)
class UnixSocket(OpenFile):
    """One end of a connected AF_UNIX stream socket pair."""

    incoming: Pipe | None = None  # what the peer wrote, for us to read
    outgoing: Pipe | None = None  # what we write, for the peer
    shut_rd: bool = False
    shut_wr: bool = False

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def recv(self, t, count: int, flags: int = 0) -> bytes:
        p = self.incoming
        if self.shut_rd:
            return b""
        if not p.buf:
            if p.writers == 0 or count == 0:
                return b""
            if self.flags & O_NONBLOCK or flags & MSG_DONTWAIT:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(p.readable)
        data = bytes(p.buf[:count])
        if not flags & MSG_PEEK:
            del p.buf[:count]
            p.writable.notify()
        return data

    def send(self, t, data: bytes, flags: int = 0) -> int:
        p = self.outgoing
        if self.shut_wr or p.readers == 0:
            if not flags & MSG_NOSIGNAL:
                t.kernel.send_signal(t.tg, SIGPIPE)
            raise SyscallError(errno.EPIPE)
        return p.put(data, bool(self.flags & O_NONBLOCK or flags & MSG_DONTWAIT), atomic=False)

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.recv(t, count)

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.send(t, data)

    def shutdown(self, how: int) -> None:
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise SyscallError(errno.EINVAL)
        if how in (SHUT_RD, SHUT_RDWR) and not self.shut_rd:
            self.shut_rd = True
            self.incoming.readers -= 1
        if how in (SHUT_WR, SHUT_RDWR) and not self.shut_wr:
            self.shut_wr = True
            self.outgoing.writers -= 1
        for p in (self.incoming, self.outgoing):
            p.readable.notify()
            p.writable.notify()

    def ready(self) -> int:
        r = 0
        if self.incoming.buf or self.incoming.writers == 0 or self.shut_rd:
            r |= POLLIN
        if self.incoming.writers == 0 and self.outgoing.readers == 0:
            r |= POLLHUP
        if self.outgoing.readers == 0:
            r |= POLLERR if not self.shut_wr else 0
        elif len(self.outgoing.buf) + PIPE_BUF <= self.outgoing.capacity:
            r |= POLLOUT
        return r

    def queues(self, t) -> tuple:
        return (self.incoming.readable, self.outgoing.writable)

    def release(self) -> None:
        self.shutdown(SHUT_RDWR)

    def stat(self) -> dict:
        return dict(dev=0x8, ino=self.incoming.ino, mode=stat.S_IFSOCK | 0o777, nlink=1, uid=0, gid=0, rdev=0,
                    size=0, blksize=PIPE_BUF, blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        return f"socket:[{self.incoming.ino}] (unix stream pair)"


def make_pair(kernel, flags: int) -> tuple[UnixSocket, UnixSocket]:
    kernel.pipe_ino += 2
    ab = Pipe(ino=kernel.pipe_ino - 1, readers=1, writers=1)
    ba = Pipe(ino=kernel.pipe_ino, readers=1, writers=1)
    return (UnixSocket(flags=2 | flags, incoming=ba, outgoing=ab),
            UnixSocket(flags=2 | flags, incoming=ab, outgoing=ba))
