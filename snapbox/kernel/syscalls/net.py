"""Sockets: socketpair(2) of AF_UNIX stream sockets and the calls that use them. Other
families are not there yet: socket(2) fails with EAFNOSUPPORT."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.socket import AF_UNIX, SOCK_STREAM, UnixSocket, make_pair
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.fs import MAX_RW, _iovecs, scatter, write_all

SOCK_NONBLOCK, SOCK_CLOEXEC = O_NONBLOCK, O_CLOEXEC
SOL_SOCKET, SO_TYPE, SO_ERROR, SO_DOMAIN, SO_ACCEPTCONN, SO_SNDBUF, SO_RCVBUF = 1, 3, 4, 39, 30, 7, 8
_MSGHDR = struct.Struct("<QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags


@syscall(NR.socket)
def socket(t, domain, type_, protocol):
    raise SyscallError(errno.EAFNOSUPPORT, "only socketpair(AF_UNIX, SOCK_STREAM) exists so far")


@syscall(NR.socketpair)
def socketpair(t, domain, type_, protocol, sv):
    kind = i32(type_) & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)
    if i32(domain) != AF_UNIX:
        raise SyscallError(errno.EAFNOSUPPORT)
    if kind != SOCK_STREAM:
        raise SyscallError(errno.EOPNOTSUPP, "only SOCK_STREAM socket pairs exist so far")
    if i32(protocol) not in (0, 1):
        raise SyscallError(errno.EPROTONOSUPPORT)
    a, b = make_pair(t.kernel, i32(type_) & SOCK_NONBLOCK)
    cloexec = bool(i32(type_) & SOCK_CLOEXEC)
    fa = t.fds.install(a, cloexec=cloexec)
    try:
        fb = t.fds.install(b, cloexec=cloexec)
    except SyscallError:
        t.fds.close(fa)
        raise
    t.mm.write(sv, struct.pack("<ii", fa, fb))
    return 0


def _sock(t, fd: int) -> UnixSocket:
    f = t.fds.get(i32(fd))
    if not isinstance(f, UnixSocket):
        raise SyscallError(errno.ENOTSOCK)
    return f


@syscall(NR.sendto)
def sendto(t, fd, buf, length, flags, addr, addrlen):
    s = _sock(t, fd)
    if addr:
        raise SyscallError(errno.EISCONN)
    data = t.mm.read(buf, min(length, MAX_RW))
    return s.send(t, data, i32(flags))


@syscall(NR.recvfrom)
def recvfrom(t, fd, buf, length, flags, addr, addrlen):
    s = _sock(t, fd)
    data = s.recv(t, min(length, MAX_RW), i32(flags))
    t.mm.write(buf, data)
    if addrlen:
        t.mm.write(addrlen, struct.pack("<I", 0))
    return len(data)


@syscall(NR.sendmsg)
def sendmsg(t, fd, msg, flags):
    s = _sock(t, fd)
    _, _, iov, iovlen, _, controllen, _ = _MSGHDR.unpack(t.mm.read(msg, _MSGHDR.size))
    if controllen:
        raise SyscallError(errno.EOPNOTSUPP, "ancillary data (SCM_RIGHTS) is not supported yet")
    data = b"".join(t.mm.read(base, n) for base, n in _iovecs(t, iov, iovlen))
    return write_all(t, NR.sendmsg, _Flagged(s, i32(flags)), data[:MAX_RW])


class _Flagged:
    """A socket with send flags, for write_all."""

    def __init__(self, sock: UnixSocket, flags: int) -> None:
        self.sock, self.flags = sock, flags

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        return self.sock.send(t, data, self.flags)


@syscall(NR.recvmsg)
def recvmsg(t, fd, msg, flags):
    s = _sock(t, fd)
    name, namelen, iov, iovlen, control, controllen, _ = _MSGHDR.unpack(t.mm.read(msg, _MSGHDR.size))
    vecs = _iovecs(t, iov, iovlen)
    data = s.recv(t, min(sum(n for _, n in vecs), MAX_RW), i32(flags))
    scatter(t, vecs, data)
    t.mm.write(msg, _MSGHDR.pack(name, 0, iov, iovlen, control, 0, 0))
    return len(data)


@syscall(NR.shutdown)
def shutdown(t, fd, how):
    _sock(t, fd).shutdown(i32(how))
    return 0


@syscall(NR.getsockopt)
def getsockopt(t, fd, level, optname, optval, optlen):
    _sock(t, fd)
    if i32(level) != SOL_SOCKET:
        raise SyscallError(errno.ENOPROTOOPT)
    values = {SO_TYPE: SOCK_STREAM, SO_ERROR: 0, SO_DOMAIN: AF_UNIX, SO_ACCEPTCONN: 0,
              SO_SNDBUF: 212992, SO_RCVBUF: 212992}
    value = values.get(i32(optname))
    if value is None:
        raise SyscallError(errno.ENOPROTOOPT)
    t.mm.write(optval, struct.pack("<i", value))
    t.mm.write(optlen, struct.pack("<I", 4))
    return 0


@syscall(NR.setsockopt)
def setsockopt(t, fd, level, optname, optval, optlen):
    _sock(t, fd)
    if i32(level) != SOL_SOCKET:
        raise SyscallError(errno.ENOPROTOOPT)
    return 0  # buffer sizes and the like: accepted, the pair's buffers are fixed


@syscall(NR.getsockname, NR.getpeername)
def getsockname(t, fd, addr, addrlen):
    _sock(t, fd)
    t.mm.write(addr, struct.pack("<H", AF_UNIX))
    t.mm.write(addrlen, struct.pack("<I", 2))
    return 0
