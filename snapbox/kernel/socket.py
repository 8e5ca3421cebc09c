"""Unix sockets (unix(7)): stream, seqpacket and datagram; socketpair, and named ones that
bind (and listen, accept, connect), by a path in the sandbox's filesystem or a name in the
abstract namespace.

A stream or seqpacket connection is two StreamBuffers, one each way; a seqpacket one also
keeps where each record ends. Files sent with SCM_RIGHTS ride in the buffer beside the
bytes they were sent with: a read that reaches those bytes receives them, and no read
returns bytes of two sends that both carried files. A datagram socket has a queue of
whole datagrams, each with its sender's name and its files.

Credentials (SCM_CREDENTIALS) go with every send as Linux's unix_scm_to_skb attaches them:
the ones the sender gave, else its own if either end has SO_PASSCRED then, else none (a
reader that asks later is told pid 0 and the overflow ids). A reader with SO_PASSCRED gets
them with each read, and a stream read does not join bytes of sends with different ones.
"""

from __future__ import annotations

import errno
import functools
import stat
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP, OpenFile, drop_ref
from snapbox.kernel.pipe import PIPE_BUF, Pipe
from snapbox.kernel.signals import SIGPIPE
from snapbox.kernel.vfs import Inode
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

AF_UNIX = 1
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
MAX_DGRAM_QLEN = 10  # net.unix.max_dgram_qlen: datagrams a socket holds before senders wait
MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK = 0x40, 0x4000, 0x2
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
SOMAXCONN = 4096
SOL_SOCKET, SO_PASSCRED = 1, 16
NOBODY = 65534  # the overflow uid and gid: what credentials no send carried read as
NO_PEER = (0, 0xFFFFFFFF, 0xFFFFFFFF)  # SO_PEERCRED of a socket with no peer (nor listening)
SO_SNDBUF, SNDBUF_DEFAULT = 7, 212992  # net.core.wmem_default (and rmem_default)
SO_RCVBUF, BUF_MAX_DEFAULT = 8, 212992  # Linux's net.core.wmem_max and rmem_max
SO_RCVLOWAT = 18  # the bytes a stream read waits for (and TCP's poll, before POLLIN)


@functools.cache
def buffer_max(which: int) -> int:
    """net.core.wmem_max (for SO_SNDBUF) or rmem_max (SO_RCVBUF): the host's, so that a
    host whose administrator raised them allows its sandboxes as much; Linux's default where
    the host does not say."""
    name = "wmem_max" if which == SO_SNDBUF else "rmem_max"
    try:
        with open(f"/proc/sys/net/core/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return BUF_MAX_DEFAULT
# The sizes behind an skb's truesize on x86-64: its sk_buff and skb_shared_info (each
# cache-aligned), and the largest head kmalloc'd in one piece (four pages less the info).
SKB_OVERHEAD, SKB_SHINFO, SKB_MAX_ALLOC = 576, 320, 16384 - 320
# A stream write's skbs: at most a page of head (less the info) and 32 KiB of pages.
SKB_MAX_HEAD, UNIX_SKB_FRAGS = 4096 - 320, 32768


def sender_creds(t) -> list:
    """What SCM_CREDENTIALS says of the calling thread by default: its process id and its
    real uid and gid."""
    return [t.tg.tgid, t.tg.creds[0], t.tg.creds[3]]


def autobind(kernel, s: UnixSocket | UnixDgramSocket) -> None:
    """Give an unnamed socket a name in the abstract namespace: five hex digits (unix(7))."""
    n = 0
    while (name := b"\0%05x" % n) in kernel.unix_names and kernel.unix_names[name].refs:
        n += 1
    kernel.unix_names[name] = s
    s.address = name
    if getattr(s, "partner", None) is not None:
        s.partner.peer = name


@savable
@dataclass(eq=False)
class StreamBuffer(Pipe):
    """One direction of a connection: bytes not yet read, and the files sent with them."""

    rights: list = field(default_factory=list)  # [offset in buf, [OpenFile...]], by offset
    reset: bool = False  # the writer closed with data unread or never accepted: ECONNRESET once
    aborted: bool = False  # so it did, for good: a TCP connection is closed by the reset (RST)
    records: list | None = None  # seqpacket: the length of each record in buf, in order
    # The credentials sent with the bytes: [offset in buf, [pid, uid, gid] or None] where they
    # change, by offset (the first at 0 while there are bytes; none at all: never any).
    creds: list = field(default_factory=list)
    # A unix socket's writes as Linux's skbs: [its bytes not read yet, its truesize], oldest
    # first; together (wmem) what they take of the writer's SO_SNDBUF until read.
    skbs: list = field(default_factory=list)
    wmem: int = 0
    stamp: int = 0  # TCP: when (sandbox realtime ns) the last bytes came, for SO_TIMESTAMP
    total: int = 0  # TCP: the bytes ever sent through it, for TCP_INFO

    def has_unread(self) -> bool:
        """Whether there is anything to read (a seqpacket record may be empty)."""
        return bool(self.buf or self.records)

    def put_stream(self, data: bytes, nonblock: bool, sndbuf: int) -> int:
        """Append what the writer's send buffer lets through, as Linux's unix_stream_sendmsg
        cuts a write into skbs: one more while what is unread takes less than `sndbuf`."""
        sent = 0
        while sent < len(data):
            if self.wmem >= sndbuf:
                if sent:
                    break
                if nonblock:
                    raise SyscallError(errno.EAGAIN)
                raise WouldBlock(self.writable)
            size = min(len(data) - sent, sndbuf // 2 - 64, SKB_MAX_HEAD + UNIX_SKB_FRAGS)
            paged = min(size, -(-max(0, size - SKB_MAX_HEAD) // 4096) * 4096)
            self._add_skb(data[sent:sent + size], skb_truesize(size - paged, paged))
            sent += size
        self.readable.notify()
        return sent

    def _add_skb(self, data: bytes, cost: int) -> None:
        self.buf += data
        self.skbs.append([len(data), cost])
        self.wmem += cost

    def put_creds(self, start: int, creds: list | None) -> None:
        """The bytes from `start` to the end (just written) were sent with `creds`."""
        if creds is None and not self.creds:
            return
        if not self.creds and start:
            self.creds.append([0, None])  # the bytes before were sent with none
        if not self.creds or self.creds[-1][1] != creds:
            self.creds.append([start, creds])

    def take(self, count: int, peek: bool, by_creds: bool = False) -> tuple[bytes, list, list | None]:
        """Up to `count` bytes from the front, the files that came with them, and the
        credentials they were sent with. As Linux's unix_stream_read_generic, a read goes
        on through the skb that carries files, takes them, and stops at its end (so no read
        has two sends' files); with `by_creds`, it stops before bytes sent with other
        credentials."""
        if self.records is not None:
            return self._take_record(count, peek)
        files: list = []
        creds = self.creds[0][1] if self.creds else None
        limit = count
        if by_creds and len(self.creds) > 1:
            limit = min(limit, self.creds[1][0])
        if self.rights and (limit > self.rights[0][0] or self.rights[0][0] == 0):
            files = self.rights[0][1]  # (a read of no bytes takes the first skb's files too)
            limit = min(limit, self._skb_end(self.rights[0][0]))
        data = bytes(self.buf[:limit])
        if not peek:
            if files:
                self.rights.pop(0)
            self._consume(len(data))
        return data, files, creds

    def _skb_end(self, offset: int) -> int:
        """Where the skb holding byte `offset` ends (in an image from before skbs were kept:
        where the next files are, or the end)."""
        end = 0
        for left, _ in self.skbs:
            end += left
            if end > offset:
                return end
        return self.rights[1][0] if len(self.rights) > 1 else len(self.buf)

    def _take_record(self, count: int, peek: bool) -> tuple[bytes, list, list | None]:
        """The first record (its first `count` bytes: the rest of it is dropped, as
        seqpacket reads do), the files and the credentials sent with it."""
        if not self.records:
            return b"", [], None
        length = self.records[0]
        files = self.rights[0][1] if self.rights and self.rights[0][0] == 0 else []
        creds = self.creds[0][1] if self.creds else None
        data = bytes(self.buf[:min(count, length)])
        if not peek:
            self.records.pop(0)
            if files:
                self.rights.pop(0)
            if self.skbs:
                self.wmem -= self.skbs.pop(0)[1]
            self._consume(length)
        return data, files, creds

    def _consume(self, n: int) -> None:
        """Drop the first `n` bytes, and move the marks of files and credentials with them;
        the skbs they end give their room back to the writer."""
        del self.buf[:n]
        left = n if self.records is None else 0
        while left and self.skbs:
            take = min(left, self.skbs[0][0])
            self.skbs[0][0] -= take
            left -= take
            if not self.skbs[0][0]:
                self.wmem -= self.skbs.pop(0)[1]
        for mark in self.rights:
            mark[0] -= n
        for mark in self.creds:
            mark[0] = max(mark[0] - n, 0)
        while len(self.creds) > 1 and self.creds[1][0] == 0:
            self.creds.pop(0)
        if not self.buf:
            self.creds.clear()
        self.writable.notify()

    def put_record(self, data: bytes, nonblock: bool, sndbuf: int) -> int:
        """Append one whole record (at most `sndbuf` less 32 bytes), one skb, as Linux's
        seqpacket sends: waits while what is unread takes the writer's send buffer."""
        if len(data) > sndbuf - 32:
            raise SyscallError(errno.EMSGSIZE)
        if self.wmem >= sndbuf:
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.writable)
        self._add_skb(data, truesize(len(data)))
        self.records.append(len(data))
        self.readable.notify()
        return len(data)

    def discard(self) -> None:
        """No one will read this buffer again: drop its bytes and the files in it."""
        self.buf.clear()
        self.creds.clear()
        self.skbs.clear()
        self.wmem = 0
        rights, self.rights = self.rights, []
        for _, files in rights:
            for f in files:
                drop_ref(f)


@dataclass(eq=False)
class SocketFile(OpenFile):
    """What every socket is as a file: open for reading and writing, whatever its flags."""

    stream = True
    # SO_RCVTIMEO in ns (0: none; -1: no wait at all): a receive that blocks longer fails with EAGAIN
    rcvtimeo: int = 0
    sndtimeo: int = 0  # SO_SNDTIMEO, as rcvtimeo: a send that blocks longer ends (see write_all)
    options: dict = field(default_factory=dict)  # (level, option) -> value, as setsockopt left it
    owner: tuple = (0, 0)  # its inode's uid and gid: the fsuid and fsgid of who made (or accepted) it

    @property
    def passcred(self) -> bool:
        return bool(self.options.get((SOL_SOCKET, SO_PASSCRED)))

    @property
    def sndbuf(self) -> int:
        return self.options.get((SOL_SOCKET, SO_SNDBUF), SNDBUF_DEFAULT)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def ioctl(self, t, request: int, arg: int) -> int:
        from snapbox.kernel.netlink import IFREQ_IOCTLS, SIOCGIFCONF, interface_ioctl

        if request in IFREQ_IOCTLS or request == SIOCGIFCONF:  # netdevice(7), on any socket
            return interface_ioctl(t, request, arg)
        raise SyscallError(errno.ENOTTY)


class DatagramSocket(SocketFile):
    """read(2) and write(2) of a socket of datagrams that has recv_from (its next one) and
    send_default (one to where it sends by default)."""

    messages = True

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.recv_from(t, count, 0)[0]

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.send_default(t, data)


@savable
@dataclass(eq=False)
class UnixSocket(SocketFile):
    """An AF_UNIX stream socket: unconnected, listening, or one end of a connection."""

    incoming: StreamBuffer | None = None  # what the peer wrote, for us to read
    outgoing: StreamBuffer | None = None  # what we write, for the peer
    shut_rd: bool = False
    shut_wr: bool = False
    ino: int = 0
    address: bytes = b""  # the bound name: a path, or NUL and an abstract name; b"" if unbound
    peer: bytes = b""  # the peer's name (kept up to date by a bind of the peer after connecting)
    partner: UnixSocket | None = None  # the other end of the connection, whose `peer` a bind here renames
    cred: list = field(default_factory=lambda: list(NO_PEER))  # pid, uid, gid: the peer's (SO_PEERCRED)
    listening: bool = False
    backlog: int = 0
    pending: list = field(default_factory=list)  # connections made to us, waiting for accept
    changed: WaitQueue = field(default_factory=WaitQueue)  # accept and connect waiters
    kind: int = SOCK_STREAM  # or SOCK_SEQPACKET: records, not a byte stream

    @property
    def connected(self) -> bool:
        return self.incoming is not None

    @property
    def messages(self) -> bool:
        return self.kind == SOCK_SEQPACKET

    def unread(self) -> int:
        """FIONREAD: the bytes waiting to be read (0 before a connection)."""
        return len(self.incoming.buf) if self.incoming is not None and not self.listening else 0

    # -- data --------------------------------------------------------------------------------

    def recv_msg(self, t, count: int, flags: int = 0) -> tuple[bytes, list, list | None]:
        """Read up to `count` bytes; returns them, the files and the credentials that came
        with them."""
        if self.listening:
            raise SyscallError(errno.EINVAL)
        p = self.incoming
        if p is None:
            raise SyscallError(errno.ENOTCONN)
        if not p.has_unread():
            if self.shut_rd:
                return b"", [], None  # (what came before the shutdown is still read, as on Linux)
            if p.reset:
                p.reset = False
                raise SyscallError(errno.ECONNRESET)
            if p.writers == 0:
                return b"", [], None  # (a receive of 0 bytes waits for data, as Linux's; read(2) does not)
            if self.flags & O_NONBLOCK or flags & MSG_DONTWAIT:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(p.readable)
        return p.take(count, bool(flags & MSG_PEEK), self.passcred)

    def recv(self, t, count: int, flags: int = 0) -> bytes:
        data, files, _ = self.recv_msg(t, count, flags)
        if not flags & MSG_PEEK:
            for f in files:  # read without recvmsg: the files are lost, as on Linux
                drop_ref(f)
        return data

    def send(self, t, data: bytes, flags: int = 0, files: tuple = (), creds: list | None = None) -> int:
        """Write what fits of `data`; `files` (SCM_RIGHTS) go with its first byte, and
        `creds` (SCM_CREDENTIALS; None: the sender's own if either end asks for them) with
        all of it."""
        p = self.outgoing
        if p is None:
            raise SyscallError(errno.ENOTCONN)
        if self.shut_wr or p.readers == 0:
            if not flags & MSG_NOSIGNAL:
                t.kernel.send_signal(t.tg, SIGPIPE)
            raise SyscallError(errno.EPIPE)
        nonblock = bool(self.flags & O_NONBLOCK or flags & MSG_DONTWAIT)
        n = self.put(p, data, nonblock)
        if creds is None and (self.passcred or self.partner is not None and self.partner.passcred):
            creds = sender_creds(t)
        p.put_creds(len(p.buf) - n, creds)
        if files:
            p.rights.append([len(p.buf) - n, list(files)])
            for f in files:
                f.refs += 1
        return n

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        if count == 0:
            return b""  # read(2) of nothing returns at once (recv waits for data)
        return self.recv(t, count)

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.send(t, data)

    def shutdown(self, how: int) -> None:
        """shutdown(2), as Linux's unix_shutdown: any socket may, connected or not; a
        listener shut for reading refuses connections."""
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise SyscallError(errno.EINVAL)
        if not self.connected:
            self.shut_rd = self.shut_rd or how in (SHUT_RD, SHUT_RDWR)
            self.shut_wr = self.shut_wr or how in (SHUT_WR, SHUT_RDWR)
            self.changed.notify()
            return
        if how in (SHUT_RD, SHUT_RDWR) and not self.shut_rd:
            self.shut_rd = True
            self.incoming.readers -= 1
        if how in (SHUT_WR, SHUT_RDWR) and not self.shut_wr:
            self.shut_wr = True
            self.outgoing.writers -= 1
        for p in (self.incoming, self.outgoing):
            p.readable.notify()
            p.writable.notify()

    # -- connections -------------------------------------------------------------------------

    def listen(self, backlog: int) -> None:
        if self.connected:
            raise SyscallError(errno.EINVAL)
        if not self.address:
            raise SyscallError(errno.EINVAL)  # unix(7): listen needs a bound socket
        self.listening = True
        self.backlog = min(max(backlog, 0), SOMAXCONN)

    def connect_to(self, t, listener: UnixSocket) -> None:
        """Connect to a listening socket: the connection waits in its backlog for accept."""
        if self.listening:
            raise SyscallError(errno.EINVAL)
        if self.connected:
            raise SyscallError(errno.EISCONN)
        if not listener.listening or listener.refs == 0 or listener.shut_rd:
            raise SyscallError(errno.ECONNREFUSED)
        if listener.kind != self.kind:
            # A stream socket and a seqpacket one do not meet: a path names the other kind
            # (EPROTOTYPE), an abstract name is looked up for this kind only.
            raise SyscallError(errno.ECONNREFUSED if listener.address[:1] == b"\0" else errno.EPROTOTYPE)
        if len(listener.pending) > listener.backlog:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(listener.changed)
        up, down = make_buffers(t.kernel, self.kind)
        server = UnixSocket(flags=2, incoming=up, outgoing=down, ino=up.ino, address=listener.address,
                            peer=self.address, cred=[t.tg.tgid, t.tg.creds[1], t.tg.creds[4]], kind=self.kind)
        if listener.passcred:
            server.options[(SOL_SOCKET, SO_PASSCRED)] = 1  # as accept(2) passes it on
        self.incoming, self.outgoing = down, up
        self.peer = listener.address
        self.partner, server.partner = server, self
        self.cred = list(listener.cred)
        listener.pending.append(server)
        listener.changed.notify()
        self.changed.notify()

    def accept(self) -> UnixSocket:
        if not self.listening:
            raise SyscallError(errno.EINVAL)
        if not self.pending:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.changed)
        server = self.pending.pop(0)
        self.changed.notify()  # room in the backlog for a waiting connect
        return server

    # -- file ---------------------------------------------------------------------------------

    def ready(self) -> int:
        if self.listening:
            return POLLIN if self.pending else 0
        if not self.connected:
            return POLLOUT | POLLHUP
        r = 0
        # As Linux's unix_poll: reading shut down, here or by the peer's writing (RCV_SHUTDOWN),
        # is POLLIN and POLLRDHUP; both directions shut down, POLLHUP.
        rcv_shutdown = self.incoming.writers == 0 or self.shut_rd
        if self.incoming.has_unread() or rcv_shutdown:
            r |= POLLIN
        if rcv_shutdown:
            r |= POLLRDHUP
        if self.incoming.reset:
            r |= POLLERR
        if rcv_shutdown and (self.outgoing.readers == 0 or self.shut_wr):
            r |= POLLHUP
        if self.has_room():
            r |= POLLOUT  # by room alone, whoever has shut down what (as unix_writable)
        return r

    def put(self, p: StreamBuffer, data: bytes, nonblock: bool) -> int:
        """What a send writes of `data` to the peer: Linux's skbs against our SO_SNDBUF."""
        if p.records is not None:
            return p.put_record(data, nonblock, self.sndbuf)
        return p.put_stream(data, nonblock, self.sndbuf)

    def has_room(self) -> bool:
        """Writable, as Linux's unix_writable: what is unread takes at most a quarter of SO_SNDBUF."""
        return self.outgoing.wmem * 4 <= self.sndbuf

    def queues(self, t) -> tuple:
        if not self.connected:
            return (self.changed,)
        return (self.incoming.readable, self.outgoing.writable)

    def release(self, embryo: bool = False) -> None:
        if self.connected:
            if self.incoming.has_unread() or embryo:
                self.outgoing.reset = self.outgoing.aborted = True  # unix(7) as Linux: the peer's next read fails
            UnixSocket.shutdown(self, SHUT_RDWR)  # the buffers' ends, not a subclass's checks of the call
            self.incoming.discard()
        self.stop_listening()

    def stop_listening(self) -> None:
        """Listen no more: connections not accepted yet are reset, accept fails (EINVAL)."""
        pending, self.pending = self.pending, []
        for server in pending:
            server.release(embryo=True)  # never accepted: their connectors see ECONNRESET
        self.listening = False
        self.changed.notify()

    def stat(self) -> dict:
        return dict(dev=0x8, ino=self.ino, mode=stat.S_IFSOCK | 0o777, nlink=1, uid=self.owner[0], gid=self.owner[1], rdev=0,
                    size=0, blksize=PIPE_BUF, blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        state = "listening" if self.listening else "connected" if self.connected else "unconnected"
        kind = "seqpacket" if self.kind == SOCK_SEQPACKET else "stream"
        return f"socket:[{self.ino}] (unix {kind}, {state}{_shown(self.address)})"


def _shown(address: bytes) -> str:
    return f" {address.decode(errors='replace').replace(chr(0), '@', 1)}" if address else ""


@savable
@dataclass(eq=False)
class UnixDgramSocket(SocketFile):
    """An AF_UNIX datagram socket: a queue of whole datagrams, and perhaps a peer (connect,
    socketpair) that is where sends go by default and the only sender it accepts."""

    messages = True
    ino: int = 0
    address: bytes = b""  # the bound name, as UnixSocket's
    peer_socket: UnixDgramSocket | None = None
    # [[sender's name, bytes, [OpenFile...], [pid, uid, gid] or None, sending socket]], oldest first
    queue: list = field(default_factory=list)
    shut_rd: bool = False
    shut_wr: bool = False
    cred: list = field(default_factory=lambda: list(NO_PEER))  # pid, uid, gid of its maker (a pair's)
    readable_queue: WaitQueue = field(default_factory=WaitQueue)  # readers waiting for a datagram
    room: WaitQueue = field(default_factory=WaitQueue)  # senders waiting for the queue to shorten, or wmem
    wmem: int = 0  # what its datagrams not read yet take of its send buffer (skb_truesize)

    def writable(self) -> bool:
        """Room in its send buffer, as Linux's unix_writable: a quarter of it free."""
        return self.wmem * 4 <= self.sndbuf

    @property
    def connected(self) -> bool:
        return self.peer_socket is not None

    def unread(self) -> int:
        """FIONREAD: the length of the next datagram."""
        return len(self.queue[0][1]) if self.queue else 0

    def send_to(self, t, target: UnixDgramSocket | None, data: bytes, flags: int, files: tuple = (),
                creds: list | None = None) -> int:
        """Queue one datagram at `target` (None: the peer), with `files` and `creds` (None:
        the sender's own if either end asks for them); waits while its queue is full."""
        if self.passcred and not self.address:
            autobind(t.kernel, self)  # as Linux does, so that the receiver sees who sent it
        if self.shut_wr:
            raise SyscallError(errno.EPIPE)  # (no SIGPIPE for a datagram, as on Linux)
        target = target or self.peer_socket
        if target is None:
            raise SyscallError(errno.ENOTCONN)
        if target.refs == 0:
            raise SyscallError(errno.ECONNREFUSED)
        if target.peer_socket is not None and target.peer_socket is not self:
            raise SyscallError(errno.EPERM)  # unix(7): it is connected to another socket
        if len(data) > self.sndbuf - 32:
            raise SyscallError(errno.EMSGSIZE)
        # As Linux: a send waits while the sender's buffer is full, and one to a socket that
        # is not its peer's peer also while that socket holds more than max_dgram_qlen.
        full = target.room if target.peer_socket is not self and len(target.queue) > MAX_DGRAM_QLEN else None
        if self.wmem >= self.sndbuf or full is not None:
            if self.flags & O_NONBLOCK or flags & MSG_DONTWAIT:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(full or self.room)
        if target.shut_rd:
            raise SyscallError(errno.EPIPE)  # (no SIGPIPE for a datagram, as on Linux)
        for f in files:
            f.refs += 1
        if creds is None and (self.passcred or target.passcred):
            creds = sender_creds(t)
        target.queue.append([self.address, bytes(data), list(files), creds, self])
        self.wmem += truesize(len(data))
        target.readable_queue.notify()
        return len(data)

    def recv_dgram(self, t, count: int, flags: int) -> tuple[bytes, bytes, int, list, list | None]:
        """The next datagram: (its first `count` bytes, its sender's name, its length, its
        files, its credentials)."""
        if not self.queue:
            if self.flags & O_NONBLOCK or flags & MSG_DONTWAIT:
                raise SyscallError(errno.EAGAIN)  # (even shut down for reading, as Linux's)
            if self.shut_rd:
                return b"", b"", 0, [], None
            raise WouldBlock(self.readable_queue)
        sender, data, files, *rest = self.queue[0]  # (images of older versions have no credentials)
        if not flags & MSG_PEEK:
            _sent(self.queue.pop(0))
            self.room.notify()
        return data[:count], sender, len(data), files, rest[0] if rest else None

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        data, _, _, files, _ = self.recv_dgram(t, count, 0)
        for f in files:
            drop_ref(f)
        return data

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            raise SyscallError(errno.ESPIPE)
        return self.send_to(t, None, data, 0)

    def shutdown(self, how: int) -> None:
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise SyscallError(errno.EINVAL)
        self.shut_rd = self.shut_rd or how in (SHUT_RD, SHUT_RDWR)
        self.shut_wr = self.shut_wr or how in (SHUT_WR, SHUT_RDWR)
        self.readable_queue.notify()
        self.room.notify()

    def ready(self) -> int:
        """As Linux's unix_dgram_poll: shut down for reading is POLLIN and POLLRDHUP, both
        ways POLLHUP; writable by room alone (whether shut down for writing or not)."""
        r = POLLIN | POLLRDHUP if self.shut_rd else 0
        if self.shut_rd and self.shut_wr:
            r |= POLLHUP
        if self.queue:
            r |= POLLIN
        peer = self.peer_socket
        if self.writable() and (peer is None or peer.peer_socket is self or len(peer.queue) <= MAX_DGRAM_QLEN):
            r |= POLLOUT
        return r

    def queues(self, t) -> tuple:
        peer = self.peer_socket
        return (self.readable_queue, self.room) + ((peer.room,) if peer is not None else ())

    def release(self) -> None:
        queue, self.queue = self.queue, []
        for entry in queue:
            _sent(entry)
            for f in entry[2]:
                drop_ref(f)
        self.room.notify()

    def stat(self) -> dict:
        return dict(dev=0x8, ino=self.ino, mode=stat.S_IFSOCK | 0o777, nlink=1, uid=self.owner[0], gid=self.owner[1], rdev=0,
                    size=0, blksize=PIPE_BUF, blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        return f"socket:[{self.ino}] (unix dgram{_shown(self.address)})"


def _sent(entry: list) -> None:
    """A queued datagram is gone (read, or dropped): its sender's buffer has that room again."""
    if len(entry) > 4:
        entry[4].wmem -= truesize(len(entry[1]))
        entry[4].room.notify()


def truesize(n: int) -> int:
    """What a datagram of `n` bytes takes of its sender's buffer: Linux's skb truesize on
    x86-64 (the data's kmalloc bucket beside its skb_shared_info, plus the sk_buff; past
    SKB_MAX_ALLOC, the rest in whole pages)."""
    pages = 0
    if n > SKB_MAX_ALLOC:
        pages = min(-(-(n - SKB_MAX_ALLOC) // 4096) * 4096, 17 * 4096)
        n -= pages
    return skb_truesize(n, pages)


def skb_truesize(head: int, paged: int) -> int:
    """The truesize of an skb of `head` bytes in its kmalloc'd head and `paged` in pages."""
    bucket = 1 << (-(-head // 64) * 64 + SKB_SHINFO - 1).bit_length()
    return bucket - SKB_SHINFO + SKB_OVERHEAD + paged


@savable
@dataclass(eq=False)
class SocketNode(Inode):
    """A socket's name in the filesystem (bind(2) to a path); connect(2) finds it here."""

    socket: UnixSocket | UnixDgramSocket | None = None


def make_buffers(kernel, kind: int = SOCK_STREAM) -> tuple[StreamBuffer, StreamBuffer]:
    kernel.pipe_ino += 2
    records = (lambda: []) if kind == SOCK_SEQPACKET else (lambda: None)
    return (StreamBuffer(ino=kernel.pipe_ino - 1, readers=1, writers=1, records=records()),
            StreamBuffer(ino=kernel.pipe_ino, readers=1, writers=1, records=records()))


def new_socket(kernel, flags: int, kind: int = SOCK_STREAM) -> UnixSocket | UnixDgramSocket:
    kernel.pipe_ino += 1
    if kind == SOCK_DGRAM:
        return UnixDgramSocket(flags=2 | flags, ino=kernel.pipe_ino)
    return UnixSocket(flags=2 | flags, ino=kernel.pipe_ino, kind=kind)


def make_pair(kernel, flags: int, kind: int = SOCK_STREAM) -> tuple:
    if kind == SOCK_DGRAM:
        kernel.pipe_ino += 2
        a = UnixDgramSocket(flags=2 | flags, ino=kernel.pipe_ino - 1)
        b = UnixDgramSocket(flags=2 | flags, ino=kernel.pipe_ino, peer_socket=a)
        a.peer_socket = b
        return a, b
    ab, ba = make_buffers(kernel, kind)
    a = UnixSocket(flags=2 | flags, incoming=ba, outgoing=ab, ino=ab.ino, kind=kind)
    b = UnixSocket(flags=2 | flags, incoming=ab, outgoing=ba, ino=ba.ino, kind=kind, partner=a)
    a.partner = b
    return a, b
