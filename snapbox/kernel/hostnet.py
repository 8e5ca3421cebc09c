"""Real sockets for the sandbox's traffic with the outside (`--network sandbox` or `host`).

A sandbox's TCP or UDP socket that listens, binds or connects where the outside can reach
it is backed by a HostSocket: a nonblocking host socket the sentry made in the sandbox's
network namespace (the sentry joins it before the first one is made). Traffic between two
sockets of the sandbox never uses them: it stays in the sentry (snapbox.kernel.inet).

What a checkpoint keeps of one:
- a bound or listening socket: its address, bound (and listening) again at restore;
  connections still in the host's accept queue are not carried (their clients see the
  listener close);
- an established TCP connection: its whole state read with TCP_REPAIR (sequence numbers,
  both queues, window, options, timestamp), as CRIU does. The socket stays in repair mode
  until the sandbox resumes, or is closed in it when the checkpoint ends the sandbox, so
  that the peer hears nothing. A restore builds the same connection again on the same
  addresses; where it cannot (the address is not here, or is taken), the socket comes back
  reset: ECONNRESET on the next use, as a connection the peer dropped.
- a UDP socket: its address; datagrams queued in the host socket are lost, as a datagram
  network may lose them.
Which of these became of each connection is recorded in `fate`, for the checkpoint's
summary and `snapbox inspect`.

A published port (`--publish`, snapbox.kernel.inet.Publication) is a HostSocket made in
the namespace the sandbox process started in (`outer`), not the sandbox's: see
remember_namespace. Its connections are kept and restored as any other. So is an outgoing
socket of a namespace snapbox made (`nat`): that namespace's veth pair leads only to this
host, so what the sandbox sends beyond its own namespace leaves from the host's side, as
a masquerade would send it (snapbox.kernel.inet.masquerades).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import selectors
import socket
import struct
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP
from snapbox.state import SnapboxError, nosave, savable

log = logging.getLogger("snapbox.kernel")

SOL_TCP = socket.IPPROTO_TCP
TCP_INFO, TCP_MAXSEG = 11, 2
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_REPAIR_OPTIONS = 19, 20, 21, 22
TCP_TIMESTAMP, TCP_REPAIR_WINDOW = 24, 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCP_REPAIR_OFF_NO_WP = -1  # leave repair mode without a window probe: the window was restored
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
TCP_ESTABLISHED = 1
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
MSG_ERRQUEUE = 0x2000
_WINDOW = struct.Struct("<5I")  # struct tcp_repair_window
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
_THREAD_NS = "/proc/thread-self/ns/net"
_outer_ns = -1  # the network namespace the sandbox process started in (remember_namespace)

# Options the sandbox sets that the host socket must carry: (level, option).
IP_RECVERR, IPV6_RECVERR = 11, 25  # (the socket module of Python 3.11 lacks them)
CARRIED = {(socket.SOL_SOCKET, socket.SO_REUSEADDR), (socket.SOL_SOCKET, socket.SO_REUSEPORT),
           (socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.SOL_SOCKET, socket.SO_RCVBUF),
           (socket.SOL_SOCKET, socket.SO_SNDBUF), (socket.SOL_SOCKET, socket.SO_BROADCAST),
           (SOL_TCP, socket.TCP_NODELAY), (SOL_TCP, socket.TCP_KEEPIDLE), (SOL_TCP, socket.TCP_KEEPINTVL),
           (SOL_TCP, socket.TCP_KEEPCNT), (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
           (socket.IPPROTO_UDPLITE, socket.UDPLITE_SEND_CSCOV), (socket.IPPROTO_UDPLITE, socket.UDPLITE_RECV_CSCOV),
           (socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IP, socket.IP_TOS),
           (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS), (socket.IPPROTO_IPV6, socket.IPV6_TCLASS),
           (socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}
# What a host datagram socket always asks of each datagram's header: its TTL (hop limit)
# and TOS (traffic class), which the sandbox's socket gives its program if it asks too.
IP_RECVTTL = 12  # (the socket module of Python 3.11 lacks it)
# And where it arrived: its destination address and port, and the interface (IP_PKTINFO,
# IP_RECVORIGDSTADDR and their IPv6 forms).
IP_PKTINFO, IP_RECVORIGDSTADDR, IPV6_RECVPKTINFO, IPV6_PKTINFO, IPV6_RECVORIGDSTADDR = 8, 20, 49, 50, 74
HEADER_FIELDS = ((socket.IPPROTO_IP, IP_RECVTTL), (socket.IPPROTO_IP, socket.IP_RECVTOS),
                 (socket.IPPROTO_IP, IP_PKTINFO), (socket.IPPROTO_IP, IP_RECVORIGDSTADDR))
HEADER_FIELDS6 = ((socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT), (socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS),
                  (socket.IPPROTO_IPV6, IPV6_RECVPKTINFO), (socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR))


def host_error(e: OSError) -> SyscallError:
    return SyscallError(e.errno or errno.EIO)


def format_address(addr: tuple) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def remember_namespace() -> None:
    """Keep hold of the network namespace this process is in now, before it joins the
    sandbox's: published ports are bound there, where the command was run."""
    global _outer_ns
    if _outer_ns < 0:
        _outer_ns = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def outer_namespace():
    """This thread in the namespace remember_namespace kept, for as long as the block runs
    (sockets stay in the namespace they were made in)."""
    if _outer_ns < 0 or os.fstat(_outer_ns).st_ino == os.stat(_THREAD_NS).st_ino:
        yield
        return
    here = os.open(_THREAD_NS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(_outer_ns)
        try:
            yield
        finally:
            _setns(here)
    finally:
        os.close(here)


@savable
@dataclass(eq=False)
class HostSocket:
    """The host socket behind one sandbox socket, and what a checkpoint keeps of it."""

    family: int = socket.AF_INET
    kind: int = socket.SOCK_STREAM
    role: str = "bound"  # bound, listening, connecting, connected, or reset (a connection lost)
    local: tuple = ()  # (ip, port) as the host socket has it
    remote: tuple = ()  # (ip, port) of the peer
    backlog: int = 0
    options: dict = None  # (level, option) -> int: what the sandbox set, carried over
    repair: dict | None = None  # a connection's TCP_REPAIR state, at checkpoint
    fate: str = ""  # what the last checkpoint or restore did with it (for reports)
    outer: bool = False  # made in the namespace the sandbox started in (a published port, or nat)
    nat: bool = False  # an outgoing socket of a namespace snapbox made, sent from the host's side
    protocol: int = 0  # socket(2)'s third argument (IPPROTO_UDPLITE; 0: the kind's own)
    sock: socket.socket | None = nosave(default=None)
    handed_over: bool = nosave(default=False)  # let go for a migration; see let_go

    # -- making -----------------------------------------------------------------------------

    @classmethod
    def open(cls, family: int, kind: int, options: dict, outer: bool = False, nat: bool = False,
             protocol: int = 0) -> HostSocket:
        h = cls(family=int(family), kind=int(kind), options=dict(options), outer=outer or nat, nat=nat,
                protocol=protocol)
        h.sock = h._new_socket()
        return h

    def _new_socket(self) -> socket.socket:
        try:
            with outer_namespace() if self.outer else nullcontext():
                s = socket.socket(self.family, self.kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                  self.protocol)
        except OSError as e:
            raise host_error(e) from None
        for (level, name), value in (self.options or {}).items():
            self._apply(s, level, name, value)
        if self.kind == socket.SOCK_DGRAM:
            for level, name in HEADER_FIELDS + (HEADER_FIELDS6 if self.family == socket.AF_INET6 else ()):
                s.setsockopt(level, name, 1)
        return s

    def _apply(self, s: socket.socket, level: int, name: int, value) -> None:
        if (level, name) not in CARRIED or (level == socket.IPPROTO_IPV6 and self.family != socket.AF_INET6):
            return
        try:
            s.setsockopt(level, name, value)
        except OSError as e:
            log.warning("host socket option (%d, %d) = %r not set: %s", level, name, value, e.strerror)

    def set_option(self, level: int, name: int, value) -> None:
        """setsockopt of the sandbox socket: the host one follows."""
        self.options = dict(self.options or {})
        self.options[(level, name)] = value
        if self.sock is not None:
            self._apply(self.sock, level, name, value)

    @property
    def fd(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def bind(self, addr: tuple) -> tuple:
        """Bind; returns the address the host gave (port 0: an ephemeral one)."""
        try:
            self.sock.bind(addr)
        except OSError as e:
            raise host_error(e) from None
        self.local = self.sock.getsockname()[:2]
        return self.local

    def listen(self, backlog: int) -> None:
        if self.sock is None:
            self.role, self.backlog = "listening", backlog
            return
        try:
            self.sock.listen(backlog)
        except OSError as e:
            raise host_error(e) from None
        self.role, self.backlog = "listening", backlog

    def unlisten(self, loop) -> None:
        """Stop listening and keep the address: the host refuses connections to it again
        (those waiting in its accept queue are reset, as when a listener closes). A
        listening socket cannot go back, so a new one takes its address and fd number."""
        if self.role != "listening":
            return
        self.role = "bound"
        if self.sock is None:
            return
        fd = self.sock.fileno()
        self.close()
        try:
            made = self._bound_again()
        except OSError as e:
            log.warning("%s given up: %s", format_address(self.local), e.strerror)
            return
        self._take_fd(made, fd, loop)

    def _bound_again(self) -> socket.socket:
        """A new host socket on this one's address (listening if this one was)."""
        s = self._new_socket()
        try:
            s.bind(self.local)
            if self.role == "listening":
                s.listen(self.backlog)
        except OSError:
            s.close()
            raise
        return s

    def _take_fd(self, made: socket.socket, fd: int, loop) -> None:
        """`made` becomes this socket, under the fd number `fd` (which the loop knows)."""
        if made.fileno() == fd:  # the number was free, and the host gave it again
            self.sock = made
        else:
            os.dup2(made.fileno(), fd)
            made.close()
            if self.sock is None:
                self.sock = socket.socket(fileno=fd)
                self.sock.setblocking(False)
        loop.refresh(fd)

    def connect(self, addr: tuple) -> int:
        """Start (or ask after) a connection: the host's errno, 0 once connected."""
        if self.role not in ("connecting", "connected"):
            self.role, self.remote = "connecting", addr
        err = self.sock.connect_ex(addr)
        if err in (0, errno.EISCONN, errno.EINPROGRESS):
            self.local = self.sock.getsockname()[:2]  # the host chose it as the connection began
        if err in (0, errno.EISCONN):
            self.role = "connected"
            return 0
        if err not in (errno.EINPROGRESS, errno.EALREADY):
            self.role, self.remote = "bound", ()
        return err

    def associate(self, addr: tuple | None) -> None:
        """A UDP socket's connect(2) (None: AF_UNSPEC, none again): the host then reports
        a destination's ICMP errors, and takes datagrams from it alone."""
        if self.sock is None:
            return
        if addr is None:
            unspec = (ctypes.c_char * 16)()
            _libc.connect(self.fd, unspec, 16)
            self.remote = ()
            return
        try:
            self.sock.connect(addr)
        except OSError as e:
            raise host_error(e) from None
        self.remote = addr

    def settle(self) -> None:
        """A connect the host has finished meanwhile makes the socket connected (one that
        failed stays connecting: the next connect(2) reports why, as on Linux)."""
        if self.role != "connecting" or self.sock is None:
            return
        try:
            self.sock.getpeername()
        except OSError:
            return
        self.role = "connected"
        self.local = self.sock.getsockname()[:2]

    def accept(self) -> HostSocket | None:
        """A connection from the host's accept queue, or None."""
        if self.sock is None:
            return None
        try:
            conn, peer = self.sock.accept()
        except BlockingIOError:
            return None
        except OSError as e:
            raise host_error(e) from None
        conn.setblocking(False)
        h = HostSocket(family=self.family, kind=self.kind, role="connected", local=conn.getsockname()[:2],
                       remote=peer[:2], options=dict(self.options or {}), outer=self.outer, nat=self.nat)
        h.sock = conn
        return h

    # -- data -------------------------------------------------------------------------------

    def _wait(self, t, event: int, nonblock: bool) -> Exception:
        """What a call that would block raises: EAGAIN, or a wait for the host fd."""
        if nonblock:
            return SyscallError(errno.EAGAIN)
        return WouldBlock(t.kernel.loop.host_queue(self.fd, event))

    def recv(self, t, count: int, flags: int, nonblock: bool) -> tuple[bytes, tuple]:
        """Up to `count` bytes (a datagram: and its source)."""
        if self.role == "reset":
            self.role = "closed"
            raise SyscallError(errno.ECONNRESET)
        if self.sock is None:
            return b"", ()
        try:
            data, source = self.sock.recvfrom(count, (flags & socket.MSG_PEEK) | socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise self._wait(t, selectors.EVENT_READ, nonblock) from None
        except OSError as e:
            raise host_error(e) from None
        return data, tuple(source[:2]) if source else ()

    def recv_datagram(self, t, count: int, flags: int, nonblock: bool) -> tuple[bytes, tuple, tuple | None]:
        """A datagram's first `count` bytes, its source, and its TTL (hop limit), TOS
        (traffic class) and destination as the host read them (None if it did not)."""
        if self.sock is None:
            return b"", (), None
        try:
            data, ancillary, _, source = self.sock.recvmsg(count, 256, (flags & socket.MSG_PEEK) | socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise self._wait(t, selectors.EVENT_READ, nonblock) from None
        except OSError as e:
            raise host_error(e) from None
        return data, tuple(source[:2]) if source else (), _header_fields(ancillary)

    def send(self, t, data: bytes, flags: int, nonblock: bool, dest: tuple | None = None,
             ancillary: list = ()) -> int:
        """Send what the host takes now; EPIPE (the caller raises SIGPIPE) once it is shut.
        `ancillary`: a datagram's control messages, (level, type, data)."""
        if self.sock is None or self.role in ("reset", "closed"):
            if self.role == "reset":
                self.role = "closed"
                raise SyscallError(errno.ECONNRESET)
            raise SyscallError(errno.EPIPE)
        try:
            if ancillary:
                return self.sock.sendmsg([data], ancillary, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL,
                                         *([dest] if dest is not None else []))
            if dest is not None:
                return self.sock.sendto(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, dest)
            return self.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            raise self._wait(t, selectors.EVENT_WRITE, nonblock) from None
        except OSError as e:
            raise host_error(e) from None

    def queued_error(self) -> tuple[bytes, tuple, list] | None:
        """recvmsg(MSG_ERRQUEUE) of the host socket, without waiting: (data, address, its
        control messages as (level, type, data)), or None when its error queue is empty."""
        if self.sock is None:
            return None
        try:
            data, ancillary, _, address = self.sock.recvmsg(65536, 1024, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            raise host_error(e) from None
        return data, tuple(address[:2]) if address else (), list(ancillary)

    def datagrams(self):
        """The datagrams the host holds for this socket now, oldest first, without waiting:
        (bytes, (ip, port) of the sender, its header's TTL and TOS or None)."""
        while self.sock is not None:
            try:
                data, ancillary, _, source = self.sock.recvmsg(65536, 256, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier send: nothing to queue
                continue
            yield data, tuple(source[:2]), _header_fields(ancillary)

    def shutdown(self, how: int) -> None:
        if self.sock is None:
            raise SyscallError(errno.ENOTCONN)
        try:
            self.sock.shutdown(how)
        except OSError as e:
            raise host_error(e) from None

    def error(self) -> int:
        """SO_ERROR: read and cleared."""
        if self.sock is None:
            return 0
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def unread(self) -> int:
        if self.sock is None:
            return 0
        return _I32.unpack(fcntl.ioctl(self.fd, SIOCINQ, bytes(4)))[0]

    def poll(self) -> int:
        if self.sock is None:
            if self.role == "reset":
                return POLLIN | POLLOUT | POLLERR | POLLHUP
            return POLLIN | POLLHUP if self.role == "closed" else 0
        p = select.poll()
        p.register(self.fd, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
        got = p.poll(0)
        return got[0][1] & (POLLIN | POLLOUT | POLLERR | POLLHUP | POLLRDHUP) if got else 0

    def queues(self, t) -> tuple:
        if self.sock is None:
            return ()
        loop = t.kernel.loop
        return (loop.host_queue(self.fd, selectors.EVENT_READ), loop.host_queue(self.fd, selectors.EVENT_WRITE))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def describe(self) -> str:
        fate = f", {self.fate}" if self.fate else ""
        return f"host {self.role}{fate}"

    # -- checkpoint -------------------------------------------------------------------------

    def before_save(self) -> None:
        self.repair = None
        if self.role == "connected" and self.kind == socket.SOCK_STREAM and self.sock is not None:
            try:
                self.repair = _dump(self.sock)
                self.fate = "saved with TCP_REPAIR"
            except OSError as e:
                self.fate = f"not saved ({e.strerror}): it comes back reset"
        elif self.role in ("connecting", "connected"):
            self.fate = "not saved (not established): it comes back reset"
        elif self.role in ("bound", "listening"):
            self.fate = "address kept"

    def resume(self) -> None:
        """The sandbox goes on after a checkpoint: the connection leaves repair mode."""
        if self.repair is not None and self.sock is not None:
            try:
                self.sock.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
            except OSError as e:
                log.warning("connection %s left in repair mode: %s", self.remote, e.strerror)
        self.repair = None

    def let_go(self) -> None:
        """The image just written is to run elsewhere (a migration) while this sandbox waits,
        paused: a saved connection's host socket is closed in repair mode, which tells the
        peer nothing and leaves its addresses to the receiver; so is a published port's,
        which the receiver binds on this host's side (and an outgoing datagram socket's
        address there). The fd number stays taken (by /dev/null) until take_back or the end."""
        published = self.outer and self.role in ("bound", "listening")
        if self.sock is None or (self.repair is None and not published):
            return
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.dup2(null, self.sock.fileno())
        finally:
            os.close(null)
        self.handed_over = True
        self.fate = "handed over" if published else "handed over with TCP_REPAIR"

    def take_back(self, loop) -> None:
        """This sandbox goes on after all (the migration failed): what was let go is made
        again (a connection from its saved state), under its old fd number."""
        if not self.handed_over:
            return
        self.handed_over = False
        fd = self.sock.fileno()
        if self.repair is None:
            try:
                made = self._bound_again()
            except OSError as e:
                self.close()
                self.fate = f"lost ({e.strerror})"
                log.warning("%s not taken back: %s", format_address(self.local), e.strerror)
                return
            self._take_fd(made, fd, loop)
            self.fate = "taken back"
            return
        try:
            made = _restore(self, self.repair)
        except OSError as e:
            self.role, self.fate = "reset", f"reset (not taken back: {e.strerror})"
        else:
            self._take_fd(made, fd, loop)
            self.fate = "taken back with TCP_REPAIR"
        self.repair = None

    def after_load(self, ctx) -> None:
        if ctx is None or getattr(ctx, "host_sockets", None) is None:
            return  # an image read to be described, not run: nothing is bound
        ctx.host_sockets.append(self)
        if ctx.network_mode == "none" and (self.nat or not self.outer):
            # Restored without a network: the sandbox's own sockets still reach it, nothing else.
            if self.role in ("bound", "listening"):
                self.fate = "not bound again (the sandbox has no network now)"
            else:
                self.role, self.fate, self.repair = "reset", "reset (the sandbox has no network now)", None
            return
        if self.role in ("bound", "listening") and self.outer and not self.nat and ctx.republish:
            self.fate = "not bound again (restore --publish replaces the published ports)"
            return
        if self.role in ("bound", "listening"):
            try:
                self.sock = self._bound_again()
            except OSError as e:
                what = "the sandbox's address" if not self.outer else \
                    "the address of an outgoing socket" if self.nat else "published port"
                raise SnapboxError(f"cannot restore: {what} {format_address(self.local)} is not available on "
                                   f"this host ({e.strerror})") from None
            self.fate = "bound again"
            return
        if self.role in ("connecting", "connected") and self.repair is None:
            self.role, self.fate = "reset", "reset (not saved)"

    def reconnect(self) -> None:
        """Make a saved connection again, once every listener of the image is bound (a
        socket out of repair mode would keep a listener from its port)."""
        if self.role != "connected" or self.repair is None or self.sock is not None:
            return
        try:
            self.sock = _restore(self, self.repair)
            self.fate = "restored with TCP_REPAIR"
        except OSError as e:
            self.role, self.fate = "reset", f"reset (not restored: {e.strerror})"
        self.repair = None

    @property
    def is_connection(self) -> bool:
        return self.kind == socket.SOCK_STREAM and self.role in ("connecting", "connected", "reset")

    def report(self) -> dict:
        return {"kind": "tcp" if self.kind == socket.SOCK_STREAM else "udp", "role": self.role,
                "local": list(self.local), "remote": list(self.remote), "fate": self.fate}


def _header_fields(ancillary: list) -> tuple | None:
    """(TTL or hop limit, TOS or traffic class, (destination address, port, interface
    index) or None) from a host recvmsg's control messages; None without the first two."""
    ttl = tos = ip = port = None
    index = 0
    for level, kind, data in ancillary:
        if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT)):
            ttl = int.from_bytes(data[:4], "little", signed=True)
        elif (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS) and data:
            tos = data[0]
        elif (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_TCLASS):
            tos = int.from_bytes(data[:4], "little", signed=True)
        elif (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO) and len(data) >= 12:
            index, ip = int.from_bytes(data[:4], "little"), socket.inet_ntop(socket.AF_INET, data[8:12])
        elif (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO) and len(data) >= 20:
            index, ip = int.from_bytes(data[16:20], "little"), socket.inet_ntop(socket.AF_INET6, data[:16])
        elif (level, kind) in ((socket.IPPROTO_IP, IP_RECVORIGDSTADDR),  # IP_ORIGDSTADDR: the same number
                               (socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR)) and len(data) >= 4:
            port = int.from_bytes(data[2:4], "big")
    if ttl is None or tos is None:
        return None
    return ttl, tos, (ip, port, index) if ip is not None and port is not None else None


def _dump(s: socket.socket) -> dict:
    """The state of an established connection, read in repair mode (left on)."""
    info = s.getsockopt(SOL_TCP, TCP_INFO, 104)
    if info[0] != TCP_ESTABLISHED:
        raise OSError(errno.ENOTCONN, "the connection is not established")
    s.setsockopt(SOL_TCP, TCP_REPAIR, 1)
    try:
        state = {"options": info[5], "snd_wscale": info[6] & 0xF, "rcv_wscale": info[6] >> 4,
                 "mss": s.getsockopt(SOL_TCP, TCP_MAXSEG), "timestamp": _U32.unpack(
                     s.getsockopt(SOL_TCP, TCP_TIMESTAMP, 4))[0],
                 "window": list(_WINDOW.unpack(s.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, _WINDOW.size))),
                 "local": list(s.getsockname()[:2]), "remote": list(s.getpeername()[:2])}
        for name, queue, ioc in (("send", TCP_SEND_QUEUE, SIOCOUTQ), ("recv", TCP_RECV_QUEUE, SIOCINQ)):
            s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
            length = _I32.unpack(fcntl.ioctl(s.fileno(), ioc, bytes(4)))[0]
            state[f"{name}_seq"] = _U32.unpack(s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ, 4))[0]
            state[f"{name}_data"] = _peek_all(s, length)
        return state
    except OSError:
        s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
        raise


def _peek_all(s: socket.socket, length: int) -> bytes:
    if not length:
        return b""
    data = s.recv(length, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if len(data) != length:
        raise OSError(errno.EIO, f"read {len(data)} of {length} queued bytes")
    return data


def _restore(h: HostSocket, state: dict) -> socket.socket:
    """The connection `state` describes, made again in repair mode and then let go."""
    s = h._new_socket()
    try:
        # Repair mode forces the port to be shared with the sandbox's listener (it must
        # come after SO_REUSEADDR, which would set that back).
        s.setsockopt(SOL_TCP, TCP_REPAIR, 1)
        s.bind(tuple(state["local"]))
        for queue, seq, data in ((TCP_RECV_QUEUE, state["recv_seq"], state["recv_data"]),
                                 (TCP_SEND_QUEUE, state["send_seq"], state["send_data"])):
            s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
            s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, _U32.pack((seq - len(data)) & 0xFFFFFFFF))
        err = s.connect_ex(tuple(state["remote"]))
        if err:
            raise OSError(err, f"connect in repair mode: {errno.errorcode.get(err, err)}")
        opts = [(TCPOPT_MSS, state["mss"])]
        if state["options"] & TCPI_OPT_SACK:
            opts.append((TCPOPT_SACK_PERM, 0))
        if state["options"] & TCPI_OPT_WSCALE:
            opts.append((TCPOPT_WINDOW, state["snd_wscale"] | state["rcv_wscale"] << 16))
        if state["options"] & TCPI_OPT_TIMESTAMPS:
            opts.append((TCPOPT_TIMESTAMP, 0))
        s.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(struct.pack("<II", c, v) for c, v in opts))
        if state["options"] & TCPI_OPT_TIMESTAMPS:
            s.setsockopt(SOL_TCP, TCP_TIMESTAMP, _U32.pack(state["timestamp"]))
        for queue, data in ((TCP_RECV_QUEUE, state["recv_data"]), (TCP_SEND_QUEUE, state["send_data"])):
            s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)
            view = memoryview(data)
            while view:
                n = s.send(view)
                view = view[n:]
        s.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, _WINDOW.pack(*state["window"]))
        s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
    except BaseException:
        s.close()
        raise
    return s
