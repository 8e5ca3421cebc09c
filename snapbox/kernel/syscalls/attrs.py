"""Attributes: mode (chmod), owner (chown), times (utimensat), size (truncate, fallocate),
umask."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct

from snapbox.kernel.creds import CAP_CHOWN, CAP_FSETID, MAY_WRITE, capable_wrt, check, in_group, named, owns
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.pipe import PipeFile
from snapbox.kernel.syscalls import NR, i32, i64, syscall
from snapbox.kernel.syscalls.common import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, host_path, lookup, on_host
from snapbox.kernel.syscalls import common
from snapbox.kernel.inotify import IN_ACCESS, IN_ATTRIB, IN_MODIFY, notify
from snapbox.kernel.vfs import DirFile, LowerNode, MemRegular, RegularFile, now_ns



FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
FALLOC_FL_OTHERS = 0x8 | 0x10 | 0x20 | 0x40  # COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


@syscall(NR.fallocate)
def fallocate(t, fd, mode, offset, length):
    """Space for a range of a regular file, as tmpfs offers it: allocate (keeping the size
    or not) and punch holes (with FALLOC_FL_KEEP_SIZE); the other modes are EOPNOTSUPP. A
    file of a read-write bind mount asks the host's file system."""
    f = t.fds.get_open(i32(fd))
    mode, offset, length = i32(mode), i64(offset), i64(length)
    if offset < 0 or length <= 0:
        raise SyscallError(errno.EINVAL)
    if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_OTHERS) or \
            (mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE):
        raise SyscallError(errno.EOPNOTSUPP)
    if not f.writable():
        raise SyscallError(errno.EBADF)
    if isinstance(f, PipeFile):
        raise SyscallError(errno.ESPIPE)
    if not isinstance(f, RegularFile):
        raise SyscallError(errno.ENODEV)
    if not mode & FALLOC_FL_KEEP_SIZE:
        common.may_grow_to(t, f.stat()["size"], offset + length)  # RLIMIT_FSIZE
    if f._on_host():
        if _libc.fallocate(f._host(), mode, offset, length) < 0:
            raise SyscallError(ctypes.get_errno())
    elif not isinstance(f.node, MemRegular):
        raise SyscallError(errno.EBADF)
    elif mode in (0, FALLOC_FL_KEEP_SIZE):
        f.node.allocate(offset, length, keep_size=bool(mode))
    elif mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
        f.node.punch(offset, length)
    else:
        raise SyscallError(errno.EOPNOTSUPP)
    f.notify(IN_MODIFY)
    return 0


@syscall(NR.umask)
def umask(t, mask):
    old, t.fs.umask = t.fs.umask, mask & 0o777
    return old


@syscall(NR.ftruncate, stopped=True)  # stopped: the caller's mappings of the file may end sooner
def ftruncate(t, fd, length):
    f = t.fds.get_open(i32(fd))
    if i64(length) < 0 or not isinstance(f, RegularFile):
        raise SyscallError(errno.EINVAL)
    if not f.writable():
        raise SyscallError(errno.EINVAL)
    common.may_grow_to(t, f.stat()["size"], i64(length))
    if f._on_host():
        os.ftruncate(f._host(), i64(length))
        common.resized(t, f.node)
    elif not isinstance(f.node, MemRegular):
        raise SyscallError(errno.EBADF)
    else:
        common.truncate(t, f.node, i64(length))
    f.notify(IN_MODIFY)
    return 0


def place_of(f) -> tuple:
    """The directory an open file is in and its name there (for inotify), if known."""
    if isinstance(f, RegularFile):
        return f.parent, f.entry
    if isinstance(f, DirFile):
        return f.node.parent, f.node.name
    return None, ""


def _node_of(t, dirfd: int, path: int, flags: int) -> tuple:
    """The node a path argument names (or the fd, with AT_EMPTY_PATH), with its directory
    and name there."""
    parent, name, node, raw = lookup(t, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                                     empty_ok=bool(flags & AT_EMPTY_PATH))
    if not raw and flags & AT_EMPTY_PATH:
        f = t.fds.get(dirfd)
        node = getattr(f, "node", None)
        if node is None:
            raise SyscallError(errno.EPERM)
        parent, name = place_of(f)
    if node is None:
        raise SyscallError(errno.ENOENT)
    return node, parent, name


def _fd_node(t, fd: int) -> tuple:
    f = t.fds.get_open(i32(fd))
    node = getattr(f, "node", None)
    if node is None:
        raise SyscallError(errno.EPERM)
    return (node, *place_of(f))


def _chmod(t, target: tuple, mode: int) -> int:
    node = target[0]
    if not owns(t.tg, node):
        raise SyscallError(errno.EPERM)
    if not in_group(t.tg, node.gid) and not capable_wrt(t.tg, node, CAP_FSETID):
        mode &= ~stat.S_ISGID  # chmod(2): not kept by a caller outside the file's group
    host = on_host(t, node)
    if host is not None:
        host.at(host_path(node), os.chmod, mode & 0o7777)
    else:
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        node.ctime = now_ns()
    notify(node, IN_ATTRIB, *target[1:])
    return 0


@syscall(NR.fchmodat)
def fchmodat(t, dirfd, path, mode):
    return _chmod(t, _node_of(t, i32(dirfd), path, 0), mode)


@syscall(NR.chmod)
def chmod(t, path, mode):
    return _chmod(t, _node_of(t, AT_FDCWD, path, 0), mode)


@syscall(NR.fchmod)
def fchmod(t, fd, mode):
    return _chmod(t, _fd_node(t, fd), mode)


def _chown(t, target: tuple, uid: int, gid: int) -> int:
    node = target[0]
    tg = t.tg
    # The ids as kernel ids (EINVAL for one the caller's user namespace has no name for).
    uid = -1 if i32(uid) == -1 else named(tg.user_ns, uid, "uid")
    gid = -1 if i32(gid) == -1 else named(tg.user_ns, gid, "gid")
    if not capable_wrt(tg, node, CAP_CHOWN):
        # chown(2): only the owner, and only to give the file to one of its own groups.
        if uid != -1 and (uid & 0xFFFFFFFF != node.uid or tg.fsuid != node.uid):
            raise SyscallError(errno.EPERM)
        if gid != -1 and (tg.fsuid != node.uid or (gid & 0xFFFFFFFF != node.gid and not in_group(tg, gid))):
            raise SyscallError(errno.EPERM)
    if not node.is_dir() and not stat.S_ISLNK(node.mode):
        # ... and a file's set-user-ID bit goes, and its set-group-ID bit if it is group-executable.
        node.mode &= ~(stat.S_ISUID | (stat.S_ISGID if node.mode & stat.S_IXGRP else 0))
    host = on_host(t, node)
    if host is not None:
        host.at(host_path(node), lambda n, dir_fd: os.chown(n, i32(uid), i32(gid), dir_fd=dir_fd,
                                                             follow_symlinks=False))
    else:
        if i32(uid) != -1:
            node.uid = uid & 0xFFFFFFFF
        if i32(gid) != -1:
            node.gid = gid & 0xFFFFFFFF
        node.ctime = now_ns()
    notify(node, IN_ATTRIB, *target[1:])
    return 0


@syscall(NR.fchownat)
def fchownat(t, dirfd, path, uid, gid, flags):
    return _chown(t, _node_of(t, i32(dirfd), path, i32(flags)), uid, gid)


@syscall(NR.chown)
def chown(t, path, uid, gid):
    return _chown(t, _node_of(t, AT_FDCWD, path, 0), uid, gid)


@syscall(NR.lchown)
def lchown(t, path, uid, gid):
    return _chown(t, _node_of(t, AT_FDCWD, path, AT_SYMLINK_NOFOLLOW), uid, gid)


@syscall(NR.fchown)
def fchown(t, fd, uid, gid):
    return _chown(t, _fd_node(t, fd), uid, gid)


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


@syscall(NR.utimensat)
def utimensat(t, dirfd, path, times, flags):
    flags = i32(flags)
    if path:
        node, parent, name = _node_of(t, i32(dirfd), path, flags)
    else:
        f = t.fds.get(i32(dirfd))
        node = getattr(f, "node", None)
        if node is None:
            raise SyscallError(errno.EBADF)
        parent, name = place_of(f)
    host = on_host(t, node)
    now = now_ns()
    stamps = [(0, UTIME_NOW), (0, UTIME_NOW)] if not times else \
        [struct.unpack_from("<qq", t.mm.read(times, 32), i * 16) for i in range(2)]
    given = {nsec for _, nsec in stamps} - {UTIME_OMIT}
    if given and not owns(t.tg, node):
        # utimensat(2): setting them to now needs write permission, to anything else ownership.
        if given != {UTIME_NOW}:
            raise SyscallError(errno.EPERM)
        check(t.tg, node, MAY_WRITE)
    for (sec, nsec), attr in zip(stamps, ("atime", "mtime")):
        if nsec == UTIME_OMIT:
            continue
        if nsec != UTIME_NOW and not 0 <= nsec < 10**9:
            raise SyscallError(errno.EINVAL)
        setattr(node, attr, now if nsec == UTIME_NOW else sec * 10**9 + nsec)
    node.ctime = now
    if host is not None:
        host.at(host_path(node), lambda n, dir_fd: os.utime(n, ns=(node.atime, node.mtime), dir_fd=dir_fd,
                                                             follow_symlinks=False))
    notify(node, _times_event(stamps), parent, name)
    return 0


def _times_event(stamps: list) -> int:
    """fsnotify_change(): both times set is IN_ATTRIB; one of them, IN_ACCESS or IN_MODIFY."""
    atime, mtime = (nsec != UTIME_OMIT for _, nsec in stamps)
    if atime and mtime:
        return IN_ATTRIB
    return IN_ACCESS if atime else IN_MODIFY if mtime else IN_ATTRIB


@syscall(NR.truncate, stopped=True)
def truncate(t, path, length):
    if i64(length) < 0:
        raise SyscallError(errno.EINVAL)
    parent, name, node, _ = lookup(t, AT_FDCWD, path)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if node.is_dir():
        raise SyscallError(errno.EISDIR)
    check(t.tg, node, MAY_WRITE)
    host = on_host(t, node)
    if host is not None:
        fd = host.open(node.path, os.O_WRONLY)
        try:
            common.may_grow_to(t, os.fstat(fd).st_size, i64(length))
            os.ftruncate(fd, i64(length))
        finally:
            os.close(fd)
        common.resized(t, node)
    else:
        if isinstance(node, LowerNode):
            node = t.kernel.fs.copy_up(parent, name, node)
        if not isinstance(node, MemRegular):
            raise SyscallError(errno.EINVAL)
        common.may_grow_to(t, node.size(), i64(length))
        common.truncate(t, node, i64(length))
    notify(node, IN_MODIFY, parent, name)
    return 0
