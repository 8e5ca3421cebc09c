"""TCP and UDP sockets of the sandbox (tcp(7), udp(7), ip(7), ipv6(7)).

A TCP connection between two sockets of the sandbox stays inside the sentry: it is a pair
of StreamBuffers, as a unix stream connection is, and a UDP datagram between two of its
sockets goes from one socket's send to another's queue; so a checkpoint holds listeners,
connections, queued datagrams and every unread byte, and a restore brings them back whole.

With no network but loopback (`--network none`, as runsc's) that is all there is: the
sandbox's addresses are 127.0.0.0/8 and ::1; binding to another address fails with
EADDRNOTAVAIL, and reaching one with ENETUNREACH. With a network (`sandbox` or `host`),
a socket that binds or listens also gets a host socket in the sandbox's namespace, bound
to the same address (the host chooses the port of port 0), so that the outside reaches
it; and a connect or send that finds no socket of the sandbox at its destination goes
out through a host socket (snapbox.kernel.hostnet). In a namespace snapbox made, whose
only link leads to this host, a socket's first connect or send to another host makes its
host socket on the side snapbox ran in (masquerades): a masquerade done by the sentry,
which needs no forwarding or firewall rule on the host.

Whatever the mode, a published port (`--publish`, Publication) takes connections on the
side snapbox was run on and hands them to the sandbox's listener on its port.

Ports are one space shared by IPv4 and IPv6 (a dual-stack IPv6 socket bound to :: takes
the port for both), ephemeral ones taken from 32768-60999 as Linux's ip_local_port_range
(from a random place in it). TCP and UDP have a port space each.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import logging
import os
import secrets
import struct
import zlib
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDHUP
from snapbox.kernel.hostnet import HostSocket, format_address
from snapbox.kernel.pipe import PIPE_BUF, PIPE_CAPACITY
from snapbox.kernel.signals import SIGPIPE
from snapbox.kernel.socket import MSG_DONTWAIT, MSG_NOSIGNAL, MSG_PEEK, SHUT_RD, SHUT_RDWR, SHUT_WR, SO_RCVLOWAT, \
    SO_SNDBUF, SOL_SOCKET, DatagramSocket, UnixSocket, make_buffers
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import SnapboxError, savable

log = logging.getLogger("snapbox.kernel")

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE = 6, 17, 136
UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV = 10, 11  # udplite(7), at level IPPROTO_UDPLITE
# The fields of a datagram's IP header a receiver may ask for (ip(7), ipv6(7)): the TTL or
# hop limit, the TOS or traffic class; a sender sets them with options or control messages.
SOL_IP, SOL_IPV6 = 0, 41
IP_TOS, IP_TTL, IP_RECVTTL, IP_RECVTOS = 1, 2, 12, 13
IPV6_UNICAST_HOPS, IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT, IPV6_RECVTCLASS, IPV6_TCLASS = 16, 51, 52, 66, 67
# And where a datagram arrived: IP_PKTINFO (struct in_pktinfo), IP_RECVORIGDSTADDR (its
# destination's sockaddr_in: IP_ORIGDSTADDR), and the IPv6 forms.
IP_PKTINFO, IP_RECVORIGDSTADDR, IPV6_RECVPKTINFO, IPV6_PKTINFO, IPV6_RECVORIGDSTADDR = 8, 20, 49, 50, 74
LOOPBACK_INDEX = 1  # lo's interface index, in every network namespace
OUTSIDE_INDEX = -1  # a multicast interface beyond the sandbox (its datagrams go through the host)
IP_MULTICAST_IF, IP_MULTICAST_TTL, IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP, IP_MULTICAST_ALL = 32, 33, 35, 36, 49
# The option that asks for each of these control messages (its level is the message's).
_ASKED_BY = {(SOL_IP, IP_TTL): IP_RECVTTL, (SOL_IP, IP_TOS): IP_RECVTOS, (SOL_IP, IP_PKTINFO): IP_PKTINFO,
             (SOL_IP, IP_RECVORIGDSTADDR): IP_RECVORIGDSTADDR, (SOL_IPV6, IPV6_HOPLIMIT): IPV6_RECVHOPLIMIT,
             (SOL_IPV6, IPV6_TCLASS): IPV6_RECVTCLASS, (SOL_IPV6, IPV6_PKTINFO): IPV6_RECVPKTINFO,
             (SOL_IPV6, IPV6_RECVORIGDSTADDR): IPV6_RECVORIGDSTADDR}
DEFAULT_TTL = 64  # net.ipv4.ip_default_ttl, net.ipv6.conf.all.hop_limit
# The error queue (ip(7) IP_RECVERR, ipv6(7) IPV6_RECVERR): read with recvmsg(MSG_ERRQUEUE).
IP_RECVERR, IPV6_RECVERR, MSG_ERRQUEUE = 11, 25, 0x2000
SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 2, 3
ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP6_DST_UNREACH, ICMP6_DST_UNREACH_NOPORT = 3, 3, 1, 4
_SOCK_EXTENDED_ERR = struct.Struct("<IBBBBII")  # ee_errno, origin, type, code, pad, info, data
UDP_MAX = 65507  # udp(7): the largest datagram over IPv4 (65535 less the IP and UDP headers)
RCVBUF = 212992  # net.core.rmem_default: what a socket may hold queued
MAX_PEERS = 4096  # the clients a published UDP port remembers, to send replies from it
EPHEMERAL = (32768, 60999)  # net.ipv4.ip_local_port_range's default (Kernel.local_ports: the sandbox's)
EPHEMERAL_TRIES = 64  # ports the host may choose for a bind to port 0 before one the sandbox has free
_SOCKADDR_IN = struct.Struct("!HH4s8x")  # family (host order, fixed below), port, address
_SOCKADDR_IN6 = struct.Struct("!HHI16sI")  # family, port, flowinfo, address, scope id


# When data came, for recvmsg (socket(7)): SO_TIMESTAMP gives a timeval, SO_TIMESTAMPNS a
# timespec, each as a control message of its own type (the options are kept as one:
# (SOL_SOCKET, SO_TIMESTAMP) -> STAMP_USEC or STAMP_NSEC); SIOCGSTAMP and SIOCGSTAMPNS ask
# for the last datagram's. TCP_INQ: what is left to read, with each read of TCP.
SO_TIMESTAMP, SO_TIMESTAMPNS, STAMP_USEC, STAMP_NSEC = 29, 35, 1, 2
SIOCGSTAMP, SIOCGSTAMPNS = 0x8906, 0x8907
TCP_INQ = 36


def stamp_control(kind: int, ns: int) -> tuple[int, int, bytes]:
    """The control message of SO_TIMESTAMP (kind STAMP_USEC) or SO_TIMESTAMPNS for `ns`."""
    if kind == STAMP_NSEC:
        return 1, SO_TIMESTAMPNS, struct.pack("<qq", ns // 10**9, ns % 10**9)
    return 1, SO_TIMESTAMP, struct.pack("<qq", ns // 10**9, ns % 10**9 // 1000)


# TCP_INFO: Linux's TCP states, and the figures of its loopback connections.
TCP_INFO, TCP_INFO_SIZE = 11, 280  # struct tcp_info as Linux 6.18 has it (copied no further than asked)
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_FIN_WAIT2, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LISTEN = 1, 2, 5, 7, 8, 10
TCPI_OPT_TIMESTAMPS, TCPI_OPT_WSCALE = 1, 4
TCP_RTO_MIN_US, TCP_TIMEOUT_INIT_US = 200_000, 1_000_000
LOOPBACK_MSS, TCP_MSS_DEFAULT, LOOPBACK_PMTU = 65483, 536, 65535
TCP_INFINITE_SSTHRESH, TCP_INIT_CWND, TCP_REORDERING = 0x7FFFFFFF, 10, 3


def stamp_ioctl(t, stamp: int, request: int, arg: int) -> int:
    """SIOCGSTAMP (a timeval) or SIOCGSTAMPNS (a timespec): when the last datagram read
    came; ENOENT before any was read (always, for TCP, whose reads never set it)."""
    if stamp < 0:
        raise SyscallError(errno.ENOENT)
    sub = stamp % 10**9 if request == SIOCGSTAMPNS else stamp % 10**9 // 1000
    t.mm.write(arg, struct.pack("<qq", stamp // 10**9, sub))
    return 0


LINGER = (1, 13)  # (SOL_SOCKET, SO_LINGER): (l_onoff, l_linger) as setsockopt left it
REUSEPORT = (1, 15)  # (SOL_SOCKET, SO_REUSEPORT): sockets that all set it share a port
TCP_LINGER2 = (6, 8)  # (IPPROTO_TCP, TCP_LINGER2): FIN_WAIT2's time in seconds (0: the system's, -1: none)
TCP_TIMEWAIT_LEN, TCP_FIN_TIMEOUT = 60, 60  # seconds: TIME_WAIT's, and net.ipv4.tcp_fin_timeout
MSG_OOB = 0x1


@savable
@dataclass(eq=False)
class InetSocket(UnixSocket):
    """A TCP socket of the sandbox (AF_INET or AF_INET6, SOCK_STREAM): unconnected,
    listening, or one end of a loopback connection. `address` and `peer` (the unix
    socket's names) are unused; `local` and `remote` are (ip text, port)."""

    family: int = AF_INET
    local: tuple = ()  # (ip, port) once bound (explicitly, or by connect or listen)
    remote: tuple = ()  # (ip, port) of the peer once connected
    options: dict = field(default_factory=dict)  # (level, option) -> int, as setsockopt left it
    in_progress: bool = False  # a nonblocking connect said EINPROGRESS: the next connect says 0
    # A nonblocking connect to a port no one listens on said EINPROGRESS and then failed, as
    # Linux's does once the reset comes: `error` (ECONNREFUSED) is pending until SO_ERROR,
    # a read, a send or another connect takes it; reads then see the end, sends EPIPE, and
    # the next connect says ECONNABORTED and leaves the socket unconnected.
    refused: bool = False
    error: int = 0
    # A nonblocking connect to a listener whose backlog was full said EINPROGRESS: its SYN
    # was dropped, to be sent again (the listener's `syn_waiting`). It connects when an
    # accept makes room, or is refused if the listener stops listening first.
    syn_to: InetSocket | None = None
    syn_waiting: list = field(default_factory=list)  # a listener's: [(socket, its process's creds)]
    host: HostSocket | None = None  # the host socket behind it, where the outside can reach it
    published: list = field(default_factory=list)  # the Publications a listener takes connections from
    # A send found the peer closed and went out all the same, as Linux's first one does
    # (a closed peer's answer to it is a reset: the next send fails with EPIPE).
    wrote_to_closed: bool = False
    kernel: object = None  # for its clock: a closed connection's end keeps its address a while
    closed_first: bool = False  # it sent its FIN before the peer's came (the active close)
    # Closed, it holds its address until then (sandbox monotonic ns), as Linux's TIME_WAIT and
    # FIN_WAIT2 sockets do: a bind to it fails unless both set SO_REUSEADDR.
    lingers_until: int = 0

    def option(self, level: int, name: int, default: int = 0) -> int:
        return self.options.get((level, name), default)

    def _outside(self) -> list[HostSocket]:
        """The host sockets a listener takes connections from."""
        return ([self.host] if self.host is not None else []) + [p.sock for p in self.published]

    @property
    def external(self) -> bool:
        """A connection made (or being made) through the host, not inside the sentry."""
        return self.host is not None and self.host.role in ("connecting", "connected", "reset", "closed")

    @property
    def connected(self) -> bool:
        if self.incoming is not None:
            return True
        if self.host is not None and self.host.role == "connecting":
            self.host.settle()
        return self.host is not None and self.host.role in ("connected", "reset", "closed")

    def put(self, p, data: bytes, nonblock: bool) -> int:
        """TCP inside the sentry: a pipe's room, not unix sockets' skbs."""
        return p.put(data, nonblock, atomic=False)

    def has_room(self) -> bool:
        return len(self.outgoing.buf) + PIPE_BUF <= self.outgoing.capacity

    def _nonblock(self, flags: int) -> bool:
        return bool(self.flags & O_NONBLOCK or flags & MSG_DONTWAIT)

    def recv_msg(self, t, count: int, flags: int = 0) -> tuple[bytes, list, list | None]:
        if self.refused:
            if err := self.pending_error():  # the refusal, once; then the end
                raise SyscallError(err)
            return b"", [], None
        if self.syn_to is not None:
            self._wait_for_handshake(flags)
        if not self.external:
            if flags & MSG_OOB:
                raise SyscallError(errno.EINVAL)  # tcp(7): no urgent data is ever kept apart (sent inline)
            return super().recv_msg(t, count, flags)
        if self.shut_rd:
            return b"", [], None
        # Still connecting, the host's socket waits for the handshake, or says how it failed.
        return self.host.recv(t, count, flags, self._nonblock(flags))[0], [], None

    def ioctl(self, t, request: int, arg: int) -> int:
        if request in (SIOCGSTAMP, SIOCGSTAMPNS):
            return stamp_ioctl(t, -1, request, arg)
        return super().ioctl(t, request, arg)

    def state(self) -> int:
        """Linux's TCP state of this end (tcp_states.h)."""
        if self.listening:
            return TCP_LISTEN
        if self.syn_to is not None:
            return TCP_SYN_SENT
        if self.refused or not self.connected:
            return TCP_CLOSE
        peer_fin = self.incoming.writers == 0
        if self._closed():
            return TCP_CLOSE
        if self.shut_wr:
            return TCP_FIN_WAIT2
        return TCP_CLOSE_WAIT if peer_fin else TCP_ESTABLISHED

    def tcp_info(self) -> bytes:
        """TCP_INFO (struct tcp_info, as long as the host's): of a connection through the
        host, the host's own; of one inside the sentry, its state and byte counts, with
        the figures of a Linux loopback connection that has no losses, no queue in flight
        and the initial window (the sentry's TCP has no congestion control to report)."""
        if self.external:
            return self.host.sock.getsockopt(IPPROTO_TCP, TCP_INFO, TCP_INFO_SIZE)
        state = self.state()
        connected = state not in (TCP_LISTEN, TCP_CLOSE, TCP_SYN_SENT)
        mss = LOOPBACK_MSS if connected else TCP_MSS_DEFAULT
        sent = self.outgoing.total if connected else 0
        received = self.incoming.total if connected else 0
        head = struct.pack("<8B24I", state, 0, 0, 0, 0, TCPI_OPT_TIMESTAMPS | TCPI_OPT_WSCALE if connected else 0,
                           0x77 if connected else 0, 0, TCP_RTO_MIN_US if connected else TCP_TIMEOUT_INIT_US,
                           0, mss, mss, len(self.pending) if self.listening else 0,
                           self.backlog if self.listening else 0, 0, 0, 0, 0, 0, 0, 0,
                           LOOPBACK_PMTU if connected else 0, 0, 0, 0, TCP_INFINITE_SSTHRESH, TCP_INIT_CWND,
                           mss if connected else 0, TCP_REORDERING, 0, 0, 0)
        tail = struct.pack("<QQQQ", 0, 0, sent, received)
        return (head + tail + bytes(TCP_INFO_SIZE))[:TCP_INFO_SIZE]

    def tcp_control(self, t, data: bytes) -> list[tuple[int, int, bytes]]:
        """The control messages a read of TCP gives, in tcp_recvmsg's order: when the data
        came (SO_TIMESTAMP/SO_TIMESTAMPNS; for a connection beyond the sandbox, when the
        sentry read it), then TCP_INQ's count of what is left (1 for none once the peer's
        FIN is in: it counts as one, as tcp_inq_hint's sequence numbers do)."""
        out = []
        stamped = self.option(1, SO_TIMESTAMP)
        if stamped and data:
            ns = t.kernel.timekeeper.realtime_ns() if self.external else self.incoming.stamp
            if ns:
                out.append(stamp_control(stamped, ns))
        if self.option(6, TCP_INQ):
            left = self.unread()
            done = bool(self.host.poll() & POLLRDHUP) if self.external else \
                self.incoming is not None and self.incoming.writers == 0
            out.append((6, TCP_INQ, struct.pack("<i", left + int(done))))
        return out

    def _wait_for_handshake(self, flags: int) -> None:
        """Reads and sends of a socket still connecting wait for it (tcp(7))."""
        raise SyscallError(errno.EAGAIN) if self._nonblock(flags) else WouldBlock(self.changed)

    @property
    def aborted(self) -> bool:
        """The peer reset the connection (closed it with data unread, or with SO_LINGER's
        zero timeout): it is closed, whatever is left to read."""
        return not self.external and self.incoming is not None and self.incoming.aborted

    def pending_error(self) -> int:
        """SO_ERROR, which reading clears: ECONNRESET after the peer's reset, ECONNREFUSED
        after a refused nonblocking connect."""
        if self.error:
            err, self.error = self.error, 0
            return err
        if self.aborted and self.incoming.reset:
            self.incoming.reset = False
            return errno.ECONNRESET
        return 0

    def send(self, t, data: bytes, flags: int = 0, files: tuple = (), creds: list | None = None) -> int:
        if not self.external:
            if err := self.pending_error():  # tcp(7): the reset's (or refusal's) error first, then EPIPE
                if err == errno.EPIPE and not flags & MSG_NOSIGNAL:
                    t.kernel.send_signal(t.tg, SIGPIPE)
                raise SyscallError(err)
            if self.syn_to is not None:
                self._wait_for_handshake(flags)
            if self.outgoing is None:  # never connected (or listening): Linux says EPIPE, not ENOTCONN
                if not flags & MSG_NOSIGNAL:
                    t.kernel.send_signal(t.tg, SIGPIPE)
                raise SyscallError(errno.EPIPE)
            if self.outgoing.readers == 0 and not (self.shut_wr or self.wrote_to_closed or self.aborted):
                # It goes, and the closed peer's answer is a reset: EPIPE is pending (SO_ERROR).
                self.wrote_to_closed, self.error = True, errno.EPIPE
                self.changed.notify()
                return len(data)
            sent = super().send(t, data, flags, files)
            self.outgoing.stamp = t.kernel.timekeeper.realtime_ns()
            self.outgoing.total += sent
            return sent
        try:  # still connecting, the host's socket waits for the handshake, or says how it failed
            if self.shut_wr:
                raise SyscallError(errno.EPIPE)
            return self.host.send(t, data, flags, self._nonblock(flags))
        except SyscallError as e:
            if e.errno == errno.EPIPE and not flags & MSG_NOSIGNAL:
                t.kernel.send_signal(t.tg, SIGPIPE)
            raise

    @property
    def lingering(self) -> bool:
        """Closed, and still holding its address: not yet timed out, and not reset by the
        peer since (a reset ends FIN_WAIT2 and TIME_WAIT at once)."""
        return self.refs == 0 and self.lingers_until > 0 and not self.incoming.aborted and \
            self.kernel.timekeeper.monotonic_ns() < self.lingers_until

    def _linger(self, reset: bool) -> None:
        """A connection inside the sentry closes: the end that closed first keeps its address
        (TIME_WAIT if the peer has closed too, else FIN_WAIT2 for TCP_LINGER2's time), unless
        the close is a reset."""
        if not self.shut_wr:
            self.closed_first = self.incoming.writers > 0
        if reset or not self.closed_first or self.kernel is None or not self.local:
            return
        if self.incoming.writers == 0:
            seconds = TCP_TIMEWAIT_LEN
        else:
            linger2 = self.option(*TCP_LINGER2)
            seconds = 0 if linger2 < 0 else linger2 or TCP_FIN_TIMEOUT
        if seconds:
            self.lingers_until = self.kernel.timekeeper.monotonic_ns() + seconds * 10**9
            bound = self.kernel.inet_ports.setdefault(self.local[1], [])
            if not any(s is self for s in bound):  # an accepted connection: its listener's port
                bound.append(self)

    def shutdown(self, how: int) -> None:
        if self.listening and how in (SHUT_RD, SHUT_RDWR):
            # As Linux's inet_shutdown: a listener shut for reading is disconnected (it
            # may listen again); shut for writing only, it goes on listening.
            if self.host is not None and self.host.sock is not None:
                self.host.shutdown(how)
            self.stop_listening()
            for p in list(self.published):
                p.aim()
            return
        if self.listening and how == SHUT_WR:
            return
        if not self.external:
            if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
                raise SyscallError(errno.EINVAL)
            connecting = self.syn_to is not None
            if connecting:  # a connect under way is abandoned: reset, as Linux's tcp_disconnect
                self.syn_to.drop_syn(self)
                self.refused, self.error = True, errno.ECONNRESET
            if self.refused:  # closed: shut all the same, as inet_shutdown, but ENOTCONN
                self.shut_rd = self.shut_rd or how in (SHUT_RD, SHUT_RDWR)
                self.shut_wr = self.shut_wr or how in (SHUT_WR, SHUT_RDWR)
                self.changed.notify()
                if not connecting:
                    raise SyscallError(errno.ENOTCONN)
                return
            if not self.connected or self._closed():
                raise SyscallError(errno.ENOTCONN)  # TCP, unlike a unix socket, must be connected
            if how in (SHUT_WR, SHUT_RDWR) and not self.shut_wr:
                self.closed_first = self.incoming.writers > 0
                super().shutdown(SHUT_WR)
            if how in (SHUT_RD, SHUT_RDWR):  # TCP's is this end's alone: nothing goes to the peer,
                self.shut_rd = True  # which sends on; reads take what came, then see the end
                self.incoming.readable.notify()
                self.changed.notify()
            return
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise SyscallError(errno.EINVAL)
        if not self.connected:
            raise SyscallError(errno.ENOTCONN)
        self.host.shutdown(how)
        self.shut_rd = self.shut_rd or how in (SHUT_RD, SHUT_RDWR)
        self.shut_wr = self.shut_wr or how in (SHUT_WR, SHUT_RDWR)

    def unread(self) -> int:
        return self.host.unread() if self.external else super().unread()

    def ready(self) -> int:
        if self.listening:
            r = POLLIN if self.pending else 0
            return r | (POLLIN if any(h.poll() & POLLIN for h in self._outside()) else 0)
        if self.external:
            self.connected  # noqa: B018 - settles a connect the host has finished
            return self.host.poll()
        if self.refused:  # closed, as tcp_poll shows a socket whose connect failed
            return POLLOUT | POLLHUP | (POLLIN | POLLRDHUP if self.shut_rd else 0) | (POLLERR if self.error else 0)
        if self.syn_to is not None or not self.connected:
            return 0 if self.syn_to is not None else POLLOUT | POLLHUP
        # As tcp_poll: reading shut down (here, or by the peer's FIN) is POLLIN and POLLRDHUP;
        # both ways, or closed (a reset, either way), POLLHUP; writable by room, or once shut
        # for writing (a write fails at once); POLLERR while an error is pending.
        closed = self._closed()
        rcv_shut = closed or self.shut_rd or self.incoming.writers == 0
        lowat = self.options.get((SOL_SOCKET, SO_RCVLOWAT), 1)
        r = POLLIN | POLLRDHUP if rcv_shut else POLLIN if self.incoming.has_unread() and self.unread() >= lowat else 0
        if closed or (rcv_shut and self.shut_wr):
            r |= POLLHUP
        if closed or self.shut_wr or self.has_room():
            r |= POLLOUT
        if self.error or self.incoming.reset:
            r |= POLLERR
        return r

    def _closed(self) -> bool:
        """In Linux's CLOSE state: reset (by the peer, or by the closed peer a send reached),
        or shut down both ways with the peer's FIN in."""
        return self.incoming.aborted or self.wrote_to_closed or (self.shut_wr and self.incoming.writers == 0)

    def queues(self, t) -> tuple:
        if self.listening:
            return (self.changed, *(h.queues(t)[0] for h in self._outside() if h.sock is not None))
        if self.external:
            return self.host.queues(t)
        return super().queues(t)

    def accept(self, t=None) -> InetSocket:
        """The next connection: one made inside the sandbox, else one from the outside."""
        outside = self._outside()
        if not self.listening or self.pending or not outside or t is None:
            conn = super().accept()
            if self.syn_waiting and t is not None:
                self.admit_waiting(t.kernel)
            return conn
        for h in outside:
            conn = h.accept()
            if conn is not None:
                break
        else:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(*self.queues(t))
        t.kernel.pipe_ino += 1
        t.kernel.host_sockets.add(conn)
        local, remote = conn.local, conn.remote
        if conn.outer:  # from a published port: made to the sandbox's address, as it sees it
            local = (self.local[0] if not _ip(self.local[0]).is_unspecified else
                     t.kernel.network.get("address") or ("127.0.0.1" if h.family == AF_INET else "::1"), self.local[1])
            if self.family == AF_INET6:
                local, remote = (_mapped(local[0]), local[1]), (_mapped(remote[0]), remote[1])
        return InetSocket(flags=2, ino=t.kernel.pipe_ino, family=self.family, local=local, remote=remote,
                          options=dict(self.options), host=conn, kernel=t.kernel)

    def _count_reset(self) -> None:
        """This end closes with a reset (RST): an established end here, and the peer's if it
        was established, go to CLOSE (EstabResets, as tcp_set_state counts them)."""
        mib(self.kernel, "Tcp.OutRsts")
        if self.state() in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
            mib(self.kernel, "Tcp.EstabResets")
        if self.outgoing.readers > 0 and self.incoming.writers > 0:  # the peer is open, not shut for writing
            mib(self.kernel, "Tcp.EstabResets")

    def stop_listening(self) -> None:
        super().stop_listening()
        self.refuse_waiting()

    def release(self, embryo: bool = False) -> None:
        listening = self.listening
        if self.syn_to is not None:
            self.syn_to.drop_syn(self)
        if self.host is not None:
            external = self.external
            self.host.close()
            if external:
                return
        on, seconds = self.options.get(LINGER, (0, 0))
        if self.outgoing is not None and on and seconds == 0:
            self.outgoing.reset = self.outgoing.aborted = True  # socket(7): a zero linger resets
        if self.connected and not embryo:
            reset = self.outgoing.aborted or self.incoming.has_unread()
            if reset and self.kernel is not None:
                self._count_reset()
            self._linger(reset or self.incoming.aborted)
        self.shut_rd = False  # (its reading end is counted until now: see shutdown)
        super().release(embryo)
        if listening:
            for p in list(self.published):
                p.aim()

    def listen(self, backlog: int) -> None:
        if self.connected:
            raise SyscallError(errno.EINVAL)
        self.listening = True
        self.backlog = min(max(backlog, 0), 4096)

    def connect_inet(self, t, listener: InetSocket, remote: tuple) -> None:
        """Connect to `listener` at `remote` (the address the caller named): the new
        connection waits in the listener's backlog for accept. With the backlog full, a
        blocking connect waits for room; a nonblocking one says EINPROGRESS and goes on
        trying (its SYN sent again, as Linux's is) until an accept makes room."""
        cred = [t.tg.tgid, t.tg.creds[1], t.tg.creds[4]]
        if len(listener.pending) > listener.backlog:
            if not self.flags & O_NONBLOCK:
                raise WouldBlock(listener.changed)
            self.syn_to, self.remote = listener, remote
            listener.syn_waiting.append((self, cred))
            raise SyscallError(errno.EINPROGRESS)
        self._join(t.kernel, listener, remote, cred)

    def _join(self, kernel, listener: InetSocket, remote: tuple, cred: list) -> None:
        """The handshake: a new connection in the listener's backlog, this its other end."""
        up, down = make_buffers(kernel)
        server = InetSocket(flags=2, incoming=up, outgoing=down, ino=up.ino, family=listener.family,
                            local=(remote[0], listener.local[1]), remote=self.local,
                            options=dict(listener.options), cred=cred, kernel=kernel)
        self.incoming, self.outgoing = down, up
        self.remote = remote
        self.cred = list(listener.cred)
        mib(kernel, "Tcp.ActiveOpens")
        mib(kernel, "Tcp.PassiveOpens")
        self.size_outgoing()
        server.size_outgoing()
        listener.pending.append(server)
        listener.changed.notify()
        self.changed.notify()

    def size_outgoing(self) -> None:
        """What a connection holds unread before a send waits: with SO_SNDBUF set, the
        sender's buffer and the receiver's window (64 KiB), as over Linux's loopback; else
        a pipe's capacity (Linux grows an unset buffer with use). Resizing wakes senders."""
        if self.outgoing is not None and (1, SO_SNDBUF) in self.options:
            self.outgoing.capacity = self.options[(1, SO_SNDBUF)] + PIPE_CAPACITY
            self.outgoing.writable.notify()

    def admit_waiting(self, kernel) -> None:
        """A listener's backlog has room: connects whose SYN it dropped get in (as their next
        SYN would), in the order they came."""
        while self.syn_waiting and len(self.pending) <= self.backlog:
            s, cred = self.syn_waiting.pop(0)
            if s.refs > 0 and s.syn_to is self:
                s.syn_to, s.in_progress = None, True
                s._join(kernel, self, s.remote, cred)

    def drop_syn(self, s: InetSocket) -> None:
        """`s` connects to this listener no more."""
        self.syn_waiting = [(w, cred) for w, cred in self.syn_waiting if w is not s]
        s.syn_to = None

    def refuse_waiting(self) -> None:
        """The listener stopped listening: the next SYN of each waiting connect is refused."""
        waiting, self.syn_waiting = self.syn_waiting, []
        for s, _ in waiting:
            if s.syn_to is self:
                refused(self.kernel)
                s.syn_to, s.remote = None, ()
                s.refused, s.error, s.shut_rd, s.shut_wr = True, errno.ECONNREFUSED, True, True
                s.changed.notify()

    def describe(self) -> str:
        state = "listening" if self.listening else "connected" if self.connected else "unconnected"
        where = f" {format_address(self.local)}" if self.local else ""
        if self.remote:
            where += f" -> {format_address(self.remote)}"
        outside = f", {self.host.describe()}" if self.host is not None else ""
        outside += "".join(f", published at {format_address(p.sock.local)}" for p in self.published)
        return f"socket:[{self.ino}] (tcp{'6' if self.family == AF_INET6 else ''}, {state}{where}{outside})"


@savable
@dataclass(eq=False)
class UdpSocket(DatagramSocket):
    """A UDP socket of the sandbox (AF_INET or AF_INET6, SOCK_DGRAM), on loopback; or a
    UDP-Lite one (udplite(7)), with ports of its own and checksum coverage options."""

    family: int = AF_INET
    ino: int = 0
    local: tuple = ()  # (ip, port) once bound (explicitly, or by the first send or connect)
    remote: tuple = ()  # connect(2): where sends go by default, and the only source received
    # [sender's (ip, port), bytes, marks: [TTL, TOS, where it arrived (ip, port, interface
    # index) or None] or None (unknown), when it came (sandbox realtime ns)], oldest first
    queue: list = field(default_factory=list)
    queued: int = 0  # bytes in the queue; datagrams past RCVBUF are dropped, as Linux's
    error: int = 0  # a pending ECONNREFUSED (a connected send found no one): reported once
    # With IP_RECVERR (IPV6_RECVERR): the datagrams that found no one, as [data, destination],
    # oldest first, each with the ICMP port unreachable Linux's loopback answers it with.
    errors: list = field(default_factory=list)
    port_locked: bool = False  # bound to a port it named: kept when an association is dissolved
    addr_locked: bool = False  # bound to an address it named; else a connect chooses its own, undone after
    shut_rd: bool = False
    shut_wr: bool = False
    options: dict = field(default_factory=dict)  # (level, option) -> int, as setsockopt left it
    readable_queue: WaitQueue = field(default_factory=WaitQueue)  # readers waiting for a datagram
    host: HostSocket | None = None  # the host socket behind it, where the outside can reach it
    # Bound in a namespace snapbox made (an explicit bind): the host socket on the host's side
    # its datagrams beyond this host leave from, and their replies come to (moves_out).
    nat_host: HostSocket | None = None
    published: list = field(default_factory=list)  # the Publications whose datagrams it receives
    protocol: int = IPPROTO_UDP  # or IPPROTO_UDPLITE
    # IPv4 multicast: the groups it joined, [group, interface index] (LOOPBACK_INDEX, or
    # OUTSIDE_INDEX for the interface beyond the sandbox), and IP_MULTICAST_IF's interface
    # [address, index] (empty: the bound address's, else the default route's).
    groups: list = field(default_factory=list)
    multicast_if: list = field(default_factory=list)
    kernel: object = None  # for its clock: when each datagram came
    stamp: int = -1  # when the last datagram read came (SIOCGSTAMP); -1: none read yet
    listening = lingering = False  # never (Ports asks)

    @property
    def connected(self) -> bool:
        return bool(self.remote)

    def ports(self, kernel) -> Ports:
        """The port table of its protocol: UDP and UDP-Lite ports are apart, as on Linux."""
        return Ports(kernel.udplite_ports if self.protocol == IPPROTO_UDPLITE else kernel.udp_ports, kernel.local_ports)

    def accepts(self, sender: UdpSocket, length: int) -> bool:
        """Whether a datagram of `length` bytes from `sender` gets past this socket's
        checksum coverage: a UDP-Lite receiver that set UDPLITE_RECV_CSCOV drops one whose
        coverage is partial and less than it asked for (full coverage asked: any partial)."""
        if (IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV) not in self.options:
            return True
        coverage = sender.option(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV)
        if coverage == 0 or coverage >= length + 8:  # the coverage counts the 8-byte header
            return True
        wanted = self.options[(IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV)]
        return wanted != 0 and coverage >= wanted

    def unread(self) -> int:
        """FIONREAD: the length of the next datagram."""
        return len(self.queue[0][1]) if self.queue else 0

    def option(self, level: int, name: int, default: int = 0) -> int:
        return self.options.get((level, name), default)

    def disconnect(self, ports: Ports) -> None:
        """connect(AF_UNSPEC): no default destination; a port the socket did not choose
        itself is given back, as Linux's __udp_disconnect does."""
        self.remote = ()
        if self.local and not self.addr_locked:
            self.local = ("0.0.0.0" if self.family == AF_INET else "::", self.local[1])
        if self.local and not self.port_locked:
            ports.unbind(self)
            for h in self.hosts():
                h.close()
            self.host = self.nat_host = None
            for p in list(self.published):
                p.aim()
        else:
            for h in self.hosts():
                h.associate(None)

    def unreachable(self, dest: tuple, data: bytes) -> None:
        """A datagram to `dest` found no socket: the ICMP port unreachable it brings back
        sets the socket's error if it is connected or asked for errors, and queues it to
        the error queue if it asked (Linux's __udp4_lib_err, __udp6_lib_err)."""
        recverr = self.option(*self._recverr(dest[0]))
        if recverr:
            self.errors.append([bytes(data), tuple(dest)])
        if recverr or self.remote:
            self.error = errno.ECONNREFUSED
            self.readable_queue.notify()

    def _recverr(self, ip: str) -> tuple[int, int]:
        """The option that governs errors of traffic to `ip`: an IPv4 destination's (an
        IPv6 socket's mapped one too) is IP_RECVERR, an IPv6 one's IPV6_RECVERR."""
        return (SOL_IP, IP_RECVERR) if is_v4(ip) or _ip(ip).ipv4_mapped is not None else (SOL_IPV6, IPV6_RECVERR)

    def take_queued_error(self) -> tuple[bytes, tuple, list] | None:
        """recvmsg(MSG_ERRQUEUE): the oldest queued error as (the datagram, its destination,
        its control messages [(level, type, data)]), or None; the socket's error is the next
        one's then, as sock_dequeue_err_skb leaves it."""
        if not self.errors:
            return None
        data, dest = self.errors.pop(0)
        self.error = errno.ECONNREFUSED if self.errors else 0
        level, kind = self._recverr(dest[0])
        if kind == IP_RECVERR:
            v4 = dest[0] if is_v4(dest[0]) else str(_ip(dest[0]).ipv4_mapped)
            err = _SOCK_EXTENDED_ERR.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, ICMP_DEST_UNREACH,
                                          ICMP_PORT_UNREACH, 0, 0, 0)
            offender = pack_sockaddr(AF_INET, (v4, 0))  # the host that answered: the destination
        else:
            err = _SOCK_EXTENDED_ERR.pack(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP6, ICMP6_DST_UNREACH,
                                          ICMP6_DST_UNREACH_NOPORT, 0, 0, 0)
            offender = pack_sockaddr(AF_INET6, (dest[0], 0))
        return data, tuple(dest), [(level, kind, err + offender)]

    def take_error(self) -> None:
        if self.error:
            err, self.error = self.error, 0
            raise SyscallError(err)

    def deliver(self, source: tuple, data: bytes, marks: tuple | None = (DEFAULT_TTL, 0)) -> None:
        """A datagram arrives from `source` (with `marks`: its TTL or hop limit, its TOS or
        traffic class, and where it arrived): queued, unless connected elsewhere or full."""
        if self.remote and (_ip(self.remote[0]), self.remote[1]) != (_ip(source[0]), source[1]):
            return  # (one shut for reading still queues it, as Linux's)
        if self.queued > self.option(1, 8, RCVBUF):  # SO_RCVBUF, by what is queued already, as
            return  # __udp_enqueue_schedule_skb checks it: an empty queue takes any datagram
        self.queue.append([source, data, list(marks) if marks is not None else None, self._now()])
        self.queued += len(data)
        self.readable_queue.notify()

    def _now(self) -> int:
        return self.kernel.timekeeper.realtime_ns() if self.kernel is not None else 0

    def ioctl(self, t, request: int, arg: int) -> int:
        if request in (SIOCGSTAMP, SIOCGSTAMPNS):
            return stamp_ioctl(t, self.stamp, request, arg)
        return super().ioctl(t, request, arg)

    def recv_from(self, t, count: int, flags: int) -> tuple[bytes, tuple, int]:
        """The next datagram: (its first `count` bytes, its source, its whole length)."""
        return self.recv_datagram(t, count, flags)[:3]

    def recv_datagram(self, t, count: int, flags: int) -> tuple[bytes, tuple, int, list]:
        """The next datagram: its first `count` bytes, its source, its whole length, and the
        control messages the socket asked for with it (`control`)."""
        self.take_error()
        self._take_published()
        if not self.queue:
            # Shut for reading, with nothing queued: a blocking read returns 0 (it would wait
            # for nothing), a non-blocking one says EAGAIN, as __skb_recv_datagram does.
            nonblock = bool(self.flags & O_NONBLOCK or flags & MSG_DONTWAIT)
            if self.host is not None:
                try:
                    data, source, marks = self.host.recv_datagram(t, count, flags, nonblock or self.shut_rd)
                except WouldBlock:
                    raise WouldBlock(*self.queues(t)) from None
                except SyscallError as e:
                    if e.errno == errno.EAGAIN and self.shut_rd and not nonblock:
                        return b"", (), 0, []
                    raise
                stamp = self._now()  # (taken as it is read from the host)
                if not self.option(1, SO_TIMESTAMP):
                    self.stamp = stamp
                return data, source, len(data), self.control(source, marks, stamp)
            if self.shut_rd and not nonblock:
                return b"", (), 0, []
            if nonblock:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(*self.queues(t))
        entry = self.queue[0]
        source, data = entry[0], entry[1]
        marks = entry[2] if len(entry) > 2 else (DEFAULT_TTL, 0)  # an image from before marks were kept
        stamp = entry[3] if len(entry) > 3 else self._now()
        if not self.option(1, SO_TIMESTAMP):  # given as a control message, it is not kept (sock_recv_timestamp)
            self.stamp = stamp
        if not flags & MSG_PEEK:
            self.queue.pop(0)
            self.queued -= len(data)
            mib(t.kernel, f"{self.mib_name}.InDatagrams")  # as udp_recvmsg counts it: when read
        return data[:count], tuple(source), len(data), self.control(source, marks, stamp)

    @property
    def mib_name(self) -> str:
        return "UdpLite" if self.protocol == IPPROTO_UDPLITE else "Udp"

    def control(self, source: tuple, marks, stamp: int) -> list[tuple[int, int, bytes]]:
        """The control messages (level, type, data) recvmsg gives with a datagram from
        `source` that came with `marks` (TTL, TOS, and where it arrived: (address, port,
        interface index[, the interface's own address, for a group's]) or None) at `stamp`,
        for the options the socket set, in Linux's order: when it came (SO_TIMESTAMP or
        SO_TIMESTAMPNS), then for an IPv4 datagram IP_PKTINFO, IP_TTL, IP_TOS (one byte),
        IP_ORIGDSTADDR; for an IPv6 one IPV6_PKTINFO, IPV6_HOPLIMIT, IPV6_TCLASS,
        IPV6_ORIGDSTADDR. Unknown marks (a host datagram whose header the host did not
        give) give none."""
        stamped = self.option(1, SO_TIMESTAMP)  # before the IP level's, as udp_recvmsg puts them
        wanted = [stamp_control(stamped, stamp)] if stamped and source else []
        if not source or marks is None:
            return wanted
        ttl, tos = marks[0], marks[1]
        arrival = marks[2] if len(marks) > 2 else None
        v4 = is_v4(source[0])
        if arrival is not None and self.family == AF_INET6 and self.option(SOL_IPV6, IPV6_RECVPKTINFO):
            wanted.append((SOL_IPV6, IPV6_PKTINFO, _ip6(arrival[0]).packed + struct.pack("<i", arrival[2])))
        if v4:  # (on an IPv6 socket too: an IPv4 datagram's are the SOL_IP options', as udpv6_recvmsg)
            if arrival is not None and self.option(SOL_IP, IP_PKTINFO):
                addr = _ip(arrival[0]).packed  # (a group's datagram: the interface's own address is spec_dst)
                spec = _ip(arrival[3]).packed if len(arrival) > 3 else addr
                wanted.append((SOL_IP, IP_PKTINFO, struct.pack("<i", arrival[2]) + spec + addr))
            if self.option(SOL_IP, IP_RECVTTL):
                wanted.append((SOL_IP, IP_TTL, struct.pack("<i", ttl)))
            if self.option(SOL_IP, IP_RECVTOS):
                wanted.append((SOL_IP, IP_TOS, bytes([tos & 0xFF])))
            if arrival is not None and self.option(SOL_IP, IP_RECVORIGDSTADDR):
                wanted.append((SOL_IP, IP_RECVORIGDSTADDR, pack_sockaddr(AF_INET, (str(_ip(arrival[0])), arrival[1]))))
            return wanted
        if self.option(SOL_IPV6, IPV6_RECVHOPLIMIT):
            wanted.append((SOL_IPV6, IPV6_HOPLIMIT, struct.pack("<i", ttl)))
        if self.option(SOL_IPV6, IPV6_RECVTCLASS):
            wanted.append((SOL_IPV6, IPV6_TCLASS, struct.pack("<i", tos)))
        if arrival is not None and self.option(SOL_IPV6, IPV6_RECVORIGDSTADDR):
            wanted.append((SOL_IPV6, IPV6_RECVORIGDSTADDR, pack_sockaddr(AF_INET6, arrival[:2])))
        return wanted

    def asked_for(self, level: int, kind: int) -> bool:
        """Whether the socket asked for control messages of (level, type) with what it reads."""
        option = _ASKED_BY.get((level, kind))
        return option is not None and bool(self.option(level, option))

    def marks(self, v4: bool, sent: dict) -> tuple[int, int]:
        """The TTL (hop limit) and TOS (traffic class) of a datagram this socket sends over
        IPv4 (`v4`) or IPv6: from the sendmsg's control messages (`sent`, (level, type) ->
        value), else its options, else Linux's defaults. A hop limit of -1 is the socket's;
        a traffic class of -1 is 255, as Linux (since 5.x) takes it."""
        if v4:
            ttl = sent.get((SOL_IP, IP_TTL), self.option(SOL_IP, IP_TTL, -1))
            tos = sent.get((SOL_IP, IP_TOS), self.option(SOL_IP, IP_TOS, 0))
        else:
            ttl = sent.get((SOL_IPV6, IPV6_HOPLIMIT), -1)
            ttl = self.option(SOL_IPV6, IPV6_UNICAST_HOPS, -1) if ttl == -1 else ttl
            tos = sent.get((SOL_IPV6, IPV6_TCLASS), self.option(SOL_IPV6, IPV6_TCLASS, 0))
        return DEFAULT_TTL if ttl < 0 else ttl, tos & 0xFF

    def send_default(self, t, data: bytes) -> int:
        if not self.remote:
            raise SyscallError(errno.EDESTADDRREQ)
        return send_datagram(t, self, data, self.remote)

    def shutdown(self, how: int) -> None:
        """As Linux's inet_shutdown: an unconnected socket says ENOTCONN, but is shut all
        the same (a reader waiting on it returns)."""
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise SyscallError(errno.EINVAL)
        self.shut_rd = self.shut_rd or how in (SHUT_RD, SHUT_RDWR)
        self.shut_wr = self.shut_wr or how in (SHUT_WR, SHUT_RDWR)
        self.readable_queue.notify()
        if not self.remote:
            raise SyscallError(errno.ENOTCONN)

    def hosts(self) -> list[HostSocket]:
        return [h for h in (self.host, self.nat_host) if h is not None]

    def outward(self, kernel, ip: str) -> HostSocket | None:
        """The host socket a datagram to `ip` beyond the sandbox leaves from."""
        if self.nat_host is None and moves_out(kernel, self.host, ip):
            self.nat_host = masquerade_socket(kernel, self, 2)  # SOCK_DGRAM
        return self.nat_host if self.nat_host is not None and masquerades(kernel, ip) else self.host

    def _take_published(self) -> None:
        for p in self.published:
            p.take_datagrams(self)
        if self.nat_host is not None:
            for data, source, marks in self.nat_host.datagrams():
                self.deliver(source, data, _translated(marks))

    def ready(self) -> int:
        self._take_published()
        r = 0 if self.shut_wr else POLLOUT
        outside = self.host.poll() if self.host is not None else 0
        if self.queue or self.shut_rd or outside & POLLIN:
            r |= POLLIN
        if self.error or outside & POLLERR:
            r |= POLLERR
        return r

    def queues(self, t) -> tuple:
        hosts = self.hosts() + [p.sock for p in self.published]
        return (self.readable_queue, *(q for h in hosts for q in h.queues(t)[:1]))

    def release(self) -> None:
        self.queue.clear()
        self.queued = 0
        for h in self.hosts():
            h.close()
        for p in list(self.published):
            p.aim()

    def stat(self) -> dict:
        return dict(dev=0x8, ino=self.ino, mode=0o140777, nlink=1, uid=self.owner[0], gid=self.owner[1], rdev=0, size=0, blksize=4096,
                    blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        where = f" {format_address(self.local)}" if self.local else ""
        if self.remote:
            where += f" -> {format_address(self.remote)}"
        outside = "".join(f", {h.describe()}" for h in self.hosts())
        outside += "".join(f", published at {format_address(p.sock.local)}" for p in self.published)
        name = "udplite" if self.protocol == IPPROTO_UDPLITE else "udp"
        return f"socket:[{self.ino}] ({name}{'6' if self.family == AF_INET6 else ''}{where}{outside})"


def multicast_interface(kernel, address: str, index: int) -> int:
    """The interface a multicast option names, by index or by address (neither: the
    default route's): LOOPBACK_INDEX, or OUTSIDE_INDEX for the sandbox's way out; ENODEV
    for one the sandbox lacks."""
    if index == LOOPBACK_INDEX or (not index and _ip(address).is_loopback):
        return LOOPBACK_INDEX
    if has_outside(kernel) and (index or _ip(address).is_unspecified or address == kernel.network.get("address")):
        return OUTSIDE_INDEX
    raise SyscallError(errno.ENODEV)


def _multicast_out(s: UdpSocket) -> int:
    """The interface a multicast datagram of `s` leaves by: IP_MULTICAST_IF's, else the
    bound address's (loopback), else the default route's."""
    if s.multicast_if:
        return s.multicast_if[1]
    return LOOPBACK_INDEX if s.local and _ip(s.local[0]).is_loopback else OUTSIDE_INDEX


def _send_multicast(t, s: UdpSocket, data: bytes, group: str, port: int, sent: dict) -> None:
    """A datagram to an IPv4 group over loopback, to every socket on its port that takes
    it: bound to the wildcard or the group, and a member, or (IP_MULTICAST_ALL, on by
    default) any socket of the sandbox is. IP_MULTICAST_LOOP does not matter on loopback:
    what leaves by it comes back in, as Linux's lo does."""
    table = s.ports(t.kernel).table
    joined = any([group, LOOPBACK_INDEX] in r.groups and r.refs > 0 for bound in table.values() for r in bound)
    source = s.local[0] if s.local and not _ip(s.local[0]).is_unspecified else "127.0.0.1"
    marks = (s.option(SOL_IP, IP_MULTICAST_TTL, 1), s.marks(True, sent)[1], (group, port, LOOPBACK_INDEX, source))
    for r in Ports(table)._live(port):
        if r.family != AF_INET or str(_ip(r.local[0])) not in ("0.0.0.0", group):
            continue
        if [group, LOOPBACK_INDEX] in r.groups or (joined and r.option(SOL_IP, IP_MULTICAST_ALL, 1)):
            if r.accepts(s, len(data)):
                r.deliver((source, s.local[1]), bytes(data), marks)


def send_datagram(t, s: UdpSocket, data: bytes, dest: tuple, sent: dict | None = None) -> int:
    """Send one datagram from `s` to `dest` (ip, port) over loopback, or through the host;
    `sent`: the IP header fields its sendmsg's control messages set (UdpSocket.marks)."""
    sent = sent or {}
    ancillary = [(level, kind, struct.pack("<i", value)) for (level, kind), value in sent.items()]
    s.take_error()
    if s.shut_wr:
        raise SyscallError(errno.EPIPE)
    if len(data) > UDP_MAX:
        raise SyscallError(errno.EMSGSIZE)
    ip, port = dest
    if port == 0:
        raise SyscallError(errno.EINVAL)
    if s.family == AF_INET6 and s.local and not _ip(s.local[0]).is_unspecified:
        # An IPv6 socket's source and destination are of one kind: IPv4 (mapped) or IPv6.
        from_v4, to_v4 = _ip6(s.local[0]).ipv4_mapped is not None, _ip6(ip).ipv4_mapped is not None
        if to_v4 and not from_v4 and s.addr_locked:
            raise SyscallError(errno.ENETUNREACH)  # no IPv4 route from an IPv6 address it bound
        if from_v4 and not to_v4:
            raise SyscallError(errno.EAFNOSUPPORT)  # udpv6_sendmsg's (EINVAL before commit c8e6ad0829a7)
    if s.family == AF_INET and _ip(ip).is_multicast and _multicast_out(s) == LOOPBACK_INDEX:
        if not s.local:
            bind_inet(t, s, "0.0.0.0", 0)
        _send_multicast(t, s, data, str(_ip(ip)), port, sent)
        return len(data)
    for p in s.published:
        if p.heard_from(ip, port):  # a reply to a client of a published port: from that port
            return p.sock.send(t, bytes(data), 0, bool(s.flags & O_NONBLOCK), dest=(str(_ip(ip)), port),
                               ancillary=ancillary)
    local = is_local(ip)
    if not local and not has_outside(t.kernel):
        raise SyscallError(errno.ENETUNREACH, "the sandbox has no network but loopback")
    ports = s.ports(t.kernel)
    if not s.local:
        bind_inet(t, s, "0.0.0.0" if s.family == AF_INET else "::", 0, toward=ip)
    if not local and s.host is None:
        raise SyscallError(errno.ENETUNREACH, "the socket was bound before the sandbox had a network")
    target = ports.receiver(local_destination(ip), port, s.family, s.local) if local else None
    if target is None and s.host is not None:
        h = s.outward(t.kernel, ip)
        nonblock = bool(s.flags & O_NONBLOCK)
        connected = h.remote and (_ip(h.remote[0]), h.remote[1]) == (_ip(ip), port)
        return h.send(t, bytes(data), 0, nonblock, dest=None if connected else (ip, port), ancillary=ancillary)
    ip = local_destination(ip)
    mib(t.kernel, f"{s.mib_name}.OutDatagrams")
    if target is None:
        mib(t.kernel, f"{s.mib_name}.NoPorts")
        s.unreachable((ip, port), data)
        return len(data)
    v4 = isinstance(_ip(ip), ipaddress.IPv4Address)
    if target.accepts(s, len(data)):
        target.deliver(("127.0.0.1" if v4 else "::1", s.local[1]), bytes(data),
                       (*s.marks(v4, sent), (ip, port, LOOPBACK_INDEX)))
    else:  # its receive buffer is full: dropped, as __udp_queue_rcv_skb counts it
        mib(t.kernel, f"{s.mib_name}.RcvbufErrors")
        mib(t.kernel, f"{s.mib_name}.InErrors")
    return len(data)


def _translated(marks: tuple | None) -> tuple | None:
    """The marks of a datagram that came to a host socket on the host's side (a published
    port's, a masquerade's): where it arrived is an address of the host's, not the
    sandbox's, so it is left unknown (no IP_PKTINFO or IP_ORIGDSTADDR for it)."""
    return None if marks is None else (*marks[:2], None)


def refused(kernel) -> None:
    """A connect over loopback found no listener: its SYN was answered by a reset."""
    for name in ("Tcp.ActiveOpens", "Tcp.AttemptFails", "Tcp.OutRsts"):
        mib(kernel, name)


def mib(kernel, name: str, n: int = 1) -> None:
    """Count `n` of SNMP counter `name` ("Tcp.ActiveOpens"): what /proc/net/snmp shows of
    the sandbox's own loopback traffic."""
    kernel.snmp[name] = kernel.snmp.get(name, 0) + n


def has_outside(kernel) -> bool:
    """Whether the sandbox has a network beyond its own sockets (--network sandbox or host)."""
    return kernel.network.get("mode", "none") != "none"


def masquerades(kernel, ip: str) -> bool:
    """Whether a socket whose first traffic goes to `ip` sends it from the host's side: so
    in a namespace snapbox made (its veth pair leads only to this host, which need not
    forward), for every destination but the sandbox's own addresses. The peer then sees
    this host's address, as behind a masquerade; the sandbox sees its own (seen_local)."""
    network = kernel.network
    if not network.get("interface") or is_local(ip):
        return False
    dest = _ip(ip)
    if isinstance(dest, ipaddress.IPv6Address) and dest.ipv4_mapped is not None:
        dest = dest.ipv4_mapped
    return all(dest != _ip(network[key]) for key in ("address", "address6") if network.get(key))


def seen_local(kernel, h: HostSocket, port: int = 0) -> tuple:
    """The local address of host socket `h` as the sandbox's socket reports it: a
    masqueraded socket's is the sandbox's own address of its family (an IPv4-mapped one for
    an IPv6 socket that reaches an IPv4 peer), with the host's port, or `port`: the one the
    sandbox's socket was bound to before its traffic moved to the host's side."""
    if not h.nat:
        return h.local
    own = kernel.network.get("address", "")
    if h.family == AF_INET6 and ":" in h.local[0] and _ip(h.local[0]).ipv4_mapped is None:
        own = kernel.network.get("address6", "")
    elif h.family == AF_INET6 and own:
        own = f"::ffff:{own}"
    return (own, port or h.local[1]) if own else h.local


def moves_out(kernel, h: HostSocket | None, ip: str) -> bool:
    """Whether traffic of host socket `h`, bound in a namespace snapbox made (an explicit
    bind, to the wildcard or the sandbox's own address), to `ip` must leave from the host's
    side instead: its veth pair leads only to this host."""
    if h is None or h.nat or h.outer or not masquerades(kernel, ip):
        return False
    bound = _ip(h.local[0])
    return bound.is_unspecified or any(bound == _ip(kernel.network[key]) for key in ("address", "address6")
                                       if kernel.network.get(key))


def masquerade_socket(kernel, s: InetSocket | UdpSocket, kind: int) -> HostSocket:
    """A host socket on the host's side for `s`, bound in the namespace, whose traffic
    leaves from there (moves_out): on the socket's port where that is free on this side,
    else on one the host picks (the peer then sees another port, as behind a NAT that had to
    map it)."""
    h = HostSocket.open(s.family, kind, s.options, nat=True, protocol=s.protocol if kind == 2 else 0)
    wildcard = "0.0.0.0" if s.family == AF_INET else "::"
    try:
        try:
            h.bind((wildcard, s.local[1]))
        except SyscallError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            h.bind((wildcard, 0))
    except SyscallError:
        h.close()
        raise
    kernel.host_sockets.add(h)
    return h


def bind_inet(t, s: InetSocket | UdpSocket, ip: str, port: int, toward: str | None = None) -> None:
    """Give `s` the address (ip, port) (port 0: an ephemeral one). With a network, a host
    socket takes the address first, in the sandbox's namespace: the host says whether the
    address exists and is free, and chooses the port. `toward`: the destination of an
    implicit bind's first send (the host socket is then made where masquerades says)."""
    udp = isinstance(s, UdpSocket)
    lite = udp and s.protocol == IPPROTO_UDPLITE  # no published port reaches it: those are UDP
    ports = s.ports(t.kernel) if udp else Ports(t.kernel.inet_ports, t.kernel.local_ports)
    if not has_outside(t.kernel):
        ports.bind(s, ip, port)
        if udp and not lite:
            aim_publications(t.kernel, s.local[1], udp=True)
        return
    t.kernel.ensure_network()
    nat = toward is not None and masquerades(t.kernel, toward)
    # Port 0: the host chooses, unless the sandbox has a range of its own
    # (ip_local_port_range written inside): then its free ports are tried in turn.
    own = port == 0 and tuple(t.kernel.local_ports) != EPHEMERAL
    tries = [p for p in ports.ephemeral if not ports._live(p)] if own else \
        [port] * (EPHEMERAL_TRIES if port == 0 else 1)
    if not tries:
        raise SyscallError(errno.EADDRINUSE)
    for attempt, asked in enumerate(tries):
        h = HostSocket.open(s.family, 2 if udp else 1, s.options, nat=nat,  # SOCK_DGRAM, SOCK_STREAM
                            protocol=s.protocol if udp else 0)
        try:
            _, chosen = h.bind((ip, asked))
            ports.bind(s, ip, chosen, anywhere=True)
            break
        except SyscallError as e:
            h.close()
            # The host's choice of port is one the sandbox holds (a closed connection's,
            # lingering): the host chooses again.
            if port != 0 or e.errno != errno.EADDRINUSE or attempt == len(tries) - 1:
                raise
    port = chosen
    s.host = h
    t.kernel.host_sockets.add(h)
    if udp and not lite:
        aim_publications(t.kernel, port, udp=True)


def local_destination(ip: str) -> str:
    """A destination as the address of this host it names: the wildcard is loopback,
    an IPv4-mapped IPv6 address its IPv4 address."""
    addr = _ip(ip)
    if addr.is_unspecified:
        return "127.0.0.1" if isinstance(addr, ipaddress.IPv4Address) else "::1"
    return str(addr)


def parse_sockaddr(raw: bytes, family: int, binding: bool = False) -> tuple[str, int]:
    """(ip, port) from a sockaddr_in or sockaddr_in6 of a socket of `family`. `binding`:
    an IPv4 bind takes AF_UNSPEC with the wildcard address as AF_INET, as inet_bind does."""
    if len(raw) < 2:
        raise SyscallError(errno.EINVAL)
    got = struct.unpack_from("<H", raw)[0]
    if family == AF_INET:
        if len(raw) < 16:
            raise SyscallError(errno.EINVAL)
        _, port, ip = _SOCKADDR_IN.unpack_from(raw)
        if got != AF_INET and not (binding and got == AF_UNSPEC and ip == bytes(4)):
            raise SyscallError(errno.EAFNOSUPPORT)
        return str(ipaddress.IPv4Address(ip)), port
    if len(raw) < 24:
        raise SyscallError(errno.EINVAL)
    if got != AF_INET6:
        raise SyscallError(errno.EAFNOSUPPORT)
    _, port, _, ip, _ = _SOCKADDR_IN6.unpack_from(raw.ljust(28, b"\0"))
    return str(ipaddress.IPv6Address(ip)), port


def pack_sockaddr(family: int, addr: tuple) -> bytes:
    ip, port = addr or (("0.0.0.0" if family == AF_INET else "::"), 0)
    if family == AF_INET:
        return struct.pack("<H", AF_INET) + _SOCKADDR_IN.pack(0, port, ipaddress.IPv4Address(ip).packed)[2:]
    v6 = ipaddress.ip_address(ip)
    if isinstance(v6, ipaddress.IPv4Address):
        v6 = ipaddress.IPv6Address("::ffff:" + ip)
    return struct.pack("<H", AF_INET6) + _SOCKADDR_IN6.pack(0, port, 0, v6.packed, 0)[2:]


def is_v4(ip: str) -> bool:
    """Whether a datagram from `ip` came over IPv4 (an IPv6 socket sees it v4-mapped)."""
    addr = _ip(ip)
    return isinstance(addr, ipaddress.IPv4Address) or addr.ipv4_mapped is not None


def _mapped(ip: str) -> str:
    """An address as an IPv6 socket shows it: IPv4 ones mapped (::ffff:a.b.c.d)."""
    return f"::ffff:{ip}" if isinstance(_ip(ip), ipaddress.IPv4Address) else ip


def _ip6(text: str) -> ipaddress.IPv6Address:
    """An address as IPv6 has it: IPv4 ones mapped."""
    return ipaddress.IPv6Address(_mapped(str(_ip(text))))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, IPv4-mapped IPv6 ones as the IPv4 address they map."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_local(text: str) -> bool:
    """Whether the sandbox has this address: loopback, or the wildcard (as a destination,
    Linux takes 0.0.0.0 and :: for this host)."""
    ip = _ip(text)
    return ip.is_loopback or ip.is_unspecified


def _covers(bound: InetSocket, ip: str, family: int) -> bool:
    """Whether a socket bound to `bound.local` receives connections to `ip`."""
    return _receives(bound.family, bound.local[0], bool(bound.option(41, 26)), ip)  # IPV6_V6ONLY


def _receives(family: int, addr: str, v6only: bool, ip: str) -> bool:
    """Whether a socket of `family` bound to `addr` (IPv6-only or not) receives what is
    sent to `ip`."""
    mine = _ip(addr)
    theirs = _ip(ip)
    if family == AF_INET6 and mine.is_unspecified and isinstance(mine, ipaddress.IPv6Address):
        return isinstance(theirs, ipaddress.IPv6Address) or not v6only
    if mine.is_unspecified:
        return type(mine) is type(theirs)
    return mine == theirs


class Ports:
    """The sandbox's TCP port table, over Kernel.inet_ports: port -> the live sockets
    bound to it (sockets are dropped from it lazily, when their last fd is gone)."""

    def __init__(self, table: dict, ephemeral: tuple = EPHEMERAL) -> None:
        self.table = table
        self.ephemeral = range(ephemeral[0], ephemeral[1] + 1)  # where port 0 takes one from

    def listening(self, port: int) -> list:
        return [s for s in self._live(port) if s.listening]

    def _live(self, port: int) -> list:
        """The sockets bound to `port`: open ones, and closed ones that still hold it."""
        sockets = [s for s in self.table.get(port, []) if s.refs > 0 or s.lingering]
        if sockets:
            self.table[port] = sockets
        else:
            self.table.pop(port, None)
        return sockets

    def bind(self, s: InetSocket, ip: str, port: int, anywhere: bool = False, connecting: bool = False) -> None:
        """Give `s` the address (ip, port); port 0 takes a free ephemeral port. Only local
        addresses, unless `anywhere` (the host has bound it already). `connecting`: the
        port of a connect over loopback, which may be one that closed connections still
        hold (Linux's tcp_tw_reuse, on for loopback by default)."""
        if not anywhere and not is_local(ip):
            raise SyscallError(errno.EADDRNOTAVAIL)
        if port == 0:
            # From a random place in the range, as Linux picks them (a port just given back is
            # not handed out again at once).
            span = self.ephemeral
            start = secrets.randbelow(len(span))
            for k in range(len(span)):
                candidate = span[(start + k) % len(span)]
                if not any(other.refs > 0 or not connecting for other in self._live(candidate)):
                    port = candidate
                    break
            else:
                raise SyscallError(errno.EADDRNOTAVAIL if connecting else errno.EADDRINUSE)
        reuse = s.option(1, 2)  # SO_REUSEADDR
        for other in self._live(port):
            if other is s or (connecting and other.refs == 0):
                continue
            overlap = _covers(other, ip, s.family) or _receives(s.family, ip, bool(s.option(41, 26)), other.local[0]) \
                or _ip(ip) == _ip(other.local[0])
            if overlap and not (reuse and other.option(1, 2) and not other.listening) and \
                    not (s.option(*REUSEPORT) and other.option(*REUSEPORT)):
                raise SyscallError(errno.EADDRINUSE)
        s.local = (ip, port)
        self.table.setdefault(port, []).append(s)

    def unbind(self, s) -> None:
        port = s.local[1]
        self.table[port] = [other for other in self.table.get(port, []) if other is not s]
        self._live(port)
        s.local = ()

    def connection(self, local: tuple, remote: tuple) -> InetSocket | None:
        """The open connection between these two addresses, if there is one."""
        for s in self._live(local[1]):
            if s.refs > 0 and s.remote and _ip(s.local[0]) == _ip(local[0]) and \
                    (_ip(s.remote[0]), s.remote[1]) == (_ip(remote[0]), remote[1]):
                return s
        return None

    def receiver(self, ip: str, port: int, family: int, source: tuple = ()) -> UdpSocket | None:
        """The UDP socket that receives datagrams sent to (ip, port) from `source`: the
        last bound to that address (else to a wildcard that covers it); if it set
        SO_REUSEPORT, one of the sockets there that did, chosen by the source's address and
        port, as Linux's reuseport groups spread their senders."""
        bound = self._live(port)
        candidates = [s for s in bound if _ip(s.local[0]) == _ip(ip)] or \
            [s for s in bound if _covers(s, ip, family)]
        if not candidates:
            return None
        group = [s for s in candidates if s.option(*REUSEPORT)]
        if not candidates[-1].option(*REUSEPORT) or len(group) < 2 or not source:
            return candidates[-1]
        return group[zlib.crc32(f"{_ip(source[0])} {source[1]}".encode()) % len(group)]

    def listener(self, ip: str, port: int, family: int, source: tuple = ()) -> InetSocket | None:
        """The listening socket that takes connections to (ip, port) from `source`: the
        first bound to that address (else to a wildcard that covers it); if it set
        SO_REUSEPORT, one of the listeners there that did, chosen by the source's address
        and port, as Linux's reuseport groups spread their connections."""
        listening = [s for s in self._live(port) if s.listening]
        candidates = [s for s in listening if _ip(s.local[0]) == _ip(ip)] or \
            [s for s in listening if _covers(s, ip, family)]
        if not candidates:
            return None
        group = [s for s in candidates if s.option(*REUSEPORT)]
        if not candidates[0].option(*REUSEPORT) or len(group) < 2 or not source:
            return candidates[0]
        return group[zlib.crc32(f"{_ip(source[0])} {source[1]}".encode()) % len(group)]


@savable
@dataclass(eq=False)
class Publication:
    """A port published on the host (`--publish`), bound at `sock`'s address in the
    namespace the sandbox process started in (where the command ran).

    TCP: connections there are taken by the sandbox's listener on `port` as if made to the
    sandbox's own address. The host socket listens only while the sandbox has such a
    listener: otherwise, as for a port nothing listens on, the host refuses connections.

    UDP: datagrams there are queued on the sandbox's socket that receives what is sent to
    its own address on `port` (`receiver`), from the client's address; what that socket
    sends to a client it heard from (`peers`, as a NAT's mapping) leaves from `sock`, so
    the reply comes from the address the client sent to. Datagrams that come while no
    socket of the sandbox has the port are dropped."""

    kernel: object = None  # the Kernel: its port table, loop and network
    sock: HostSocket | None = None  # the host socket, bound at the host's address
    port: int = 0  # the sandbox's port
    listener: InetSocket | None = None  # TCP: the sandbox's listener it feeds, while there is one
    receiver: UdpSocket | None = None  # UDP: the sandbox's socket it feeds, while there is one
    peers: dict = field(default_factory=dict)  # UDP: (ip, port) of the clients heard from, latest last

    @property
    def family(self) -> int:
        return self.sock.family

    @property
    def udp(self) -> bool:
        return self.sock.kind == 2  # SOCK_DGRAM

    def text(self) -> str:
        """As `snapbox state` shows it: 127.0.0.1:8080->80/tcp."""
        return f"{format_address(self.sock.local)}->{self.port}/{'udp' if self.udp else 'tcp'}"

    def aim(self) -> None:
        """Feed the sandbox's socket that takes this port's traffic now (or none)."""
        if self.udp:
            self._aim_receiver()
            return
        target = next((s for s in Ports(self.kernel.inet_ports).listening(self.port) if self._reaches(s)), None)
        if target is self.listener:
            return
        if self.listener is not None and self in self.listener.published:
            self.listener.published.remove(self)
        self.listener = target
        if target is None:
            self.sock.unlisten(self.kernel.loop)
            return
        target.published.append(self)
        if self.sock.role != "listening":
            try:
                self.sock.listen(max(target.backlog, 1))
            except SyscallError as e:
                log.warning("published port %s cannot listen: %s", self.text(), errno.errorcode.get(e.errno))
        target.changed.notify()

    def _aim_receiver(self) -> None:
        own = self.kernel.network.get("address") if self.family == AF_INET else None
        ip = own or ("127.0.0.1" if self.family == AF_INET else "::1")
        target = Ports(self.kernel.udp_ports).receiver(ip, self.port, self.family)
        if target is self.receiver:
            return
        if self.receiver is not None and self in self.receiver.published:
            self.receiver.published.remove(self)
        self.receiver = target
        # What came while no socket had the port is dropped, as the host would drop it.
        collections.deque(self.sock.datagrams(), maxlen=0)
        if target is not None:
            target.published.append(self)

    def take_datagrams(self, s: UdpSocket) -> None:
        """Queue on `s` (the receiver) what has come to the published port."""
        for data, source, marks in self.sock.datagrams():
            key = (str(_ip(source[0])), source[1])
            self.peers.pop(key, None)
            self.peers[key] = True
            if len(self.peers) > MAX_PEERS:
                del self.peers[next(iter(self.peers))]
            if s.family == AF_INET6:
                source = (_mapped(source[0]), source[1])
            s.deliver(source, data, _translated(marks))

    def heard_from(self, ip: str, port: int) -> bool:
        return (str(_ip(ip)), port) in self.peers

    def _reaches(self, s: InetSocket) -> bool:
        """Whether listener `s` takes connections made to the sandbox's own address (its
        loopback's, when it has none: --network none or host)."""
        if self.family == AF_INET6 and s.family != AF_INET6:
            return False
        ip = _ip(s.local[0])
        if ip.is_unspecified:
            return s.family == self.family or not s.option(41, 26)  # IPV6_V6ONLY
        if isinstance(ip, ipaddress.IPv4Address) != (self.family == AF_INET):
            return False
        own = self.kernel.network.get("address")
        return ip == _ip(own) if own and self.family == AF_INET else ip.is_loopback


def publish(kernel, address: tuple, port: int, protocol: str = "tcp") -> Publication:
    """Publish the sandbox's `port` (TCP or UDP) at the host's `address` (ip, port)."""
    family = AF_INET6 if ":" in address[0] else AF_INET
    if protocol == "udp":
        h = HostSocket.open(family, 2, {}, outer=True)  # SOCK_DGRAM
    else:
        h = HostSocket.open(family, 1, {(1, 2): 1}, outer=True)  # SOCK_STREAM; SO_REUSEADDR
    try:
        h.bind(address)
    except SyscallError as e:
        h.close()
        raise SnapboxError(f"cannot publish {format_address(address)} ({os.strerror(e.errno)})") from None
    p = Publication(kernel=kernel, sock=h, port=port)
    kernel.published.append(p)
    kernel.host_sockets.add(h)
    p.aim()
    return p


def withdraw_publications(kernel) -> None:
    """Publish none of the ports published so far (restore --publish names others)."""
    for p in kernel.published:
        for s in (p.listener, p.receiver):
            if s is not None and p in s.published:
                s.published.remove(p)
        p.sock.close()
        kernel.host_sockets.discard(p.sock)
    kernel.published = []


def aim_publications(kernel, port: int, udp: bool = False) -> None:
    """A listener (or, `udp`, a UDP socket) on the sandbox's `port` came or went: each
    publication of it follows."""
    for p in kernel.published:
        if p.port == port and p.udp == udp:
            p.aim()
