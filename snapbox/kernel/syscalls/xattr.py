"""Extended attributes (xattr(7)): setxattr, getxattr, listxattr, removexattr, with their
l- (the link itself) and f- (an open file) forms.

The writable layer, tmpfs mounts and the rootfs keep a node's attributes on the node
(Inode.xattrs), so they are in every image; a read-write bind mount's files keep theirs on
the host. Namespaces as Linux checks them: user.* on regular files and directories only,
with the file's read or write permission (and a sticky directory's owner rule), trusted.*
with CAP_SYS_ADMIN (hidden from a list without it), security.* set with CAP_SYS_ADMIN;
system.* (ACLs) and unknown prefixes are not supported. A list comes in tmpfs's order.
"""

from __future__ import annotations

import errno
import os
import stat

from snapbox.kernel.creds import CAP_SYS_ADMIN, MAY_READ, MAY_WRITE, capable, check, owns
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.inotify import IN_ATTRIB, notify
from snapbox.kernel.pipe import PipeFile
from snapbox.kernel.procfs import ProcNode
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.attrs import place_of
from snapbox.kernel.syscalls.common import AT_FDCWD, host_path, lookup, on_host
from snapbox.kernel.vfs import now_ns

XATTR_CREATE, XATTR_REPLACE = 1, 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
XATTR_LIST_MAX = 65536
NAMESPACES = (b"user.", b"trusted.", b"security.")


class _Fifo:
    """What a pipe's xattr calls see: a FIFO inode that keeps no attributes."""

    mode = stat.S_IFIFO | 0o600
    uid = gid = 0


def _node(t, path: int, follow: bool) -> tuple:
    """The node a path names, with its directory and its name there (for inotify)."""
    parent, name, node, _ = lookup(t, AT_FDCWD, path, follow=follow)
    if node is None:
        raise SyscallError(errno.ENOENT)
    return node, parent, name


def _file_node(t, fd: int) -> tuple:
    f = t.fds.get_open(i32(fd))
    if isinstance(f, PipeFile):
        return _Fifo(), None, ""
    node = getattr(f, "node", None)
    if node is None:
        raise SyscallError(errno.EOPNOTSUPP)  # an anonymous inode: no attributes
    return (node, *place_of(f))


def _name(t, addr: int) -> bytes:
    try:
        name = t.mm.read_cstring(addr, XATTR_NAME_MAX + 1)
    except SyscallError as e:
        raise SyscallError(errno.ERANGE if e.errno == errno.ENAMETOOLONG else e.errno) from None
    if not name or len(name) > XATTR_NAME_MAX:
        raise SyscallError(errno.ERANGE)
    return name


def _permission(t, node, name: bytes, write: bool) -> None:
    """xattr_permission(): whether the caller may read or change attribute `name`."""
    if isinstance(node, ProcNode) or not name.startswith(NAMESPACES):
        raise SyscallError(errno.EOPNOTSUPP)
    if name.startswith(b"trusted."):
        if not capable(t.tg, CAP_SYS_ADMIN):
            raise SyscallError(errno.EPERM if write else errno.ENODATA)
    elif name.startswith(b"user."):
        if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
            raise SyscallError(errno.EPERM if write else errno.ENODATA)
        if write and stat.S_ISDIR(node.mode) and node.mode & stat.S_ISVTX and not owns(t.tg, node):
            raise SyscallError(errno.EPERM)
        check(t.tg, node, MAY_WRITE if write else MAY_READ)
    elif write and not capable(t.tg, CAP_SYS_ADMIN):  # security.*
        raise SyscallError(errno.EPERM)
    if name in NAMESPACES:
        raise SyscallError(errno.EINVAL)  # a prefix and nothing after it


def _host_call(host, node, fn, *args):
    """Run os.<fn>xattr on a read-write bind mount's file, through an O_PATH fd of it."""
    fd = host.open(host_path(node), os.O_PATH)
    try:
        return fn(f"/proc/self/fd/{fd}", *args)
    except OSError as e:
        raise SyscallError(e.errno) from None
    finally:
        os.close(fd)


def _set(t, target: tuple, name_addr: int, value: int, size: int, flags: int) -> int:
    node = target[0]
    flags = i32(flags)
    if flags & ~(XATTR_CREATE | XATTR_REPLACE):
        raise SyscallError(errno.EINVAL)
    name = _name(t, name_addr)
    if size > XATTR_SIZE_MAX:
        raise SyscallError(errno.E2BIG)
    data = t.mm.read(value, size) if size else b""
    _no_attributes(t, node, name, write=True)
    host = on_host(t, node)
    _permission(t, node, name, write=True)
    if host is not None:
        how = os.XATTR_CREATE if flags & XATTR_CREATE else os.XATTR_REPLACE if flags & XATTR_REPLACE else 0
        _host_call(host, node, os.setxattr, name, data, how)
    else:
        exists = name in node.xattrs
        if flags & XATTR_CREATE and exists:
            raise SyscallError(errno.EEXIST)
        if flags & XATTR_REPLACE and not exists:
            raise SyscallError(errno.ENODATA)
        node.xattrs[name] = data
        node.ctime = now_ns()
    notify(node, IN_ATTRIB, *target[1:])
    return 0


def _get(t, target: tuple, name_addr: int, value: int, size: int) -> int:
    node = target[0]
    name = _name(t, name_addr)
    _no_attributes(t, node, name, write=False)
    _permission(t, node, name, write=False)
    host = _bind_mount(t, node)
    data = _host_call(host, node, os.getxattr, name) if host is not None else node.xattrs.get(name)
    if data is None:
        raise SyscallError(errno.ENODATA)
    if size:
        if size < len(data):
            raise SyscallError(errno.ERANGE)
        t.mm.write(value, data)
    return len(data)


def _list(t, target: tuple, out: int, size: int) -> int:
    node = target[0]
    if isinstance(node, (ProcNode, _Fifo)):
        return 0
    host = _bind_mount(t, node)
    if host is not None:
        names = [os.fsencode(n) for n in _host_call(host, node, os.listxattr)]
    else:
        names = sorted(node.xattrs, reverse=True)  # tmpfs lists them so
    if not capable(t.tg, CAP_SYS_ADMIN):
        names = [n for n in names if not n.startswith(b"trusted.")]
    data = b"".join(n + b"\0" for n in names)
    if size:
        if size < len(data):
            raise SyscallError(errno.ERANGE)
        t.mm.write(out, data)
    return len(data)


def _remove(t, target: tuple, name_addr: int) -> int:
    node = target[0]
    name = _name(t, name_addr)
    _no_attributes(t, node, name, write=True)
    host = on_host(t, node)
    _permission(t, node, name, write=True)
    if host is not None:
        _host_call(host, node, os.removexattr, name)
    else:
        if node.xattrs.pop(name, None) is None:
            raise SyscallError(errno.ENODATA)
        node.ctime = now_ns()
    notify(node, IN_ATTRIB, *target[1:])
    return 0


def _no_attributes(t, node, name: bytes, write: bool) -> None:
    """/proc's files and pipes keep no attributes (what the permission check says first)."""
    if isinstance(node, (ProcNode, _Fifo)):
        _permission(t, node, name, write)
        raise SyscallError(errno.EOPNOTSUPP)


def _bind_mount(t, node):
    """The host directory of a node in a bind mount (read-only or not), else None."""
    layer = getattr(node, "layer", 0)
    return t.kernel.fs.host(layer) if layer else None


@syscall(NR.setxattr)
def setxattr(t, path, name, value, size, flags):
    return _set(t, _node(t, path, True), name, value, size, flags)


@syscall(NR.lsetxattr)
def lsetxattr(t, path, name, value, size, flags):
    return _set(t, _node(t, path, False), name, value, size, flags)


@syscall(NR.fsetxattr)
def fsetxattr(t, fd, name, value, size, flags):
    return _set(t, _file_node(t, fd), name, value, size, flags)


@syscall(NR.getxattr)
def getxattr(t, path, name, value, size):
    return _get(t, _node(t, path, True), name, value, size)


@syscall(NR.lgetxattr)
def lgetxattr(t, path, name, value, size):
    return _get(t, _node(t, path, False), name, value, size)


@syscall(NR.fgetxattr)
def fgetxattr(t, fd, name, value, size):
    return _get(t, _file_node(t, fd), name, value, size)


@syscall(NR.listxattr)
def listxattr(t, path, out, size):
    return _list(t, _node(t, path, True), out, size)


@syscall(NR.llistxattr)
def llistxattr(t, path, out, size):
    return _list(t, _node(t, path, False), out, size)


@syscall(NR.flistxattr)
def flistxattr(t, fd, out, size):
    return _list(t, _file_node(t, fd), out, size)


@syscall(NR.removexattr)
def removexattr(t, path, name):
    return _remove(t, _node(t, path, True), name)


@syscall(NR.lremovexattr)
def lremovexattr(t, path, name):
    return _remove(t, _node(t, path, False), name)


@syscall(NR.fremovexattr)
def fremovexattr(t, fd, name):
    return _remove(t, _file_node(t, fd), name)
