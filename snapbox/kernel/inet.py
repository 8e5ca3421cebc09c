"""TCP over the sandbox's loopback (tcp(7), ip(7), ipv6(7)), inside the sentry.

With no network but loopback (`--network none`, as runsc's), every TCP connection joins
two sockets of the same sandbox: it is a pair of StreamBuffers, as a unix stream
connection is, so a checkpoint holds listeners, connections and their unread bytes in
both directions, and a restore brings them back whole. The sandbox's addresses are
127.0.0.0/8 and ::1; binding to another address fails with EADDRNOTAVAIL, and reaching one
with ENETUNREACH. Ports are one space shared by IPv4 and IPv6 (a dual-stack IPv6 socket
bound to :: takes the port for both), ephemeral ones taken from 32768-60999 as Linux's
ip_local_port_range.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK
from snapbox.kernel.socket import UnixSocket, make_buffers
from snapbox.state import savable

AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP = 6
EPHEMERAL = range(32768, 61000)
_SOCKADDR_IN = struct.Struct("!HH4s8x")  # family (host order, fixed below), port, address
_SOCKADDR_IN6 = struct.Struct("!HHI16sI")  # family, port, flowinfo, address, scope id


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

    def option(self, level: int, name: int, default: int = 0) -> int:
        return self.options.get((level, name), default)

    def listen(self, backlog: int) -> None:
        if self.connected:
            raise SyscallError(errno.EINVAL)
        self.listening = True
        self.backlog = min(max(backlog, 0), 4096)

    def connect_inet(self, t, listener: InetSocket, remote: tuple) -> None:
        """Connect to `listener` at `remote` (the address the caller named): the new
        connection waits in the listener's backlog for accept."""
        if len(listener.pending) > listener.backlog:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(listener.changed)
        up, down = make_buffers(t.kernel)
        server = InetSocket(flags=2, incoming=up, outgoing=down, ino=up.ino, family=listener.family,
                            local=(remote[0], listener.local[1]), remote=self.local,
                            options=dict(listener.options), cred=[t.tg.tgid, t.tg.creds[1], t.tg.creds[4]])
        self.incoming, self.outgoing = down, up
        self.remote = remote
        self.cred = list(listener.cred)
        listener.pending.append(server)
        listener.changed.notify()
        self.changed.notify()

    def describe(self) -> str:
        state = "listening" if self.listening else "connected" if self.connected else "unconnected"
        where = f" {format_address(self.local)}" if self.local else ""
        if self.remote:
            where += f" -> {format_address(self.remote)}"
        return f"socket:[{self.ino}] (tcp{'6' if self.family == AF_INET6 else ''}, {state}{where})"


def format_address(addr: tuple) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def parse_sockaddr(raw: bytes, family: int) -> tuple[str, int]:
    """(ip, port) from a sockaddr_in or sockaddr_in6 of a socket of `family`."""
    if len(raw) < 2:
        raise SyscallError(errno.EINVAL)
    got = struct.unpack_from("<H", raw)[0]
    if family == AF_INET:
        if len(raw) < 16:
            raise SyscallError(errno.EINVAL)
        if got != AF_INET:
            raise SyscallError(errno.EAFNOSUPPORT)
        _, port, ip = _SOCKADDR_IN.unpack_from(raw)
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
    mine = _ip(bound.local[0])
    theirs = _ip(ip)
    if bound.family == AF_INET6 and mine.is_unspecified and isinstance(mine, ipaddress.IPv6Address):
        return isinstance(theirs, ipaddress.IPv6Address) or not bound.option(41, 26)  # IPV6_V6ONLY
    if mine.is_unspecified:
        return type(mine) is type(theirs)
    return mine == theirs


class Ports:
    """The sandbox's TCP port table, over Kernel.inet_ports: port -> the live sockets
    bound to it (sockets are dropped from it lazily, when their last fd is gone)."""

    def __init__(self, table: dict) -> None:
        self.table = table

    def _live(self, port: int) -> list:
        sockets = [s for s in self.table.get(port, []) if s.refs > 0]
        if sockets:
            self.table[port] = sockets
        else:
            self.table.pop(port, None)
        return sockets

    def bind(self, s: InetSocket, ip: str, port: int) -> None:
        """Give `s` the address (ip, port); port 0 takes a free ephemeral port."""
        if not is_local(ip):
            raise SyscallError(errno.EADDRNOTAVAIL)
        if port == 0:
            for candidate in EPHEMERAL:
                if not self._live(candidate):
                    port = candidate
                    break
            else:
                raise SyscallError(errno.EADDRINUSE)
        reuse = s.option(1, 2)  # SO_REUSEADDR
        for other in self._live(port):
            if other is s:
                continue
            overlap = _covers(other, ip, s.family) or _covers(s, other.local[0], other.family) \
                or _ip(ip) == _ip(other.local[0])
            if overlap and not (reuse and other.option(1, 2) and not other.listening):
                raise SyscallError(errno.EADDRINUSE)
        s.local = (ip, port)
        self.table.setdefault(port, []).append(s)

    def listener(self, ip: str, port: int, family: int) -> InetSocket | None:
        """The listening socket that takes connections to (ip, port)."""
        exact = [s for s in self._live(port) if s.listening and _ip(s.local[0]) == _ip(ip)]
        if exact:
            return exact[0]
        wild = [s for s in self._live(port) if s.listening and _covers(s, ip, family)]
        return wild[0] if wild else None
