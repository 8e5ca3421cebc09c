"""Route netlink sockets (netlink(7), rtnetlink(7)) and the interface ioctls of netdevice(7):
what `ip`, getifaddrs(3), if_nameindex(3) and if_nametoindex(3) learn of the sandbox's
network interfaces.

Only queries are answered: RTM_GET* messages, and the SIOCGIF* ioctls. With a network
(`--network sandbox` or `host`) they are asked of the host kernel in the sandbox's network
namespace (the one its host sockets live in, so the sandbox sees its own eth0, or the
host's interfaces under `host`), and its answers passed on as they came, addressed to the
sandbox's socket. With none, the sandbox has loopback alone, and the answers describe it
as Linux does in a namespace of its own with `lo` up: link `lo` (index 1, MTU 65536),
127.0.0.1/8 and ::1/128, and the routes of the local table (the main one is empty).
Anything else a program sends (adding an address, a route, a link; a route lookup with
no network) is answered with EOPNOTSUPP, logged once; nothing is changed.

A socket's unread answers are part of it, so a checkpoint keeps them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import struct
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLIN, POLLOUT
from snapbox.kernel.inet import has_outside
from snapbox.kernel.socket import DatagramSocket
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

log = logging.getLogger("snapbox.kernel")

AF_NETLINK, NETLINK_ROUTE, SOL_NETLINK = 16, 0, 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP, NLM_F_CAPPED = 0x1, 0x2, 0x4, 0x300, 0x100
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE = 16, 18, 20, 22, 24, 26
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_PREFSRC, RTA_CACHEINFO, RTA_TABLE, RTA_PREF = 1, 4, 6, 7, 12, 15, 20
RT_TABLE_LOCAL, RTPROT_KERNEL, RTN_LOCAL, RTN_BROADCAST, RT_SCOPE_LINK = 255, 2, 2, 3, 253
IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_MTU, IFLA_QDISC = 1, 2, 3, 4, 6
IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKMODE = 13, 16, 17
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS = 1, 2, 3, 8
ARPHRD_LOOPBACK = 772
IFF_UP, IFF_LOOPBACK, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x8, 0x40, 0x10000
IFA_F_PERMANENT, RT_SCOPE_HOST = 0x80, 254
NLMSG = struct.Struct("<IHHII")  # struct nlmsghdr: length, type, flags, seq, port id
_IFINFOMSG = struct.Struct("<BxHiII")
_IFADDRMSG = struct.Struct("<BBBBi")
_RTMSG = struct.Struct("<BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ERROR = struct.Struct("<i")
ASK_TIMEOUT = 2.0  # seconds to wait for the host kernel's answer
NLMSG_GOODSIZE = 3776  # Linux's first guess at a dump datagram's size: a page less the skb's overhead
MAX_DUMP_DATAGRAM = 32768  # the most Linux puts in one, however big the reader's buffer
AUTOBIND_FIRST = (-4096) & 0xFFFFFFFF  # the first port Linux gives a process's second socket
AUTOBIND_LAST = 0x80000000  # ... counting down to INT_MIN

# The interface ioctls (netdevice(7)), all queries. struct ifreq is 40 bytes: a name, then a
# union of 24; struct ifconf (SIOCGIFCONF) is a length and a pointer to ifreqs.
SIOCGIFNAME, SIOCGIFCONF, SIOCGIFFLAGS, SIOCGIFADDR = 0x8910, 0x8912, 0x8913, 0x8915
SIOCGIFNETMASK, SIOCGIFMTU, SIOCGIFHWADDR, SIOCGIFINDEX, SIOCGIFTXQLEN = 0x891B, 0x8921, 0x8927, 0x8933, 0x8942
IFREQ_IOCTLS = {SIOCGIFNAME, SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFNETMASK, SIOCGIFMTU, SIOCGIFHWADDR, SIOCGIFINDEX,
                SIOCGIFTXQLEN}
IFREQ_SIZE, IFNAMSIZ = 40, 16
_IFCONF = struct.Struct("<i4xQ")

_unsupported_logged: set = set()


@savable
@dataclass(eq=False)
class NetlinkSocket(DatagramSocket):
    """An AF_NETLINK socket of protocol NETLINK_ROUTE (SOCK_RAW or SOCK_DGRAM, alike)."""

    kind: int = socket.SOCK_RAW
    ino: int = 0
    port: int = 0  # nl_pid, once bound (explicitly, or by the first send)
    groups: int = 0  # the multicast groups bound to (no notifications are ever sent)
    queue: list = field(default_factory=list)  # answers not read yet, one datagram each
    options: dict = field(default_factory=dict)  # (level, option) -> int, as setsockopt left it
    readable_queue: WaitQueue = field(default_factory=WaitQueue)
    # The largest receive asked for so far (at most MAX_DUMP_DATAGRAM): how big the datagrams
    # of a dump may be, as Linux's max_recvmsg_len.
    max_recv: int = 0

    # -- addressing -------------------------------------------------------------------------

    def bind(self, kernel, tgid: int, port: int, groups: int) -> None:
        """bind(2) with a sockaddr_nl: port 0 asks for one (the process id if free, as Linux
        gives it, else one counting down from -4096, as an unsigned 32-bit number)."""
        if self.port and port and port != self.port:
            raise SyscallError(errno.EINVAL)
        if not self.port:
            ports = kernel.netlink_ports
            if port:
                if _live(ports.get(port)):
                    raise SyscallError(errno.EADDRINUSE)
            else:
                port = tgid
                if _live(ports.get(port)):
                    port = next((p for p in range(AUTOBIND_FIRST, AUTOBIND_LAST - 1, -1)
                                 if not _live(ports.get(p))), 0)
                    if not port:
                        raise SyscallError(errno.EADDRINUSE)
            self.port = port
            ports[port] = self
        self.groups = groups

    def sockaddr(self) -> bytes:
        return struct.pack("<HHII", AF_NETLINK, 0, self.port, self.groups)

    # -- data -------------------------------------------------------------------------------

    def send_request(self, t, data: bytes) -> int:
        """What the program sends: each message in it answered, the answers queued."""
        if not self.port:
            self.bind(t.kernel, t.tg.tgid, 0, self.groups)
        offset = 0
        while offset + NLMSG.size <= len(data):
            length = NLMSG.unpack_from(data, offset)[0]
            if length < NLMSG.size or offset + length > len(data):
                break
            self.queue += self._answer(t.kernel, data[offset:offset + length])
            offset += (length + 3) & ~3
        if self.queue:
            self.readable_queue.notify()
        return len(data)

    def recv_from(self, t, count: int, flags: int) -> tuple[bytes, tuple, int]:
        """The next answer: (its first `count` bytes, the kernel's address, its whole length)."""
        if not self.queue:
            if self.flags & O_NONBLOCK or flags & socket.MSG_DONTWAIT:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.readable_queue)
        self.max_recv = max(self.max_recv, min(count, MAX_DUMP_DATAGRAM))
        data = self.queue[0]
        if not flags & socket.MSG_PEEK:
            self.queue.pop(0)
        return data[:count], (0, 0), len(data)

    def send_default(self, t, data: bytes) -> int:
        return self.send_request(t, data)

    def unread(self) -> int:
        return len(self.queue[0]) if self.queue else 0

    def ready(self) -> int:
        return POLLOUT | (POLLIN if self.queue else 0)

    def queues(self, t) -> tuple:
        return (self.readable_queue,)

    def shutdown(self, how: int) -> None:
        raise SyscallError(errno.EOPNOTSUPP)  # netlink has no shutdown

    def release(self) -> None:
        self.queue.clear()

    def stat(self) -> dict:
        return dict(dev=0x8, ino=self.ino, mode=0o140777, nlink=1, uid=self.owner[0], gid=self.owner[1], rdev=0, size=0, blksize=4096,
                    blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        return f"socket:[{self.ino}] (netlink route, port {self.port})"

    # -- answers ----------------------------------------------------------------------------

    def _answer(self, kernel, msg: bytes) -> list[bytes]:
        _, kind, flags, seq, _ = NLMSG.unpack_from(msg)
        if kind < RTM_NEWLINK or not flags & NLM_F_REQUEST:
            return []  # control messages and non-requests: the kernel ignores them
        if kind % 4 == 2:  # RTM_GET*
            answers = self._ask_host(kernel, msg) if has_outside(kernel) else _loopback(msg, self.port)
            if answers is not None:
                return answers
        if kind not in _unsupported_logged:
            _unsupported_logged.add(kind)
            log.warning("netlink route message %d: EOPNOTSUPP (only queries are answered)", kind)
        return [_error(msg, seq, self.port, errno.EOPNOTSUPP, self._cap_ack())]

    def _cap_ack(self) -> bool:
        return bool(self.options.get((SOL_NETLINK, NETLINK_CAP_ACK)))

    def _ask_host(self, kernel, msg: bytes) -> list[bytes]:
        """The host kernel's answers to `msg`, in the sandbox's namespace, addressed to us."""
        kernel.ensure_network()
        try:
            host = socket.socket(AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        except OSError as e:
            raise SyscallError(e.errno or errno.EIO) from None
        answers = []
        with host:
            host.settimeout(ASK_TIMEOUT)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                value = self.options.get((SOL_NETLINK, opt))
                if value:
                    host.setsockopt(SOL_NETLINK, opt, value)
            _, _, flags, _, _ = NLMSG.unpack_from(msg)
            host.send(msg)
            done = False
            while not done:
                try:
                    datagram = host.recv(1 << 16)
                except OSError as e:  # a timeout: what came is all there is
                    log.warning("netlink: the host kernel did not finish answering (%s)", e)
                    break
                out = bytearray(datagram)
                offset = 0
                while offset + NLMSG.size <= len(out):
                    length, kind, mflags, seq, _ = NLMSG.unpack_from(out, offset)
                    NLMSG.pack_into(out, offset, length, kind, mflags, seq, self.port)
                    if kind in (NLMSG_DONE, NLMSG_ERROR) or not (flags & NLM_F_DUMP or flags & NLM_F_ACK
                                                               or mflags & NLM_F_MULTI):
                        done = True
                    offset += max((length + 3) & ~3, NLMSG.size)
                answers.append(bytes(out))
        return _rebatched(answers, max(NLMSG_GOODSIZE, self.max_recv))


def _rebatched(datagrams: list[bytes], size: int) -> list[bytes]:
    """The host's answers as datagrams of at most `size` bytes (one message alone if larger),
    as Linux sizes a dump's datagrams for the reader: the host filled them for the sentry's
    own 64 KiB receives, which a program reading 4 KiB at a time would find cut short."""
    out: list[bytes] = []
    batch = b""
    for datagram in datagrams:
        offset = 0
        while offset + NLMSG.size <= len(datagram):
            length = NLMSG.unpack_from(datagram, offset)[0]
            step = max((length + 3) & ~3, NLMSG.size)
            message = datagram[offset:offset + step]
            if batch and len(batch) + len(message) > size:
                out.append(batch)
                batch = b""
            batch += message
            offset += step
        if batch:
            out.append(batch)
            batch = b""
    return out


def _live(s: NetlinkSocket | None) -> bool:
    return s is not None and s.refs > 0


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("<HH", length, kind) + data + b"\0" * (-length % 4)


def _message(kind: int, flags: int, seq: int, port: int, payload: bytes) -> bytes:
    return NLMSG.pack(NLMSG.size + len(payload), kind, flags, seq, port) + payload


def _error(msg: bytes, seq: int, port: int, err: int, cap_ack: bool) -> bytes:
    """NLMSG_ERROR for `msg` (err 0: an acknowledgement): the request's header, and all of
    it for an error unless NETLINK_CAP_ACK."""
    capped = err == 0 or cap_ack
    echoed = msg[:NLMSG.size] if capped else msg
    return _message(NLMSG_ERROR, NLM_F_CAPPED if capped else 0, seq, port, _ERROR.pack(-err) + echoed)


def _attrs(payload: bytes) -> dict[int, bytes]:
    out = {}
    offset = 0
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("<HH", payload, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = payload[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _lo_link() -> bytes:
    return _IFINFOMSG.pack(0, ARPHRD_LOOPBACK, 1, IFF_UP | IFF_LOOPBACK | IFF_RUNNING | IFF_LOWER_UP, 0) + \
        _attr(IFLA_IFNAME, b"lo\0") + _attr(IFLA_TXQLEN, struct.pack("<I", 1000)) + \
        _attr(IFLA_OPERSTATE, b"\0") + _attr(IFLA_LINKMODE, b"\0") + _attr(IFLA_MTU, struct.pack("<I", 65536)) + \
        _attr(IFLA_QDISC, b"noqueue\0") + _attr(IFLA_ADDRESS, bytes(6)) + _attr(IFLA_BROADCAST, bytes(6))


def _lo_addresses(family: int) -> list[bytes]:
    v4 = _IFADDRMSG.pack(socket.AF_INET, 8, IFA_F_PERMANENT, RT_SCOPE_HOST, 1) + \
        _attr(IFA_ADDRESS, socket.inet_aton("127.0.0.1")) + _attr(IFA_LOCAL, socket.inet_aton("127.0.0.1")) + \
        _attr(IFA_LABEL, b"lo\0") + _attr(IFA_FLAGS, struct.pack("<I", IFA_F_PERMANENT))
    v6 = _IFADDRMSG.pack(socket.AF_INET6, 128, IFA_F_PERMANENT, RT_SCOPE_HOST, 1) + \
        _attr(IFA_ADDRESS, socket.inet_pton(socket.AF_INET6, "::1")) + \
        _attr(IFA_FLAGS, struct.pack("<I", IFA_F_PERMANENT))
    return [a for f, a in ((socket.AF_INET, v4), (socket.AF_INET6, v6)) if family in (0, f)]


def _lo_routes(family: int) -> list[bytes]:
    """The local table of a namespace with `lo` up: 127.0.0.0/8, 127.0.0.1 and the
    broadcast 127.255.255.255 over IPv4, ::1 over IPv6, as Linux dumps them."""
    out = []
    if family in (0, socket.AF_INET):
        lo = socket.inet_aton("127.0.0.1")
        for prefix, dst, scope, kind in ((8, "127.0.0.0", RT_SCOPE_HOST, RTN_LOCAL),
                                         (32, "127.0.0.1", RT_SCOPE_HOST, RTN_LOCAL),
                                         (32, "127.255.255.255", RT_SCOPE_LINK, RTN_BROADCAST)):
            out.append(_RTMSG.pack(socket.AF_INET, prefix, 0, 0, RT_TABLE_LOCAL, RTPROT_KERNEL, scope, kind, 0)
                       + _attr(RTA_TABLE, struct.pack("<I", RT_TABLE_LOCAL)) + _attr(RTA_DST, socket.inet_aton(dst))
                       + _attr(RTA_PREFSRC, lo) + _attr(RTA_OIF, struct.pack("<I", 1)))
    if family in (0, socket.AF_INET6):
        out.append(_RTMSG.pack(socket.AF_INET6, 128, 0, 0, RT_TABLE_LOCAL, RTPROT_KERNEL, 0, RTN_LOCAL, 0)
                   + _attr(RTA_TABLE, struct.pack("<I", RT_TABLE_LOCAL))
                   + _attr(RTA_DST, socket.inet_pton(socket.AF_INET6, "::1")) + _attr(RTA_PRIORITY, bytes(4))
                   + _attr(RTA_OIF, struct.pack("<I", 1)) + _attr(RTA_CACHEINFO, bytes(32)) + _attr(RTA_PREF, b"\0"))
    return out


def _loopback(msg: bytes, port: int) -> list[bytes] | None:
    """The answers of a sandbox with loopback alone (None: a query not answered)."""
    _, kind, flags, seq, _ = NLMSG.unpack_from(msg)
    payload = msg[NLMSG.size:]
    dump = flags & NLM_F_DUMP == NLM_F_DUMP
    done = _message(NLMSG_DONE, NLM_F_MULTI, seq, port, _ERROR.pack(0))
    if kind == RTM_GETLINK and dump:
        return [_message(RTM_NEWLINK, NLM_F_MULTI, seq, port, _lo_link()) + done]
    if kind == RTM_GETLINK:
        index = _IFINFOMSG.unpack_from(payload)[2] if len(payload) >= _IFINFOMSG.size else 0
        name = _attrs(payload[_IFINFOMSG.size:]).get(IFLA_IFNAME, b"").rstrip(b"\0")
        if (index, name) not in ((1, b""), (0, b"lo"), (1, b"lo")):
            return [_error(msg, seq, port, errno.ENODEV, False)]
        answer = [_message(RTM_NEWLINK, 0, seq, port, _lo_link())]
        return answer + ([_error(msg, seq, port, 0, True)] if flags & NLM_F_ACK else [])
    if kind == RTM_GETADDR and dump:
        family = payload[0] if payload else 0
        return [b"".join(_message(RTM_NEWADDR, NLM_F_MULTI, seq, port, a) for a in _lo_addresses(family)) + done]
    if kind == RTM_GETROUTE and dump:
        family = payload[0] if payload else 0
        return [b"".join(_message(RTM_NEWROUTE, NLM_F_MULTI, seq, port, r) for r in _lo_routes(family)) + done]
    return None


# -- the interface ioctls ---------------------------------------------------------------------

def interface_ioctl(t, request: int, arg: int) -> int:
    """An SIOCGIF* ioctl on any socket of the sandbox."""
    outside = has_outside(t.kernel)
    if request == SIOCGIFCONF:  # with no buffer, the length all of them take
        length, buf = _IFCONF.unpack(t.mm.read(arg, _IFCONF.size))
        room = max(0, min(length, 1 << 16)) if buf else 1 << 16
        got = _ask_host_ifconf(t.kernel, room) if outside else _lo_ifconf(room)
        if buf:
            t.mm.write(buf, got)
        t.mm.write(arg, struct.pack("<i", len(got)))
        return 0
    ifreq = bytearray(t.mm.read(arg, IFREQ_SIZE))
    if outside:
        t.kernel.ensure_network()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                ifreq = bytearray(fcntl.ioctl(s.fileno(), request, bytes(ifreq)))
        except OSError as e:
            raise SyscallError(e.errno or errno.EIO) from None
    else:
        _lo_ifreq(request, ifreq)
    t.mm.write(arg, bytes(ifreq))
    return 0


def _lo_ifreq(request: int, ifreq: bytearray) -> None:
    name = bytes(ifreq[:IFNAMSIZ]).split(b"\0")[0]
    if request == SIOCGIFNAME:
        if struct.unpack_from("<i", ifreq, IFNAMSIZ)[0] != 1:
            raise SyscallError(errno.ENODEV)
        ifreq[:IFNAMSIZ] = b"lo".ljust(IFNAMSIZ, b"\0")
        return
    if name != b"lo":
        raise SyscallError(errno.ENODEV)
    union = {
        SIOCGIFINDEX: struct.pack("<i", 1),
        SIOCGIFFLAGS: struct.pack("<H", IFF_UP | IFF_LOOPBACK | IFF_RUNNING),
        SIOCGIFMTU: struct.pack("<i", 65536),
        SIOCGIFTXQLEN: struct.pack("<i", 1000),
        SIOCGIFADDR: _sockaddr_in("127.0.0.1"),
        SIOCGIFNETMASK: _sockaddr_in("255.0.0.0"),
        SIOCGIFHWADDR: struct.pack("<H", ARPHRD_LOOPBACK) + bytes(14),
    }[request]
    ifreq[IFNAMSIZ:IFNAMSIZ + len(union)] = union


def _sockaddr_in(ip: str) -> bytes:
    return struct.pack("<HH4s8x", socket.AF_INET, 0, socket.inet_aton(ip))


def _lo_ifconf(room: int) -> bytes:
    entry = b"lo".ljust(IFNAMSIZ, b"\0") + _sockaddr_in("127.0.0.1") + bytes(IFREQ_SIZE - IFNAMSIZ - 16)
    return entry if room >= IFREQ_SIZE else b""


def _ask_host_ifconf(kernel, room: int) -> bytes:
    """SIOCGIFCONF in the sandbox's namespace: the ifreqs that fit in `room` bytes."""
    import array

    kernel.ensure_network()
    buf = array.array("B", bytes(room))
    ifconf = bytearray(_IFCONF.pack(room, buf.buffer_info()[0]))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            fcntl.ioctl(s.fileno(), SIOCGIFCONF, ifconf, True)
    except OSError as e:
        raise SyscallError(e.errno or errno.EIO) from None
    return buf.tobytes()[:struct.unpack_from("<i", ifconf)[0]]

