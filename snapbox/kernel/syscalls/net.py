"""Sockets: AF_UNIX stream, seqpacket and datagram sockets (socketpair, bind, listen, accept,
connect, SCM_RIGHTS), TCP, UDP and UDP-Lite (AF_INET, AF_INET6: inside the sandbox, or
through the host where its network reaches: see snapbox.kernel.inet), and route netlink sockets for
queries (snapbox.kernel.netlink). Other families fail with EAFNOSUPPORT, other types with
ESOCKTNOSUPPORT."""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import stat as st
import struct

from snapbox.kernel.creds import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, CAP_NET_RAW, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN, MAY_EXEC, MAY_WRITE, \
    capable, check, named, own_capable, shown
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK, drop_ref
from snapbox.kernel.socket import AF_UNIX, MSG_DONTWAIT, MSG_PEEK, NOBODY, SNDBUF_DEFAULT, SOCK_SEQPACKET, \
    SOCK_STREAM, SocketNode, UnixDgramSocket, UnixSocket, autobind, buffer_max, make_pair, new_socket
from snapbox.kernel.hostnet import HostSocket
from snapbox.kernel.inet import AF_INET, AF_INET6, AF_UNSPEC, DEFAULT_TTL, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE, \
    IPV6_HOPLIMIT, IPV6_RECVERR, IPV6_RECVHOPLIMIT, IPV6_RECVORIGDSTADDR, IPV6_RECVPKTINFO, IPV6_RECVTCLASS, \
    IPV6_TCLASS, IPV6_UNICAST_HOPS, IP_PKTINFO, IP_RECVERR, IP_RECVORIGDSTADDR, IP_RECVTOS, IP_RECVTTL, IP_TOS, \
    IP_TTL, LOOPBACK_MSS, MSG_ERRQUEUE, SOL_IP, SOL_IPV6, SO_TIMESTAMP, SO_TIMESTAMPNS, STAMP_NSEC, STAMP_USEC, \
    IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP, IP_MULTICAST_ALL, IP_MULTICAST_IF, IP_MULTICAST_TTL, TCP_INFO, TCP_INQ, \
    TCP_MSS_DEFAULT, UDPLITE_RECV_CSCOV, UDPLITE_SEND_CSCOV, InetSocket, Ports, UdpSocket, \
    aim_publications, bind_inet, has_outside, refused, is_local, local_destination, masquerade_socket, masquerades, \
    moves_out, multicast_interface, pack_sockaddr, parse_sockaddr, seen_local, send_datagram
from snapbox.kernel.netlink import AF_NETLINK, NETLINK_ROUTE, SOL_NETLINK, NetlinkSocket
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_FDCWD, MAX_RW, can_fill, iovecs, on_host, receive_timeout, received, scatter, \
    send_timeout, start_dir, write_all, written
from snapbox.kernel.vfs import now_ns

log = logging.getLogger("snapbox.kernel")

SOCK_NONBLOCK, SOCK_CLOEXEC = O_NONBLOCK, O_CLOEXEC
SOCK_DGRAM, SOCK_RAW = 2, 3
AF_PACKET = 17
IPPROTO_MAX = 263
MSG_TRUNC, MSG_WAITALL = 0x20, 0x100
SOL_SOCKET, SCM_RIGHTS, SCM_CREDENTIALS = 1, 1, 2
SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_PASSCRED, SO_PEERCRED = 3, 4, 7, 8, 16, 17
SO_ACCEPTCONN, SO_PROTOCOL, SO_DOMAIN = 30, 38, 39
MSG_CTRUNC, MSG_CMSG_CLOEXEC = 0x8, 0x40000000
SCM_MAX_FD = 253
UNIX_PATH_MAX = 108
_MSGHDR = struct.Struct("<QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
_CMSGHDR = struct.Struct("<Qii")  # len, level, type


def _cmsg_align(n: int) -> int:
    return (n + 7) & ~7


@syscall(NR.socket)
def socket(t, domain, type_, protocol):
    kind = i32(type_) & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
    domain = i32(domain)
    if domain in (AF_INET, AF_INET6):
        protocol = i32(protocol)
        if kind == SOCK_RAW:
            _raw_allowed(t, protocol)
        if kind not in (SOCK_STREAM, SOCK_DGRAM):
            raise SyscallError(errno.ESOCKTNOSUPPORT, "only TCP and UDP inet sockets are supported")
        if protocol not in ((0, IPPROTO_TCP) if kind == SOCK_STREAM else (0, IPPROTO_UDP, IPPROTO_UDPLITE)):
            raise SyscallError(errno.EPROTONOSUPPORT)
        t.kernel.pipe_ino += 1
        flags = 2 | i32(type_) & SOCK_NONBLOCK
        if kind == SOCK_STREAM:
            s = InetSocket(flags=flags, ino=t.kernel.pipe_ino, family=domain, kernel=t.kernel)
        else:
            s = UdpSocket(flags=flags, ino=t.kernel.pipe_ino, family=domain, protocol=protocol or IPPROTO_UDP,
                          kernel=t.kernel)
    elif domain == AF_UNIX:
        kind = _unix_kind(kind, protocol)
        s = new_socket(t.kernel, i32(type_) & SOCK_NONBLOCK, kind)
    elif domain == AF_NETLINK:
        if kind not in (SOCK_RAW, SOCK_DGRAM):
            raise SyscallError(errno.ESOCKTNOSUPPORT)
        if i32(protocol) != NETLINK_ROUTE:
            raise SyscallError(errno.EPROTONOSUPPORT, f"netlink protocol {i32(protocol)}: only NETLINK_ROUTE")
        t.kernel.pipe_ino += 1
        s = NetlinkSocket(flags=2 | i32(type_) & SOCK_NONBLOCK, ino=t.kernel.pipe_ino, kind=kind)
    else:
        if domain == AF_PACKET and not capable(t.tg, CAP_NET_RAW):
            raise SyscallError(errno.EPERM)  # as Linux's packet_create, before anything else
        raise SyscallError(errno.EAFNOSUPPORT, "only AF_UNIX, TCP, UDP and route netlink sockets exist in the sandbox")
    s.owner = (t.tg.fsuid, t.tg.fsgid)
    return t.fds.install(s, cloexec=bool(i32(type_) & SOCK_CLOEXEC))


def _raw_allowed(t, protocol: int) -> None:
    """The checks of a raw inet socket, in Linux's order (inet_create): a protocol out of
    range, none named, then CAP_NET_RAW, which no process of a sandbox has (see
    creds.WITHHELD_CAPS); with it, the socket is still refused: there are no raw sockets."""
    if not 0 <= protocol < IPPROTO_MAX:
        raise SyscallError(errno.EINVAL)
    if protocol == 0:
        raise SyscallError(errno.EPROTONOSUPPORT)
    if not capable(t.tg, CAP_NET_RAW):
        raise SyscallError(errno.EPERM)


def _unix_kind(kind: int, protocol: int) -> int:
    """A unix socket's type, checked as Linux's unix_create: SOCK_RAW is taken as SOCK_DGRAM."""
    if i32(protocol) not in (0, AF_UNIX):
        raise SyscallError(errno.EPROTONOSUPPORT)
    if kind == SOCK_RAW:
        return SOCK_DGRAM
    if kind not in (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET):
        raise SyscallError(errno.ESOCKTNOSUPPORT)
    return kind


@syscall(NR.socketpair)
def socketpair(t, domain, type_, protocol, sv):
    kind = i32(type_) & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
    if i32(domain) in (AF_INET, AF_INET6):
        raise SyscallError(errno.EOPNOTSUPP)  # socketpair(2): TCP has no pairs
    if i32(domain) != AF_UNIX:
        raise SyscallError(errno.EAFNOSUPPORT)
    kind = _unix_kind(kind, protocol)
    a, b = make_pair(t.kernel, i32(type_) & SOCK_NONBLOCK, kind)
    a.owner = b.owner = (t.tg.fsuid, t.tg.fsgid)
    a.cred = [t.tg.tgid, t.tg.creds[1], t.tg.creds[4]]
    b.cred = list(a.cred)
    cloexec = bool(i32(type_) & SOCK_CLOEXEC)
    fa = t.fds.install(a, cloexec=cloexec)
    try:
        fb = t.fds.install(b, cloexec=cloexec)
    except SyscallError:
        t.fds.close(fa)
        raise
    t.mm.write(sv, struct.pack("<ii", fa, fb))
    return 0


def _sock(t, fd: int) -> UnixSocket | UnixDgramSocket | UdpSocket | NetlinkSocket:
    f = t.fds.get(i32(fd))
    if not isinstance(f, (UnixSocket, UnixDgramSocket, UdpSocket, NetlinkSocket)):
        raise SyscallError(errno.ENOTSOCK)
    return f


def _stream(t, fd: int) -> UnixSocket:
    """A connection-mode socket (listen and accept have nothing to do with datagrams)."""
    s = _sock(t, fd)
    if not isinstance(s, UnixSocket):
        raise SyscallError(errno.EOPNOTSUPP)
    return s


def _unix_target(t, name: bytes, kind: type) -> UnixSocket | UnixDgramSocket:
    """The unix socket of class `kind` bound to `name` (connect, sendto, sendmsg):
    EPROTOTYPE if a socket of the other kind holds the name (unix(7))."""
    if not name:
        raise SyscallError(errno.EINVAL)
    target = _bound(t, name, follow=True)
    if target is None:
        raise SyscallError(errno.ECONNREFUSED if name[:1] == b"\0" else errno.ENOENT)
    if name[:1] != b"\0":
        check(t.tg, target, MAY_WRITE)  # unix(7): connecting and sending need write permission
    if isinstance(target, SocketNode):
        target = target.socket
    if isinstance(target, (UnixSocket, UnixDgramSocket)) and not isinstance(target, kind):
        raise SyscallError(errno.EPROTOTYPE)
    if not isinstance(target, kind):
        raise SyscallError(errno.ECONNREFUSED)
    return target


def _dgram_target(t, addr: int, addrlen: int) -> UnixDgramSocket:
    """The datagram socket a sockaddr_un names."""
    return _unix_target(t, _read_address(t, addr, addrlen), UnixDgramSocket)


def _read_address(t, addr: int, addrlen: int) -> bytes:
    """The name in a sockaddr_un: a path (without its NUL), or NUL and an abstract name."""
    addrlen = i32(addrlen)
    if addrlen < 2 or addrlen > 2 + UNIX_PATH_MAX:
        raise SyscallError(errno.EINVAL)
    raw = t.mm.read(addr, addrlen)
    if struct.unpack_from("<H", raw)[0] != AF_UNIX:
        raise SyscallError(errno.EINVAL)
    name = raw[2:]
    return name if name[:1] == b"\0" else name.split(b"\0")[0]


def _unix_sockaddr(name: bytes) -> bytes:
    return struct.pack("<H", AF_UNIX) + name + (b"\0" if name[:1] not in (b"", b"\0") else b"")


def _write_address(t, addr: int, addrlen: int, name: bytes) -> None:
    """Fill a caller's sockaddr buffer (truncated to its size) and its length with a unix
    socket's name."""
    _write_sockaddr(t, addr, addrlen, _unix_sockaddr(name))


def _write_sockaddr(t, addr: int, addrlen: int, full: bytes) -> None:
    if not addrlen:
        return
    room = i32(struct.unpack("<I", t.mm.read(addrlen, 4))[0])
    if room < 0:
        raise SyscallError(errno.EINVAL)
    if addr and room:
        t.mm.write(addr, full[:room])
    t.mm.write(addrlen, struct.pack("<I", len(full)))


def _bound(t, name: bytes, follow: bool = False) -> UnixSocket | SocketNode | None:
    """What holds a name now: a live socket (abstract names), a node (paths; a symlink is
    followed if `follow`: connect and sendto do, bind does not), or None."""
    if name[:1] == b"\0":
        s = t.kernel.unix_names.get(name)
        if s is not None and s.refs == 0:
            del t.kernel.unix_names[name]
            return None
        return s
    fs = t.kernel.fs
    _, _, node = fs.walk(start_dir(t, AT_FDCWD, name), t.fs.root, name, follow, who=t.tg)
    return node


def _inet_address(t, s: InetSocket | UdpSocket, addr: int, addrlen: int, binding: bool = False) -> tuple[str, int]:
    addrlen = i32(addrlen)
    if addrlen < 0 or addrlen > 128:
        raise SyscallError(errno.EINVAL)
    return parse_sockaddr(t.mm.read(addr, addrlen), s.family, binding)


def _autobind(t, s: InetSocket, ip: str) -> None:
    """Give an unbound TCP socket an ephemeral port to connect from (as Linux)."""
    if not s.local:
        Ports(t.kernel.inet_ports, t.kernel.local_ports).bind(s, ip, 0, connecting=True)


_SOCKADDR_NL = struct.Struct("<HHII")  # family, pad, port id, groups


def _netlink_address(t, addr: int, addrlen: int) -> tuple[int, int]:
    """(port, groups) of a sockaddr_nl."""
    if i32(addrlen) < _SOCKADDR_NL.size:
        raise SyscallError(errno.EINVAL)
    family, _, port, groups = _SOCKADDR_NL.unpack(t.mm.read(addr, _SOCKADDR_NL.size))
    if family != AF_NETLINK:
        raise SyscallError(errno.EINVAL)
    return port, groups


@syscall(NR.bind)
def bind(t, fd, addr, addrlen):
    s = _sock(t, fd)
    if isinstance(s, NetlinkSocket):
        s.bind(t.kernel, t.tg.tgid, *_netlink_address(t, addr, addrlen))
        return 0
    if isinstance(s, (InetSocket, UdpSocket)):
        ip, port = _inet_address(t, s, addr, addrlen, binding=True)
        if s.local or (isinstance(s, InetSocket) and s.connected):
            raise SyscallError(errno.EINVAL)
        if 0 < port < 1024 and not capable(t.tg, CAP_NET_BIND_SERVICE):
            raise SyscallError(errno.EACCES)  # ip(7): ports below ip_unprivileged_port_start
        bind_inet(t, s, ip, port)
        if isinstance(s, UdpSocket):
            s.port_locked, s.addr_locked = port != 0, not ipaddress.ip_address(ip).is_unspecified
        return 0
    name = _read_address(t, addr, addrlen)
    if not name:  # autobind; a named socket keeps its name
        if not s.address:
            autobind(t.kernel, s)
        return 0
    if name[:1] == b"\0":
        if s.address:
            raise SyscallError(errno.EINVAL)
        if _bound(t, name) is not None:
            raise SyscallError(errno.EADDRINUSE)
        t.kernel.unix_names[name] = s
    else:
        # As Linux's unix_bind_bsd: the node is made before the socket's name is looked at.
        fs = t.kernel.fs
        parent, base, node = fs.walk(start_dir(t, AT_FDCWD, name), t.fs.root, name, False, who=t.tg)
        if node is not None:
            raise SyscallError(errno.EADDRINUSE)
        if parent is None or not base:
            raise SyscallError(errno.ENOENT)
        check(t.tg, parent, MAY_WRITE | MAY_EXEC)
        if on_host(t, parent) is not None:
            raise SyscallError(errno.EPERM, "sockets in a read-write bind mount are not supported")
        if s.address:
            raise SyscallError(errno.EINVAL)
        now = now_ns()
        parent.entries[base] = SocketNode(ino=fs.new_ino(), mode=st.S_IFSOCK | (0o777 & ~t.fs.umask),
                                          uid=t.tg.fsuid, gid=t.tg.fsgid, atime=now, mtime=now,
                                          ctime=now, socket=s)
        parent.whiteouts.discard(base)
    s.address = name
    if getattr(s, "partner", None) is not None:
        s.partner.peer = name  # a socket connected before it took a name (its peer sees it now)
    return 0


@syscall(NR.listen)
def listen(t, fd, backlog):
    s = _stream(t, fd)
    if isinstance(s, InetSocket):
        if s.external:
            raise SyscallError(errno.EINVAL)
        if not s.local:
            bind_inet(t, s, "0.0.0.0" if s.family == AF_INET else "::", 0)
    s.listen(i32(backlog))
    s.cred = [t.tg.tgid, t.tg.creds[1], t.tg.creds[4]]  # what connecting sockets see as their peer's
    if isinstance(s, InetSocket):
        if s.host is not None:
            s.host.listen(s.backlog)
        aim_publications(t.kernel, s.local[1])
    return 0


def _connect_inet(t, s: InetSocket, addr: int, addrlen: int) -> int:
    ip, port = _inet_address(t, s, addr, addrlen)
    if s.host is not None and s.host.role == "connecting":
        return _connect_outside(t, s, (ip, port))
    if s.in_progress:
        s.in_progress = False  # connect(2) again after EINPROGRESS: it has succeeded
        return 0
    if s.syn_to is not None:
        raise SyscallError(errno.EALREADY)  # still waiting for a listener's room
    if s.refused:  # again after EINPROGRESS, which failed: why, else ECONNABORTED; then unconnected
        err = s.error or errno.ECONNABORTED
        s.refused, s.error, s.shut_rd, s.shut_wr = False, 0, False, False
        raise SyscallError(err)
    if s.connected:
        raise SyscallError(errno.EISCONN)
    if s.listening:
        raise SyscallError(errno.EINVAL)
    local = is_local(ip)
    if ip in ("0.0.0.0", "::"):
        ip = "127.0.0.1" if ip == "0.0.0.0" else "::1"  # ip(7): the wildcard as a destination is this host
    v4 = ipaddress.ip_address(ip).ipv4_mapped if ":" in ip else None  # an IPv4 address mapped (::ffff:a.b.c.d)
    mapped = v4 is not None
    target = str(v4) if mapped else ip
    listener = Ports(t.kernel.inet_ports).listener(target, port, s.family) if local else None
    if listener is None and has_outside(t.kernel):
        return _connect_outside(t, s, (ip, port))
    if not local:
        raise SyscallError(errno.ENETUNREACH, "the sandbox has no network but loopback")
    if listener is None:
        refused(t.kernel)
        if s.local:  # a refused connection gives its port back, as Linux's (bind(2) may follow)
            Ports(t.kernel.inet_ports).unbind(s)
        if s.flags & O_NONBLOCK:  # as on Linux, the reset comes after connect(2) has returned
            s.refused, s.error, s.shut_rd, s.shut_wr = True, errno.ECONNREFUSED, True, True
            s.changed.notify()
            raise SyscallError(errno.EINPROGRESS)
        raise SyscallError(errno.ECONNREFUSED)
    source = "127.0.0.1" if s.family == AF_INET else "::ffff:127.0.0.1" if mapped else "::1"
    _autobind(t, s, "127.0.0.1" if s.family == AF_INET or mapped else "::1")
    if ipaddress.ip_address(s.local[0]).is_unspecified:
        s.local = (source, s.local[1])  # bound to the wildcard: its address is the connection's own now
    ports = Ports(t.kernel.inet_ports)
    if ports.connection(s.local, (target, port)) is not None:
        raise SyscallError(errno.EADDRNOTAVAIL)  # that pair of addresses is another connection's
    s.connect_inet(t, ports.listener(target, port, s.family, s.local), (target, port))
    if s.flags & O_NONBLOCK:
        s.in_progress = True
        raise SyscallError(errno.EINPROGRESS)  # as on Linux: done already, writable at once
    return 0


def _connect_outside(t, s: InetSocket, dest: tuple) -> int:
    """connect(2) to a destination outside the sandbox, through a host socket: started by
    the first call, finished (or failed) as the host says."""
    h = s.host
    port = 0  # the sandbox's port, where its host socket's differs (it moved out)
    if h is None:
        t.kernel.ensure_network()
        h = s.host = HostSocket.open(s.family, 1, s.options, nat=masquerades(t.kernel, dest[0]))  # SOCK_STREAM
        t.kernel.host_sockets.add(h)
    elif h.role == "bound" and moves_out(t.kernel, h, dest[0]):
        s.host = masquerade_socket(t.kernel, s, 1)  # SOCK_STREAM
        t.kernel.host_sockets.discard(h)
        h.close()
        h, port = s.host, s.local[1]
    elif h.nat and h.role == "connecting":
        port = s.local[1]
    first = h.role != "connecting"
    err = h.connect(dest)
    if err == 0:
        s.local, s.remote = seen_local(t.kernel, h, port), dest
        return 0
    if err in (errno.EINPROGRESS, errno.EALREADY):
        s.local = seen_local(t.kernel, h, port)  # as on Linux, chosen as the connection begins
        if s.flags & O_NONBLOCK:
            raise SyscallError(errno.EINPROGRESS if first else errno.EALREADY)
        raise WouldBlock(t.kernel.loop.host_queue(h.fd, selectors.EVENT_WRITE))
    if not port and s.local:  # a failed connection gives its port back (bind(2) may follow)
        Ports(t.kernel.inet_ports).unbind(s)
    raise SyscallError(err)


def _udp_sockaddr(s: UdpSocket, raw: bytes, v6only: int) -> tuple[str, int]:
    """(ip, port) a UDP socket's connect or sendto names: an IPv6 socket takes a
    sockaddr_in too, as the IPv4-mapped address (ipv6(7)), unless IPV6_V6ONLY (then the
    error `v6only`)."""
    if s.family == AF_INET6 and len(raw) >= 2 and struct.unpack_from("<H", raw)[0] == AF_INET:
        if s.option(SOL_IPV6, IPV6_V6ONLY, 0):
            raise SyscallError(v6only)
        ip, port = parse_sockaddr(raw, AF_INET)
        return f"::ffff:{ip}", port
    return parse_sockaddr(raw, s.family)


def _connect_udp(t, s: UdpSocket, addr: int, addrlen: int) -> int:
    """connect(2) of a UDP socket: a default destination (AF_UNSPEC: none again)."""
    raw = t.mm.read(addr, min(max(i32(addrlen), 0), 128))
    if len(raw) >= 2 and struct.unpack_from("<H", raw)[0] == AF_UNSPEC:
        s.disconnect(s.ports(t.kernel))
        return 0
    ip, port = _udp_sockaddr(s, raw, errno.EAFNOSUPPORT)
    if not is_local(ip):
        if not has_outside(t.kernel):
            raise SyscallError(errno.ENETUNREACH, "the sandbox has no network but loopback")
        if not s.local:
            bind_inet(t, s, "0.0.0.0" if s.family == AF_INET else "::", 0, toward=ip)
        s.remote = (ip, port)
        if s.host is not None:  # none: bound in an image made without a network (sends say ENETUNREACH)
            s.outward(t.kernel, ip).associate(s.remote)
        return 0
    ip = local_destination(ip)
    if s.family == AF_INET6 and ":" not in ip:
        ip = f"::ffff:{ip}"  # an IPv4 destination of an IPv6 socket stays mapped (its host socket's too)
    source = "127.0.0.1" if s.family == AF_INET else "::ffff:127.0.0.1" if "." in ip else "::1"
    if not s.local:
        bind_inet(t, s, source, 0)
    elif ipaddress.ip_address(s.local[0]).is_unspecified:
        s.local = (source, s.local[1])  # the route's source, as ip4_datagram_connect sets it
    s.remote = (ip, port)
    if s.host is not None:
        s.host.associate(s.remote)
    return 0


@syscall(NR.connect)
def connect(t, fd, addr, addrlen):
    s = _sock(t, fd)
    if isinstance(s, NetlinkSocket):  # only the kernel (port 0) answers here
        port, _ = _netlink_address(t, addr, addrlen)
        if port:
            raise SyscallError(errno.ECONNREFUSED)
        if not s.port:
            s.bind(t.kernel, t.tg.tgid, 0, s.groups)
        return 0
    if isinstance(s, UdpSocket):
        return _connect_udp(t, s, addr, addrlen)
    if isinstance(s, InetSocket):
        return _connect_inet(t, s, addr, addrlen)
    if isinstance(s, UnixDgramSocket):
        raw = t.mm.read(addr, min(max(i32(addrlen), 0), 2))
        if len(raw) == 2 and struct.unpack("<H", raw)[0] == AF_UNSPEC:
            s.peer_socket = None  # connect(2): AF_UNSPEC dissolves the association
            return 0
    name = _read_address(t, addr, addrlen)
    if s.passcred and not s.address:
        autobind(t.kernel, s)  # as Linux does (and a send does): the peer is to see who sends
    if isinstance(s, UnixDgramSocket):
        s.peer_socket = _unix_target(t, name, UnixDgramSocket)
        return 0
    if s.connected:
        raise SyscallError(errno.EISCONN)
    s.connect_to(t, _unix_target(t, name, UnixSocket))
    return 0


@syscall(NR.accept)
def accept(t, fd, addr, addrlen):
    return accept4(t, fd, addr, addrlen, 0)


@syscall(NR.accept4)
def accept4(t, fd, addr, addrlen, flags):
    try:
        return _accept4(t, fd, addr, addrlen, flags)
    except WouldBlock as wb:
        raise receive_timeout(t, _sock(t, fd), NR.accept4, wb) from None


def _accept4(t, fd, addr, addrlen, flags):
    flags = i32(flags)
    if flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC):
        raise SyscallError(errno.EINVAL)
    s = _stream(t, fd)
    conn = s.accept(t) if isinstance(s, InetSocket) else s.accept()
    conn.owner = (t.tg.fsuid, t.tg.fsgid)
    conn.flags |= flags & SOCK_NONBLOCK
    try:
        new = t.fds.install(conn, cloexec=bool(flags & SOCK_CLOEXEC))
    except SyscallError:
        s.pending.insert(0, conn)
        raise
    _write_sockaddr(t, addr, addrlen, _peer_sockaddr(conn))
    return new


def _peer_sockaddr(s: UnixSocket | UnixDgramSocket | UdpSocket) -> bytes:
    if isinstance(s, (InetSocket, UdpSocket)):
        return pack_sockaddr(s.family, s.remote)
    if isinstance(s, UnixDgramSocket):
        return _unix_sockaddr(s.peer_socket.address)
    return _unix_sockaddr(s.peer)


def _udp_send(t, s: UdpSocket, data: bytes, addr: int, addrlen: int, sent: dict | None = None) -> int:
    """One datagram to the address named (if any), else to the connected destination."""
    if addr:
        if not 0 <= i32(addrlen) <= 128:
            raise SyscallError(errno.EINVAL)
        return send_datagram(t, s, data, _udp_sockaddr(s, t.mm.read(addr, i32(addrlen)), errno.ENETUNREACH), sent)
    if not s.remote:
        raise SyscallError(errno.EDESTADDRREQ)
    return send_datagram(t, s, data, s.remote, sent)


_IGNORED_CONTROL: set = set()
# The SOL_SOCKET control messages Linux's sendmsg takes on an inet socket (SO_PRIORITY,
# SO_MARK, SO_TIMESTAMPING_OLD, SCM_TXTIME, besides the two it leaves to unix sockets).
SOCKET_CONTROL = frozenset({SCM_RIGHTS, SCM_CREDENTIALS, 12, 36, 37, 61})  # (level, type) of UDP control messages already logged as left alone


def _udp_control(t, s: UdpSocket, control: int, controllen: int) -> dict:
    """What a UDP sendmsg's control messages set of the datagram's IP header, (level,
    type) -> value: IP_TTL and IP_TOS (an int, or one byte) for an IPv4 socket, IPV6_HOPLIMIT
    and IPV6_TCLASS (ints from -1) for an IPv6 one, each checked as Linux checks it (EINVAL:
    a wrong length or value, or a SOL_SOCKET type Linux does not know). SCM_RIGHTS and
    SCM_CREDENTIALS are left, as Linux leaves them on an inet socket; others Linux knows
    are logged and left, as are the IP level's others; other levels are left, as on Linux."""
    sent: dict = {}
    raw = t.mm.read(control, controllen) if controllen else b""
    own = SOL_IP if s.family == AF_INET else SOL_IPV6
    pos = 0
    while pos + _CMSGHDR.size <= len(raw):
        length, level, kind = _CMSGHDR.unpack_from(raw, pos)
        if length < _CMSGHDR.size or pos + length > len(raw):
            raise SyscallError(errno.EINVAL)
        body = raw[pos + _CMSGHDR.size : pos + length]
        pos += _cmsg_align(length)
        if level == SOL_SOCKET and kind not in SOCKET_CONTROL:
            raise SyscallError(errno.EINVAL)
        if level == SOL_SOCKET and kind in (SCM_RIGHTS, SCM_CREDENTIALS) or level not in (own, SOL_SOCKET):
            continue
        if (level, kind) == (SOL_IP, IP_TOS) and len(body) in (1, 4):
            value = body[0] if len(body) == 1 else struct.unpack("<i", body)[0]
            if not 0 <= value <= 255:
                raise SyscallError(errno.EINVAL)
        elif (level, kind) in ((SOL_IP, IP_TTL), (SOL_IPV6, IPV6_HOPLIMIT), (SOL_IPV6, IPV6_TCLASS)) and len(body) == 4:
            value = struct.unpack("<i", body)[0]
            if not (1 if kind == IP_TTL else -1) <= value <= 255:
                raise SyscallError(errno.EINVAL)
        elif (level, kind) in ((SOL_IP, IP_TOS), (SOL_IP, IP_TTL), (SOL_IPV6, IPV6_HOPLIMIT), (SOL_IPV6, IPV6_TCLASS)):
            raise SyscallError(errno.EINVAL)  # the wrong length
        else:
            if (level, kind) not in _IGNORED_CONTROL:
                _IGNORED_CONTROL.add((level, kind))
                log.warning("UDP control message (level %d, type %d) not supported: left alone", level, kind)
            continue
        sent[(level, kind)] = value
    return sent


def _put_control(t, control: int, room: int, items: list) -> tuple[int, bool]:
    """Write control messages (level, type, data) into the `room` bytes at `control` as
    Linux's put_cmsg does: one whose header does not fit is left out, one whose data does
    not is cut short. Returns the bytes used and whether any was left out or cut (MSG_CTRUNC)."""
    used, cut = 0, False
    for level, kind, data in items:
        left = room - used if control else 0
        if left < _CMSGHDR.size:
            cut = True
            continue
        length = _CMSGHDR.size + len(data)
        if length > left:
            cut, length = True, left
        t.mm.write(control + used, _CMSGHDR.pack(length, level, kind) + data[: length - _CMSGHDR.size])
        used += min(_cmsg_align(length), left)
    return used, cut


def _netlink_send(t, s: NetlinkSocket, data: bytes, addr: int, addrlen: int) -> int:
    if addr and _netlink_address(t, addr, addrlen)[0]:
        raise SyscallError(errno.ECONNREFUSED)  # to another socket's port: no process listens in the sentry
    return s.send_request(t, data)


@syscall(NR.sendto)
def sendto(t, fd, buf, length, flags, addr, addrlen):
    s = _sock(t, fd)
    if isinstance(s, NetlinkSocket):
        return _netlink_send(t, s, t.mm.read(buf, min(length, MAX_RW)), addr, addrlen)
    if isinstance(s, UdpSocket):
        return _udp_send(t, s, t.mm.read(buf, min(length, MAX_RW)), addr, addrlen)
    if isinstance(s, UnixDgramSocket):
        target = _dgram_target(t, addr, addrlen) if addr else None
        return _dgram_send(t, NR.sendto, s, target, t.mm.read(buf, min(length, MAX_RW)), i32(flags), [])
    if addr and not isinstance(s, InetSocket) and s.kind != SOCK_SEQPACKET:  # tcp(7), seqpacket ignore it
        raise SyscallError(errno.EISCONN if s.connected else errno.EOPNOTSUPP)
    data = t.mm.read(buf, min(length, MAX_RW))
    return write_all(t, NR.sendto, _Flagged(s, i32(flags), []), data)


@syscall(NR.recvfrom)
def recvfrom(t, fd, buf, length, flags, addr, addrlen):
    try:
        return _recvfrom(t, fd, buf, length, flags, addr, addrlen)
    except WouldBlock as wb:
        raise receive_timeout(t, _sock(t, fd), NR.recvfrom, wb, received(t, NR.recvfrom)) from None


def _recvfrom(t, fd, buf, length, flags, addr, addrlen):
    s = _sock(t, fd)
    if not i32(flags) & MSG_TRUNC:
        t.mm.can_put(buf, length)
    if i32(flags) & MSG_ERRQUEUE and isinstance(s, (InetSocket, UdpSocket)):
        data, address, _ = _queued_error(s)
        t.mm.write(buf, data[:min(length, MAX_RW)])
        if address:
            _write_sockaddr(t, addr, addrlen, pack_sockaddr(s.family, address))
        return min(len(data), length)
    target = recv_target(s, i32(flags), min(length, MAX_RW))
    if target > 1:
        return recv_all(t, NR.recvfrom, s, [(buf, min(length, MAX_RW))], i32(flags) & ~MSG_WAITALL, target)
    if isinstance(s, (UdpSocket, NetlinkSocket)):
        data, source, whole = s.recv_from(t, min(length, MAX_RW), i32(flags))
        t.mm.write(buf, data)
        if source:
            _write_sockaddr(t, addr, addrlen, _source_sockaddr(s, source))
        elif addrlen:
            t.mm.write(addrlen, struct.pack("<I", 0))  # no datagram (a socket shut for reading): no source
        return whole if i32(flags) & MSG_TRUNC else len(data)
    if isinstance(s, UnixDgramSocket):
        data, sender, whole, files, _ = s.recv_dgram(t, min(length, MAX_RW), i32(flags))
        if not i32(flags) & MSG_PEEK:
            for f in files:  # read without recvmsg: the files are lost, as on Linux
                drop_ref(f)
        t.mm.write(buf, data)
        if sender:
            _write_address(t, addr, addrlen, sender)
        elif addrlen:
            t.mm.write(addrlen, struct.pack("<I", 0))  # an unnamed sender
        return whole if i32(flags) & MSG_TRUNC else len(data)
    seqpacket = s.kind == SOCK_SEQPACKET and s.connected and not s.listening
    records = s.incoming.records if seqpacket else None
    whole = records[0] if records else 0  # a seqpacket record's length, for MSG_TRUNC
    data = s.recv(t, min(length, MAX_RW), i32(flags))
    if not (isinstance(s, InetSocket) and i32(flags) & MSG_TRUNC):  # tcp(7): MSG_TRUNC discards them
        t.mm.write(buf, data)
    if whole and i32(flags) & MSG_TRUNC:
        return whole
    if isinstance(s, InetSocket) or not s.peer:
        if addrlen:
            t.mm.write(addrlen, struct.pack("<I", 0))  # tcp(7) gives no source address, nor an unnamed peer
    else:
        _write_address(t, addr, addrlen, s.peer)
    return len(data)


_ERROR_CONTROL = {(SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)}


def _queued_error(s: InetSocket | UdpSocket) -> tuple[bytes, tuple, list]:
    """MSG_ERRQUEUE: the socket's oldest queued error (ip(7) IP_RECVERR), its own or its
    host socket's, as (data, address, control messages). It never waits: EAGAIN when none."""
    udp = isinstance(s, UdpSocket)
    got = s.take_queued_error() if udp else None
    for h in s.hosts() if udp else [s.host] if s.host is not None else []:
        if got is None:
            got = h.queued_error()
            if got is not None and udp:  # the header fields its host socket always asks for: if this one did
                data, address, items = got
                got = data, address, [i for i in items if i[:2] in _ERROR_CONTROL or s.asked_for(*i[:2])]
    if got is None:
        raise SyscallError(errno.EAGAIN)
    return got


def _recv_error(t, s: InetSocket | UdpSocket, msg: int, name: int, namelen: int, iov: int, iovlen: int,
                vecs: list, control: int, controllen: int) -> int:
    data, address, items = _queued_error(s)
    room = sum(n for _, n in vecs)
    scatter(t, vecs, data[:room])
    full = pack_sockaddr(s.family, address) if address else b""
    if name and namelen and full:
        t.mm.write(name, full[:namelen])
    used, cut = _put_control(t, control, controllen, items)
    out = MSG_ERRQUEUE | (MSG_TRUNC if len(data) > room else 0) | (MSG_CTRUNC if cut else 0)
    t.mm.write(msg, _MSGHDR.pack(name, len(full) if name else 0, iov, iovlen, control, used, out))
    return min(len(data), room)


def _source_sockaddr(s: UdpSocket | NetlinkSocket, source: tuple) -> bytes:
    """Where a datagram came from: (ip, port), or for netlink (port, groups) of the kernel."""
    if isinstance(s, NetlinkSocket):
        return _SOCKADDR_NL.pack(AF_NETLINK, 0, *source)
    return pack_sockaddr(s.family, source)


def recv_target(s, flags: int, length: int) -> int:
    """How many bytes a blocking stream receive of `length` waits for (sock_rcvlowat()):
    all with MSG_WAITALL, else SO_RCVLOWAT's count (1 by default), never more than asked;
    a receive that peeks or does not block waits for none beyond the first."""
    if not isinstance(s, UnixSocket) or s.kind != SOCK_STREAM or flags & MSG_PEEK or \
            s.flags & O_NONBLOCK or flags & MSG_DONTWAIT:
        return 1
    return length if flags & MSG_WAITALL else min(s.options.get((SOL_SOCKET, SO_RCVLOWAT), 1), length)


def recv_all(t, nr: int, s: UnixSocket, vecs: list, flags: int, target: int) -> int:
    """A blocking stream receive that waits for `target` bytes (MSG_WAITALL: the buffers
    full; SO_RCVLOWAT): until it has them, the peer stops sending, or an error comes after
    some bytes (those are returned, as tcp(7) and unix(7) do). What it has taken when it
    blocks is in the restart state (for a retry or a restore), the bytes themselves already
    in the caller's memory."""
    done = received(t, nr)
    total = sum(n for _, n in vecs)
    while done < target:
        try:
            data = s.recv(t, total - done, flags)
        except WouldBlock as wb:
            try:
                block = receive_timeout(t, s, nr, wb, done)
            except SyscallError:  # SO_RCVTIMEO has passed: what came is the result
                if done:
                    break
                raise
            raise block from None
        except SyscallError:
            if done:
                break
            raise
        if not data:
            break
        scatter(t, _skip(vecs, done), data)
        done += len(data)
    return done


def _skip(vecs: list, n: int) -> list:
    """The buffers `vecs` less their first `n` bytes."""
    out = []
    for base, length in vecs:
        if n >= length:
            n -= length
            continue
        out.append((base + n, length - n))
        n = 0
    return out


_UCRED = struct.Struct("<iII")  # struct ucred: pid, uid, gid


def _unix_control(t, control: int, controllen: int) -> tuple[list, list | None]:
    """What a send's control messages carry to a unix socket: the open files SCM_RIGHTS
    names, and the credentials SCM_CREDENTIALS gives (None if it gives none), checked as
    Linux's scm_check_creds: a process may name itself and its own ids; CAP_SYS_ADMIN lets
    it name another live process, CAP_SETUID and CAP_SETGID other ids."""
    files: list = []
    creds = None
    raw = t.mm.read(control, controllen) if controllen else b""
    pos = 0
    while pos + _CMSGHDR.size <= len(raw):
        length, level, kind = _CMSGHDR.unpack_from(raw, pos)
        if length < _CMSGHDR.size or pos + length > len(raw):
            raise SyscallError(errno.EINVAL)
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            count = (length - _CMSGHDR.size) // 4
            fds = struct.unpack_from(f"<{count}i", raw, pos + _CMSGHDR.size)
            if len(files) + count > SCM_MAX_FD:
                raise SyscallError(errno.EINVAL)
            files += [t.fds.get(fd) for fd in fds]
        elif level == SOL_SOCKET and kind == SCM_CREDENTIALS:
            if length != _CMSGHDR.size + _UCRED.size:
                raise SyscallError(errno.EINVAL)
            creds = _checked_creds(t, *_UCRED.unpack_from(raw, pos + _CMSGHDR.size))
        else:
            raise SyscallError(errno.EINVAL)
        pos += _cmsg_align(length)
    return files, creds


def _checked_creds(t, pid: int, uid: int, gid: int) -> list:
    """SCM_CREDENTIALS a sender gives: its own pid and ids (as its user namespace names
    them: EINVAL for others), or, with CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID, others."""
    ns = t.tg.user_ns
    uid, gid = named(ns, uid, "uid"), named(ns, gid, "gid")
    ids = t.tg.creds  # ruid euid suid rgid egid sgid
    if pid != t.tg.tgid and not capable(t.tg, CAP_SYS_ADMIN) or \
            uid not in ids[:3] and not own_capable(t.tg, CAP_SETUID) or \
            gid not in ids[3:] and not own_capable(t.tg, CAP_SETGID):
        raise SyscallError(errno.EPERM)
    if pid != t.tg.tgid and pid not in t.kernel.tasks.pidns.tasks:
        raise SyscallError(errno.ESRCH)
    return [pid, uid, gid]


@syscall(NR.sendmsg)
def sendmsg(t, fd, msg, flags):
    s = _sock(t, fd)
    name, namelen, iov, iovlen, control, controllen, _ = _MSGHDR.unpack(t.mm.read(msg, _MSGHDR.size))
    if isinstance(s, NetlinkSocket):
        return _netlink_send(t, s, b"".join(t.mm.read(base, n) for base, n in iovecs(t, iov, iovlen)), name, namelen)
    if isinstance(s, UdpSocket):
        sent = _udp_control(t, s, control, controllen)
        data = b"".join(t.mm.read(base, n) for base, n in iovecs(t, iov, iovlen))
        return _udp_send(t, s, data, name, namelen, sent)
    if isinstance(s, UnixDgramSocket):
        files, creds = _unix_control(t, control, controllen)
        data = b"".join(t.mm.read(base, n) for base, n in iovecs(t, iov, iovlen))
        target = _dgram_target(t, name, namelen) if name else None
        return _dgram_send(t, NR.sendmsg, s, target, data, i32(flags), files, creds)
    if name and not isinstance(s, InetSocket) and s.kind != SOCK_SEQPACKET:
        raise SyscallError(errno.EISCONN if s.connected else errno.EOPNOTSUPP)
    files, creds = _unix_control(t, control, controllen)
    if isinstance(s, InetSocket):
        files = []  # TCP carries no files: its control messages are not SCM_RIGHTS
    if written(t, NR.sendmsg):
        files = []  # a retry of a send that blocked part-way: the files went with its first bytes
    data = b"".join(t.mm.read(base, n) for base, n in iovecs(t, iov, iovlen))
    return write_all(t, NR.sendmsg, _Flagged(s, i32(flags), files, creds), data[:MAX_RW])


class _Flagged:
    """A socket with send flags, files to send with the first bytes and credentials to send
    with all of them, for write_all."""

    def __init__(self, sock: UnixSocket, flags: int, files: list, creds: list | None = None) -> None:
        self.sock, self.flags, self.files, self.creds = sock, flags, files, creds
        self.sndtimeo = sock.sndtimeo

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        n = self.sock.send(t, data, self.flags, self.files, self.creds)
        self.files = []
        return n


def _dgram_send(t, nr: int, s: UnixDgramSocket, target, data: bytes, flags: int, files: list = (),
                creds: list | None = None) -> int:
    """One datagram, waiting for room in the receiver's queue up to SO_SNDTIMEO."""
    try:
        return s.send_to(t, target, data, flags, files, creds)
    except WouldBlock as wb:
        raise send_timeout(t, s, nr, wb) from None  # never None: nothing was sent


@syscall(NR.recvmsg)
def recvmsg(t, fd, msg, flags):
    try:
        return _recvmsg(t, fd, msg, flags)
    except WouldBlock as wb:
        raise receive_timeout(t, _sock(t, fd), NR.recvmsg, wb, received(t, NR.recvmsg)) from None


def _recvmsg(t, fd, msg, flags):
    s = _sock(t, fd)
    flags = i32(flags)
    name, namelen, iov, iovlen, control, controllen, _ = _MSGHDR.unpack(t.mm.read(msg, _MSGHDR.size))
    vecs = iovecs(t, iov, iovlen)
    if not flags & MSG_TRUNC:
        can_fill(t, vecs)
    sender, whole = None, 0
    if flags & MSG_ERRQUEUE and isinstance(s, (InetSocket, UdpSocket)):
        return _recv_error(t, s, msg, name, namelen, iov, iovlen, vecs, control, controllen)
    if isinstance(s, UnixDgramSocket):
        data, sender, whole, files, creds = s.recv_dgram(t, min(sum(n for _, n in vecs), MAX_RW), flags)
    elif isinstance(s, (UdpSocket, NetlinkSocket)):
        room = sum(n for _, n in vecs)
        if isinstance(s, UdpSocket):
            data, source, whole, items = s.recv_datagram(t, min(room, MAX_RW), flags)
        else:
            (data, source, whole), items = s.recv_from(t, min(room, MAX_RW), flags), []
        scatter(t, vecs, data)
        full = _source_sockaddr(s, source) if source else b""
        if name and namelen and full:
            t.mm.write(name, full[:namelen])
        used, cut = _put_control(t, control, controllen, items)
        out = (MSG_TRUNC if whole > len(data) else 0) | (MSG_CTRUNC if cut else 0)
        t.mm.write(msg, _MSGHDR.pack(name, len(full) if name else 0, iov, iovlen, control, used, out))
        return whole if flags & MSG_TRUNC else len(data)
    elif (target := recv_target(s, flags, min(sum(n for _, n in vecs), MAX_RW))) > 1:
        got = recv_all(t, NR.recvmsg, s, vecs, flags & ~MSG_WAITALL, target)  # files are not taken: see recv
        t.mm.write(msg, _MSGHDR.pack(name, 0, iov, iovlen, control, 0, 0))
        return got
    else:
        records = s.incoming.records if s.incoming is not None else None
        whole = records[0] if records else 0  # a seqpacket record's length, for MSG_TRUNC
        data, files, creds = s.recv_msg(t, min(sum(n for _, n in vecs), MAX_RW), flags)
    if not (isinstance(s, InetSocket) and flags & MSG_TRUNC):  # tcp(7): MSG_TRUNC discards them
        scatter(t, vecs, data)
    out_flags, used = (MSG_TRUNC if whole > len(data) else 0), 0
    if isinstance(s, InetSocket) and (items := s.tcp_control(t, data)):
        used, cut = _put_control(t, control, controllen, items)
        out_flags |= MSG_CTRUNC if cut else 0
    if s.passcred:  # before the files, as Linux's scm_recv puts them
        ucred = _ucred(t, creds) if creds is not None else _UCRED.pack(0, NOBODY, NOBODY)
        used, cut = _put_control(t, control, controllen, [(SOL_SOCKET, SCM_CREDENTIALS, ucred)])
        out_flags |= MSG_CTRUNC if cut else 0
    if files:
        left = controllen - used if control else 0
        room = (left - _CMSGHDR.size) // 4 if left >= _CMSGHDR.size + 4 else 0
        fds = []
        for f in files[:room]:
            try:
                fds.append(t.fds.install(f, cloexec=bool(flags & MSG_CMSG_CLOEXEC)))
            except SyscallError:
                break
        if len(fds) < len(files):
            out_flags |= MSG_CTRUNC
        if fds:
            length = _CMSGHDR.size + 4 * len(fds)
            t.mm.write(control + used,
                       _CMSGHDR.pack(length, SOL_SOCKET, SCM_RIGHTS) + struct.pack(f"<{len(fds)}i", *fds))
            used += min(_cmsg_align(length), left)
        if not flags & MSG_PEEK:
            for f in files:
                drop_ref(f)  # the reference the message held; installed ones hold their own
    peer = sender if isinstance(s, UnixDgramSocket) else s.peer
    if name and namelen and not isinstance(s, InetSocket) and peer:
        full = _unix_sockaddr(peer)
        t.mm.write(name, full[:namelen])
        namelen = len(full)
    else:
        namelen = 0
    t.mm.write(msg, _MSGHDR.pack(name, namelen, iov, iovlen, control, used, out_flags))
    return whole if whole and flags & MSG_TRUNC else len(data)


UIO_MAXIOV = 1024  # the most messages one sendmmsg or recvmmsg takes
MSG_WAITFORONE = 0x10000
_MSG_LEN = struct.Struct("<I4x")  # struct mmsghdr's msg_len, after its msghdr
_MMSGHDR_SIZE = _MSGHDR.size + _MSG_LEN.size
_TIMESPEC = struct.Struct("<qq")


@syscall(NR.sendmmsg)
def sendmmsg(t, fd, msgvec, vlen, flags):
    """sendmsg for each of `vlen` messages, each one's msg_len filled in; returns how many
    went. The first may wait; the rest are sent without waiting, so a full socket ends
    the call early with the count so far (the caller sends the rest again, as it must
    after any short count)."""
    vlen = min(vlen & 0xFFFFFFFF, UIO_MAXIOV)
    sent = 0
    for i in range(vlen):
        at = msgvec + i * _MMSGHDR_SIZE
        try:
            n = sendmsg(t, fd, at, flags if i == 0 else i32(flags) | MSG_DONTWAIT)
        except SyscallError:
            if sent:
                break
            raise
        t.mm.write(at + _MSGHDR.size, _MSG_LEN.pack(n))
        sent += 1
    return sent


@syscall(NR.recvmmsg)
def recvmmsg(t, fd, msgvec, vlen, flags, timeout):
    """recvmsg into each of `vlen` messages, each one's msg_len filled in; returns how
    many came. It waits until `vlen` have come (after the first with MSG_WAITFORONE, not at
    all with MSG_DONTWAIT), and, as recvmmsg(2) says of Linux, looks at `timeout` only
    after each message. Messages taken before a wait are kept in the restart state, so
    the call goes on after them (and a signal makes it return them)."""
    vlen, flags = min(vlen & 0xFFFFFFFF, UIO_MAXIOV), i32(flags)
    saved = t.restart_value(NR.recvmmsg)
    got, deadline = saved if saved is not None else (0, None)
    if saved is None and timeout:
        sec, nsec = _TIMESPEC.unpack(t.mm.read(timeout, _TIMESPEC.size))
        if sec < 0 or not 0 <= nsec < 1_000_000_000:
            raise SyscallError(errno.EINVAL)
        deadline = t.kernel.timekeeper.monotonic_ns() + sec * 1_000_000_000 + nsec
    while got < vlen:
        at = msgvec + got * _MMSGHDR_SIZE
        wait_flags = flags | MSG_DONTWAIT if got and flags & MSG_WAITFORONE else flags
        try:
            n = recvmsg(t, fd, at, wait_flags & ~MSG_WAITFORONE)
        except WouldBlock:
            if got:
                t.set_restart(NR.recvmmsg, (got, deadline))
            raise
        except SyscallError:
            if got:
                break
            raise
        t.mm.write(at + _MSGHDR.size, _MSG_LEN.pack(n))
        got += 1
        if deadline is not None and t.kernel.timekeeper.monotonic_ns() >= deadline:
            break
    return got


@syscall(NR.shutdown)
def shutdown(t, fd, how):
    _sock(t, fd).shutdown(i32(how))
    return 0


# What getsockopt and setsockopt know of TCP and UDP sockets: (level, option) -> its default.
SO_REUSEADDR, SO_KEEPALIVE, SO_LINGER, SO_REUSEPORT = 2, 9, 13, 15
SO_DONTROUTE, SO_BROADCAST, SO_OOBINLINE, SO_PRIORITY = 5, 6, 10, 12
SO_DEBUG, SO_NO_CHECK, SO_RCVLOWAT, SO_SNDLOWAT = 1, 11, 18, 19
TCP_RMEM_MAX = 6291456  # net.ipv4.tcp_rmem's third figure, Linux's default: how far TCP's receive buffer grows
TCP_NODELAY, TCP_MAXSEG, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT = 1, 2, 4, 5, 6
TCP_QUICKACK, TCP_USER_TIMEOUT, TCP_FASTOPEN = 12, 18, 23
IPV6_V6ONLY = 26
IP_MULTICAST_LOOP = 34
SOCK_MIN_SNDBUF, SOCK_MIN_RCVBUF = 4608, 2304
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
BUF_OPTIONS = {SO_SNDBUF: SO_SNDBUF, SO_RCVBUF: SO_RCVBUF, SO_SNDBUFFORCE: SO_SNDBUF, SO_RCVBUFFORCE: SO_RCVBUF}


def _buffer_size(t, opt: int, value: int) -> tuple[int, int]:
    """SO_SNDBUF or SO_RCVBUF (or their FORCE forms) set to `value`: (which, the size kept).
    As socket(7) says: capped at net.core.[wr]mem_max (the host's: its administrator's
    choice holds in its sandboxes; the FORCE forms, for CAP_NET_ADMIN, are not capped), doubled for the kernel's bookkeeping, and never below the least a socket has."""
    which = BUF_OPTIONS[opt]
    if opt != which:
        if not capable(t.tg, CAP_NET_ADMIN):
            raise SyscallError(errno.EPERM)
        value = min(max(value, 0), 0x7FFFFFFF // 2)
    else:
        value = min(value & 0xFFFFFFFF, buffer_max(which))  # (as u32: -1 is the most)
    return which, max(value * 2, SOCK_MIN_SNDBUF if which == SO_SNDBUF else SOCK_MIN_RCVBUF)


TCP_CORK, TCP_SYNCNT, TCP_LINGER2, TCP_DEFER_ACCEPT, TCP_WINDOW_CLAMP, TCP_CONGESTION = 3, 7, 8, 9, 10, 13
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER, PMTUDISC_WANT, PMTUDISC_OMIT = 10, 23, 1, 5
TCP_MIN_MSS, LOOPBACK_WINDOW_CLAMP = 88, 65536
TCP_FIN_TIMEOUT, TCP_FIN_TIMEOUT_MAX, MAX_TCP_SYNCNT, TCP_CA_NAME_MAX = 60, 120, 127, 16
INET_OPTIONS = {
    (SOL_SOCKET, SO_REUSEADDR): 0, (SOL_SOCKET, SO_KEEPALIVE): 0, (SOL_SOCKET, SO_REUSEPORT): 0,
    (SOL_SOCKET, SO_SNDBUF): 212992, (SOL_SOCKET, SO_RCVBUF): 212992, (SOL_SOCKET, SO_DONTROUTE): 0,
    (SOL_SOCKET, SO_BROADCAST): 0, (SOL_SOCKET, SO_OOBINLINE): 0, (SOL_SOCKET, SO_PRIORITY): 0,
    (SOL_SOCKET, SO_NO_CHECK): 0, (SOL_SOCKET, SO_RCVLOWAT): 1,
    (IPPROTO_TCP, TCP_NODELAY): 0, (IPPROTO_TCP, TCP_MAXSEG): 65483, (IPPROTO_TCP, TCP_KEEPIDLE): 7200,
    (IPPROTO_TCP, TCP_KEEPINTVL): 75, (IPPROTO_TCP, TCP_KEEPCNT): 9, (IPPROTO_TCP, TCP_QUICKACK): 1,
    (IPPROTO_TCP, TCP_USER_TIMEOUT): 0, (IPPROTO_TCP, TCP_FASTOPEN): 0, (IPPROTO_TCP, TCP_CORK): 0,
    (IPPROTO_TCP, TCP_SYNCNT): 6, (IPPROTO_TCP, TCP_LINGER2): 0, (IPPROTO_TCP, TCP_DEFER_ACCEPT): 0,
    (IPPROTO_TCP, TCP_WINDOW_CLAMP): 0, (IPPROTO_TCP, TCP_INQ): 0, (SOL_IP, IP_MTU_DISCOVER): PMTUDISC_WANT,
    (SOL_IPV6, IPV6_MTU_DISCOVER): PMTUDISC_WANT,
    (SOL_IP, IP_TOS): 0, (SOL_IP, IP_TTL): DEFAULT_TTL, (SOL_IPV6, IPV6_V6ONLY): 0,
    (SOL_IP, IP_RECVTTL): 0, (SOL_IP, IP_RECVTOS): 0, (SOL_IPV6, IPV6_UNICAST_HOPS): DEFAULT_TTL,
    (SOL_IPV6, IPV6_RECVHOPLIMIT): 0, (SOL_IPV6, IPV6_RECVTCLASS): 0, (SOL_IPV6, IPV6_TCLASS): 0,
    (SOL_IP, IP_RECVERR): 0, (SOL_IPV6, IPV6_RECVERR): 0, (SOL_IP, IP_PKTINFO): 0, (SOL_IP, IP_RECVORIGDSTADDR): 0,
    (SOL_IPV6, IPV6_RECVPKTINFO): 0, (SOL_IPV6, IPV6_RECVORIGDSTADDR): 0,
    (SOL_IP, IP_MULTICAST_TTL): 1, (SOL_IP, IP_MULTICAST_LOOP): 1, (SOL_IP, IP_MULTICAST_ALL): 1,
}
# Options that are on or off (any value but 0 is 1).
INET_FLAGS = {(SOL_SOCKET, SO_REUSEADDR), (SOL_SOCKET, SO_KEEPALIVE), (SOL_SOCKET, SO_DONTROUTE),
              (SOL_SOCKET, SO_BROADCAST), (SOL_SOCKET, SO_OOBINLINE), (IPPROTO_TCP, TCP_NODELAY),
              (IPPROTO_TCP, TCP_CORK), (IPPROTO_TCP, TCP_INQ), (SOL_SOCKET, SO_NO_CHECK),
              (SOL_IP, IP_RECVTTL), (SOL_IP, IP_RECVTOS), (SOL_IPV6, IPV6_RECVHOPLIMIT), (SOL_IPV6, IPV6_RECVTCLASS),
              (SOL_IP, IP_MULTICAST_LOOP), (SOL_IP, IP_MULTICAST_ALL), (SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR), (SOL_IP, IP_PKTINFO),
              (SOL_IP, IP_RECVORIGDSTADDR), (SOL_IPV6, IPV6_RECVPKTINFO), (SOL_IPV6, IPV6_RECVORIGDSTADDR)}


def _inet_getsockopt(s: InetSocket | UdpSocket, level: int, opt: int) -> bytes:
    udp = isinstance(s, UdpSocket)
    if level == SOL_SOCKET and opt == SO_PASSCRED:
        raise SyscallError(errno.EOPNOTSUPP)  # only unix and netlink sockets pass credentials
    if level == SOL_SOCKET and opt == SO_ERROR and udp:
        err, s.error = s.error, 0  # getsockopt(SO_ERROR) reads and clears it
        for h in s.hosts():
            err = err or h.error()
        return struct.pack("<i", err)
    if level == SOL_SOCKET and opt == SO_ERROR and s.host is not None:
        return struct.pack("<i", s.host.error())
    if level == SOL_SOCKET and opt == SO_ERROR:
        return struct.pack("<i", s.pending_error())
    fixed = {SO_TYPE: SOCK_DGRAM if udp else SOCK_STREAM, SO_ERROR: 0, SO_DOMAIN: s.family,
             SO_ACCEPTCONN: int(s.listening), SO_PROTOCOL: s.protocol if udp else IPPROTO_TCP}
    if udp and level == IPPROTO_TCP:
        raise SyscallError(errno.ENOPROTOOPT)
    if udp and level in (IPPROTO_UDP, IPPROTO_UDPLITE) and opt in (UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV):
        return struct.pack("<i", s.option(IPPROTO_UDPLITE, opt))  # 0 on a UDP socket, as Linux answers
    if level == SOL_SOCKET and opt in fixed:
        return struct.pack("<i", fixed[opt])
    if level == SOL_SOCKET and opt in (SO_TIMESTAMP, SO_TIMESTAMPNS):
        return struct.pack("<i", s.option(level, SO_TIMESTAMP) == (STAMP_USEC if opt == SO_TIMESTAMP else STAMP_NSEC))
    if udp and (level, opt) == (SOL_IP, IP_MULTICAST_IF):
        return ipaddress.IPv4Address(s.multicast_if[0] if s.multicast_if else "0.0.0.0").packed
    if level == SOL_SOCKET and opt == SO_LINGER:
        return struct.pack("<ii", *s.options.get((level, opt), (0, 0)))
    if (level, opt) == (IPPROTO_TCP, TCP_CONGESTION):
        return s.options.get((level, opt), _host_congestion()[0]).ljust(TCP_CA_NAME_MAX, b"\0")
    if (level, opt) == (IPPROTO_TCP, TCP_INFO):
        return s.tcp_info()
    if level == SOL_IPV6 and s.family != AF_INET6:
        raise SyscallError(errno.EOPNOTSUPP)  # do_ip_getsockopt: an IPv4 socket knows SOL_IP only
    if (level, opt) not in INET_OPTIONS:
        raise SyscallError(errno.ENOPROTOOPT)
    value = s.option(level, opt, INET_OPTIONS[(level, opt)])
    if level == IPPROTO_TCP:
        value = _tcp_reported(s, opt, value)
    if (level, opt) in ((SOL_IP, IP_TTL), (SOL_IPV6, IPV6_UNICAST_HOPS)) and value < 0:
        value = DEFAULT_TTL  # -1 set: the system's default, which getsockopt reports
    return struct.pack("<i", value)


def _inet_setsockopt(t, s: InetSocket | UdpSocket, level: int, opt: int, optval: int, optlen: int) -> int:
    if isinstance(s, UdpSocket) and level == IPPROTO_TCP:
        raise SyscallError(errno.ENOPROTOOPT)
    if level == SOL_SOCKET and opt == SO_PASSCRED:
        raise SyscallError(errno.EOPNOTSUPP)
    if level == SOL_SOCKET and opt == SO_LINGER:
        if optlen < 8:
            raise SyscallError(errno.EINVAL)
        s.options[(level, opt)] = struct.unpack("<ii", t.mm.read(optval, 8))
        return 0
    if level == SOL_SOCKET and opt in (SO_TIMESTAMP, SO_TIMESTAMPNS):  # one setting: the last asked for
        if optlen < 4:
            raise SyscallError(errno.EINVAL)
        (value,) = struct.unpack("<i", t.mm.read(optval, 4))
        s.options[(level, SO_TIMESTAMP)] = (STAMP_USEC if opt == SO_TIMESTAMP else STAMP_NSEC) if value else 0
        return 0
    if isinstance(s, UdpSocket) and level == SOL_IP and opt in (IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP, IP_MULTICAST_IF):
        return _multicast_setsockopt(t, s, opt, optval, optlen)
    if isinstance(s, UdpSocket) and level in (IPPROTO_UDP, IPPROTO_UDPLITE) \
            and opt in (UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV):
        return _udplite_setsockopt(t, s, opt, optval, optlen)
    if level == SOL_SOCKET and opt in BUF_OPTIONS:
        if optlen < 4:
            raise SyscallError(errno.EINVAL)
        (value,) = struct.unpack("<i", t.mm.read(optval, 4))
        kept, size = _buffer_size(t, opt, value)
        if s.host is not None:
            s.host.set_option(level, opt, value)  # the host's socket doubles it itself
        s.options[(level, kept)] = size
        if isinstance(s, InetSocket):
            s.size_outgoing()
        return 0
    if (level, opt) == (IPPROTO_TCP, TCP_CONGESTION):
        name = t.mm.read(optval, min(max(optlen, 0), TCP_CA_NAME_MAX - 1)).split(b"\0")[0]
        _, available, allowed = _host_congestion()
        if name not in (available if capable(t.tg, CAP_NET_ADMIN) else allowed):
            raise SyscallError(errno.ENOENT)
        s.options[(level, opt)] = name
        if s.host is not None:
            s.host.set_option(level, opt, name)
        return 0
    if (level, opt) not in INET_OPTIONS or (level == SOL_IPV6 and s.family != AF_INET6):
        raise SyscallError(errno.ENOPROTOOPT)
    if level == SOL_IP and optlen < 4:  # ip(7)'s integer options also take one byte, or none (0)
        value = t.mm.read(optval, 1)[0] if optlen >= 1 else 0
    elif optlen < 4:
        raise SyscallError(errno.EINVAL)
    else:
        (value,) = struct.unpack("<i", t.mm.read(optval, 4))
    if (level, opt) == (SOL_IPV6, IPV6_V6ONLY) and s.local:
        raise SyscallError(errno.EINVAL)  # ipv6(7): only before bind
    if (level, opt) == (SOL_IP, IP_TTL) and value != -1 and not 1 <= value <= 255:
        raise SyscallError(errno.EINVAL)
    if (level, opt) == (SOL_IP, IP_MULTICAST_TTL):
        if not -1 <= value <= 255:
            raise SyscallError(errno.EINVAL)
        value = 1 if value == -1 else value
    if level == IPPROTO_TCP:
        value = _tcp_kept(s, opt, value)
    if (level, opt) == (SOL_SOCKET, SO_RCVLOWAT):
        value = 0x7FFFFFFF if value < 0 else value
        if isinstance(s, InetSocket):  # tcp_set_rcvlowat: at most half the most the receive buffer may grow to
            value = min(value, s.options.get((SOL_SOCKET, SO_RCVBUF), TCP_RMEM_MAX) >> 1)
        value = value or 1  # (a datagram socket keeps it, to no effect, as Linux)
    if opt in (IP_MTU_DISCOVER, IPV6_MTU_DISCOVER) and level in (SOL_IP, SOL_IPV6) and \
            not 0 <= value <= PMTUDISC_OMIT:
        raise SyscallError(errno.EINVAL)
    if (level, opt) in ((SOL_IPV6, IPV6_UNICAST_HOPS), (SOL_IPV6, IPV6_TCLASS)) and not -1 <= value <= 255:
        raise SyscallError(errno.EINVAL)
    if (level, opt) == (SOL_IPV6, IPV6_TCLASS):
        value = max(value, 0)  # -1: the default class
    if (level, opt) == (SOL_IP, IP_TOS):
        value &= 0xFF if isinstance(s, UdpSocket) else 0xFC  # a byte; TCP keeps its ECN bits to itself
    s.options[(level, opt)] = int(bool(value)) if (level, opt) in INET_FLAGS else value
    if s.host is not None:
        s.host.set_option(level, opt, s.options[(level, opt)])
    return 0


def _multicast_setsockopt(t, s: UdpSocket, opt: int, optval: int, optlen: int) -> int:
    """IP_ADD_MEMBERSHIP and IP_DROP_MEMBERSHIP (a struct ip_mreq, or ip_mreqn with an
    interface index), and IP_MULTICAST_IF (an address, or an ip_mreqn), as ip(7) says."""
    need = 8 if opt != IP_MULTICAST_IF else 4
    if optlen < need:
        raise SyscallError(errno.EINVAL)
    raw = t.mm.read(optval, min(optlen, 12))
    if opt == IP_MULTICAST_IF:
        address = raw[4:8] if len(raw) >= 8 else raw[:4]  # an ip_mreqn's or ip_mreq's imr_address, or an in_addr
        index = struct.unpack_from("<i", raw, 8)[0] if len(raw) >= 12 else 0
        text = str(ipaddress.IPv4Address(address))
        if not index and text == "0.0.0.0":
            s.multicast_if = []  # the default again
            return 0
        try:
            s.multicast_if = [text, multicast_interface(t.kernel, text, index)]
        except SyscallError:
            raise SyscallError(errno.ENODEV if index else errno.EADDRNOTAVAIL) from None
        return 0
    group = ipaddress.IPv4Address(raw[:4])
    if not group.is_multicast:
        raise SyscallError(errno.EINVAL)
    address = str(ipaddress.IPv4Address(raw[4:8]))
    index = struct.unpack_from("<i", raw, 8)[0] if len(raw) >= 12 else 0
    if opt == IP_DROP_MEMBERSHIP and not index and address == "0.0.0.0":
        mine = [g for g in s.groups if g[0] == str(group)]  # any interface's
    else:
        mine = [[str(group), multicast_interface(t.kernel, address, index)]]
    if opt == IP_ADD_MEMBERSHIP:
        if mine[0] in s.groups:
            raise SyscallError(errno.EADDRINUSE)
        s.groups.append(mine[0])
        return 0
    if not mine or mine[0] not in s.groups:
        raise SyscallError(errno.EADDRNOTAVAIL)
    s.groups.remove(mine[0])
    return 0


def _tcp_kept(s: InetSocket, opt: int, value: int) -> int:
    """What a TCP option set to `value` keeps, checked as Linux's do_tcp_setsockopt."""
    if opt == TCP_MAXSEG and value and not TCP_MIN_MSS <= value <= 0xFFFF:
        raise SyscallError(errno.EINVAL)
    if opt == TCP_SYNCNT and not 1 <= value <= MAX_TCP_SYNCNT:
        raise SyscallError(errno.EINVAL)
    if opt == TCP_USER_TIMEOUT and value < 0:
        raise SyscallError(errno.EINVAL)
    if opt == TCP_LINGER2:
        return -1 if value < 0 else min(value, TCP_FIN_TIMEOUT_MAX)
    if opt == TCP_DEFER_ACCEPT:
        return _secs_to_retrans(value)
    if opt == TCP_WINDOW_CLAMP:
        if not value and s.connected:
            raise SyscallError(errno.EINVAL)
        return max(value, SOCK_MIN_RCVBUF // 2) if value else 0
    return value


def _tcp_reported(s: InetSocket, opt: int, value: int) -> int:
    """What getsockopt says of a TCP option kept as `value`: as Linux's do_tcp_getsockopt, the
    maximum segment is the default (or the one asked for) until a connection has one, a
    loopback connection's; TCP_LINGER2 0 is net.ipv4.tcp_fin_timeout; TCP_DEFER_ACCEPT is
    kept as retransmissions and read back as their seconds."""
    if opt == TCP_MAXSEG:
        if not s.connected or s.listening:
            return value if (IPPROTO_TCP, opt) in s.options and value else TCP_MSS_DEFAULT
        return min(value, LOOPBACK_MSS) if (IPPROTO_TCP, opt) in s.options and value else LOOPBACK_MSS
    if opt == TCP_LINGER2:
        return value if value < 0 else value or TCP_FIN_TIMEOUT
    if opt == TCP_DEFER_ACCEPT:
        return _retrans_to_secs(value)
    if opt == TCP_WINDOW_CLAMP and (IPPROTO_TCP, opt) not in s.options and s.connected:
        return LOOPBACK_WINDOW_CLAMP
    return value


def _secs_to_retrans(seconds: int, timeout: int = 1, rto_max: int = 120) -> int:
    """How many SYN-ACK retransmissions (the first after 1 s, doubling up to 120 s) cover
    `seconds`, as Linux keeps TCP_DEFER_ACCEPT."""
    if seconds <= 0:
        return 0
    period, retrans = timeout, 1
    while seconds > period and retrans < 255:
        retrans += 1
        timeout = min(timeout * 2, rto_max)
        period += timeout
    return retrans


def _retrans_to_secs(retrans: int, timeout: int = 1, rto_max: int = 120) -> int:
    if retrans <= 0:
        return 0
    period = timeout
    for _ in range(retrans - 1):
        timeout = min(timeout * 2, rto_max)
        period += timeout
    return period


def _host_congestion() -> tuple[bytes, list, list]:
    """The host's TCP congestion control: (the default, those available, those allowed
    without CAP_NET_ADMIN), which TCP_CONGESTION names in a sandbox too."""
    def read(name: str) -> bytes:
        with open(f"/proc/sys/net/ipv4/{name}", "rb") as f:
            return f.read().strip()
    return read("tcp_congestion_control"), read("tcp_available_congestion_control").split(), \
        read("tcp_allowed_congestion_control").split()


def _udplite_setsockopt(t, s, opt: int, optval: int, optlen: int) -> int:
    """UDPLITE_SEND_CSCOV, UDPLITE_RECV_CSCOV (udplite(7), at level SOL_UDPLITE or SOL_UDP):
    a checksum coverage in bytes, 0 for the whole datagram, raised to 8 (the header) and
    capped at 65535 as Linux does; a UDP socket has none to set."""
    if s.protocol != IPPROTO_UDPLITE:
        raise SyscallError(errno.ENOPROTOOPT)
    if optlen < 4:
        raise SyscallError(errno.EINVAL)
    (value,) = struct.unpack("<i", t.mm.read(optval, 4))
    value = 8 if value != 0 and value < 8 else min(value, 0xFFFF)
    s.options[(IPPROTO_UDPLITE, opt)] = value
    if s.host is not None:
        s.host.set_option(IPPROTO_UDPLITE, opt, value)
    return 0


SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVTIMEO_NEW, SO_SNDTIMEO_NEW = 20, 21, 66, 67
_TIMEVAL = struct.Struct("<qq")


def _timeout_option(t, s, opt: int, optval: int, optlen: int) -> bool:
    """setsockopt of SO_RCVTIMEO (honoured by every receive) or SO_SNDTIMEO (by every
    send that blocks); False for other options."""
    if opt not in (SO_RCVTIMEO, SO_RCVTIMEO_NEW, SO_SNDTIMEO, SO_SNDTIMEO_NEW):
        return False
    if optlen < _TIMEVAL.size:
        raise SyscallError(errno.EINVAL)
    sec, usec = _TIMEVAL.unpack(t.mm.read(optval, _TIMEVAL.size))
    if not 0 <= usec < 1_000_000:
        raise SyscallError(errno.EDOM)
    # A negative time is no wait at all (Linux keeps 0 jiffies); 0 is none (wait forever).
    timeout = sec * 1_000_000_000 + usec * 1000 if sec >= 0 else -1
    if opt in (SO_RCVTIMEO, SO_RCVTIMEO_NEW):
        s.rcvtimeo = timeout
    else:
        s.sndtimeo = timeout
    return True


def _netlink_getsockopt(s: NetlinkSocket, level: int, opt: int) -> bytes:
    if level == SOL_NETLINK:
        return struct.pack("<i", s.options.get((level, opt), 0))
    if level != SOL_SOCKET:
        raise SyscallError(errno.ENOPROTOOPT)
    fixed = {SO_TYPE: s.kind, SO_ERROR: 0, SO_DOMAIN: AF_NETLINK, SO_PROTOCOL: NETLINK_ROUTE, SO_PASSCRED: 0}
    if opt in fixed:
        return struct.pack("<i", fixed[opt])
    if opt in (SO_SNDBUF, SO_RCVBUF):
        return struct.pack("<i", s.options.get((level, opt), 212992))
    raise SyscallError(errno.ENOPROTOOPT)


@syscall(NR.getsockopt)
def getsockopt(t, fd, level, optname, optval, optlen):
    s = _sock(t, fd)
    opt = i32(optname)
    if i32(level) == SOL_SOCKET and opt in (SO_RCVTIMEO, SO_RCVTIMEO_NEW, SO_SNDTIMEO, SO_SNDTIMEO_NEW):
        timeout = max(0, s.rcvtimeo if opt in (SO_RCVTIMEO, SO_RCVTIMEO_NEW) else s.sndtimeo)
        value = _TIMEVAL.pack(timeout // 1_000_000_000, timeout % 1_000_000_000 // 1000)
    elif isinstance(s, (InetSocket, UdpSocket)):
        value = _inet_getsockopt(s, i32(level), opt)
    elif isinstance(s, NetlinkSocket):
        value = _netlink_getsockopt(s, i32(level), opt)
    else:
        value = _unix_getsockopt(t, s, i32(level), opt)
    room = i32(struct.unpack("<I", t.mm.read(optlen, 4))[0])
    if room < 0:
        raise SyscallError(errno.EINVAL)
    if i32(level) == SOL_IP and isinstance(s, (InetSocket, UdpSocket)) and len(value) == 4 and 0 < room < 4 and \
            0 <= struct.unpack("<i", value)[0] <= 255:
        value = value[:1]  # do_ip_getsockopt: a small value in a short buffer is one byte
    t.mm.write(optval, value[:room])
    t.mm.write(optlen, struct.pack("<I", min(room, len(value))))
    return 0


@syscall(NR.setsockopt)
def setsockopt(t, fd, level, optname, optval, optlen):
    s = _sock(t, fd)
    if i32(level) == SOL_SOCKET and _timeout_option(t, s, i32(optname), optval, i32(optlen)):
        return 0
    if isinstance(s, (InetSocket, UdpSocket)):
        return _inet_setsockopt(t, s, i32(level), i32(optname), optval, i32(optlen))
    if isinstance(s, NetlinkSocket) and i32(level) in (SOL_NETLINK, SOL_SOCKET):
        if i32(optlen) < 4:
            raise SyscallError(errno.EINVAL)
        (value,) = struct.unpack("<i", t.mm.read(optval, 4))
        s.options[(i32(level), i32(optname))] = value  # memberships too: no notifications are sent
        return 0
    return _unix_setsockopt(t, s, i32(level), i32(optname), optval, i32(optlen))


# The SOL_SOCKET options a unix socket keeps (socket(7)), with their values before any
# setsockopt. Those that only govern IP (SO_BROADCAST, SO_KEEPALIVE...) do nothing here, as
# in Linux; the buffer sizes are kept and read back, not enforced.
UNIX_OPTIONS = {SO_DEBUG: 0, SO_REUSEADDR: 0, SO_DONTROUTE: 0, SO_BROADCAST: 0, SO_KEEPALIVE: 0, SO_OOBINLINE: 0,
                SO_NO_CHECK: 0, SO_PRIORITY: 0, SO_PASSCRED: 0, SO_RCVLOWAT: 1, SO_SNDBUF: SNDBUF_DEFAULT,
                SO_RCVBUF: SNDBUF_DEFAULT}
UNIX_FLAGS = {SO_DEBUG, SO_REUSEADDR, SO_DONTROUTE, SO_BROADCAST, SO_KEEPALIVE, SO_OOBINLINE, SO_NO_CHECK,
              SO_PASSCRED}


def _ucred(t, cred: list) -> bytes:
    """struct ucred of [pid, kernel uid, kernel gid], as the reader's user namespace names them."""
    ns = t.tg.user_ns
    return _UCRED.pack(cred[0], shown(ns, cred[1], "uid"), shown(ns, cred[2], "gid"))


def _unix_getsockopt(t, s: UnixSocket | UnixDgramSocket, level: int, opt: int) -> bytes:
    if level != SOL_SOCKET:
        raise SyscallError(errno.EOPNOTSUPP)  # a unix socket has options at no other level
    if opt == SO_PEERCRED:
        return _ucred(t, s.cred)
    kind = SOCK_DGRAM if isinstance(s, UnixDgramSocket) else s.kind
    fixed = {SO_TYPE: kind, SO_ERROR: 0, SO_DOMAIN: AF_UNIX, SO_ACCEPTCONN: int(getattr(s, "listening", 0)),
             SO_PROTOCOL: 0, SO_SNDLOWAT: 1, SO_REUSEPORT: 0}
    if opt in fixed:
        return struct.pack("<i", fixed[opt])
    if opt == SO_LINGER:
        return struct.pack("<ii", *s.options.get((level, opt), (0, 0)))
    if opt not in UNIX_OPTIONS:
        raise SyscallError(errno.ENOPROTOOPT)
    return struct.pack("<i", s.options.get((level, opt), UNIX_OPTIONS[opt]))


def _unix_setsockopt(t, s: UnixSocket | UnixDgramSocket, level: int, opt: int, optval: int, optlen: int) -> int:
    if level != SOL_SOCKET:
        raise SyscallError(errno.EOPNOTSUPP)
    if opt not in UNIX_OPTIONS and opt not in (SO_LINGER, SO_REUSEPORT, SO_SNDBUFFORCE, SO_RCVBUFFORCE):
        raise SyscallError(errno.ENOPROTOOPT)
    if optlen < 4:
        raise SyscallError(errno.EINVAL)
    if opt == SO_LINGER:
        if optlen < 8:
            raise SyscallError(errno.EINVAL)
        s.options[(level, opt)] = struct.unpack("<ii", t.mm.read(optval, 8))
        return 0
    (value,) = struct.unpack("<i", t.mm.read(optval, 4))
    if opt == SO_REUSEPORT:
        if value:
            raise SyscallError(errno.EOPNOTSUPP)  # only inet sockets share a port
        return 0
    if opt == SO_DEBUG and value and not capable(t.tg, CAP_NET_ADMIN):
        raise SyscallError(errno.EACCES)
    if opt == SO_PRIORITY and not 0 <= value <= 6 and not capable(t.tg, CAP_NET_ADMIN):
        raise SyscallError(errno.EPERM)
    if opt in BUF_OPTIONS:
        opt, value = _buffer_size(t, opt, value)
    elif opt == SO_RCVLOWAT:
        value = 0x7FFFFFFF if value < 0 else value or 1
    s.options[(level, opt)] = int(bool(value)) if opt in UNIX_FLAGS else value
    return 0


@syscall(NR.getsockname)
def getsockname(t, fd, addr, addrlen):
    s = _sock(t, fd)
    if isinstance(s, (InetSocket, UdpSocket)):
        _write_sockaddr(t, addr, addrlen, pack_sockaddr(s.family, s.local))
    elif isinstance(s, NetlinkSocket):
        _write_sockaddr(t, addr, addrlen, s.sockaddr())
    else:
        _write_address(t, addr, addrlen, s.address)
    return 0


@syscall(NR.getpeername)
def getpeername(t, fd, addr, addrlen):
    s = _sock(t, fd)
    if isinstance(s, NetlinkSocket):  # its peer is the kernel
        _write_sockaddr(t, addr, addrlen, _SOCKADDR_NL.pack(AF_NETLINK, 0, 0, 0))
        return 0
    if not s.connected or (isinstance(s, InetSocket) and s.aborted):
        raise SyscallError(errno.ENOTCONN)
    if isinstance(s, UdpSocket) and not s.remote[1]:
        raise SyscallError(errno.ENOTCONN)  # connected to port 0, as inet_getname: no peer to name
    _write_sockaddr(t, addr, addrlen, _peer_sockaddr(s))
    return 0
