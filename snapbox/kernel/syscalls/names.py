"""Names: the working and root directories (chroot), mkdir, unlink and rmdir, rename, link, symlink, mknod,
and listing a directory (getdents64, and the older getdents)."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from snapbox.kernel.creds import CAP_MKNOD, CAP_SYS_CHROOT, MAY_EXEC, MAY_WRITE, capable, check, may_delete, own_capable, owner_ids
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.inotify import (
    IN_ACCESS, IN_ATTRIB, IN_CREATE, IN_DELETE, IN_MOVE_SELF, IN_MOVED_FROM, IN_MOVED_TO, deleted, notify, notify_dir,
)
from snapbox.kernel.pipe import FifoNode, Pipe
from snapbox.kernel.procfs import ProcDir
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_FOLLOW, host_path, lookup, on_host
from snapbox.kernel.vfs import Dir, DirFile, LowerNode, MemRegular, MemSymlink, now_ns, within



@syscall(NR.getcwd)
def getcwd(t, buf, size):
    path = os.fsencode(_seen_from(t.fs.root, t.fs.cwd)) + b"\0"
    if size < len(path):
        raise SyscallError(errno.ERANGE)
    t.mm.write(buf, path)
    return len(path)


def _seen_from(root: Dir, d: Dir) -> str:
    """Directory `d`'s path as a process whose root is `root` sees it; one outside that
    root is "(unreachable)" and its path from the filesystem's root, as Linux says."""
    parts = []
    while d is not root and d.parent is not None:
        parts.append(d.name)
        d = d.parent
    path = "/" + "/".join(reversed(parts))
    return path if d is root else "(unreachable)" + path


def _directory(t, path: int) -> Dir:
    """A path argument naming a directory the caller may search (chdir, chroot)."""
    _, _, node, _ = lookup(t, AT_FDCWD, path)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if not node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    check(t.tg, node, MAY_EXEC)
    return node


@syscall(NR.chdir)
def chdir(t, path):
    t.fs.cwd = _directory(t, path)
    return 0


@syscall(NR.fchdir)
def fchdir(t, fd):
    f = t.fds.get(i32(fd))
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    check(t.tg, f.node, MAY_EXEC)
    t.fs.cwd = f.node
    return 0


@syscall(NR.chroot)
def chroot(t, path):
    """chroot(2): paths of this process start from the directory; its working directory
    stays where it is (and may be outside)."""
    node = _directory(t, path)
    if not own_capable(t.tg, CAP_SYS_CHROOT):
        raise SyscallError(errno.EPERM)
    t.fs.root = node
    return 0


@syscall(NR.mkdirat)
def mkdirat(t, dirfd, path, mode):
    parent, name, node, _ = lookup(t, i32(dirfd), path, follow=False)
    if node is not None:
        raise SyscallError(errno.EEXIST)
    if isinstance(parent, ProcDir):
        raise SyscallError(errno.EACCES)
    check(t.tg, parent, MAY_WRITE | MAY_EXEC)
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), os.mkdir, mode & 0o7777 & ~t.fs.umask)
    else:
        uid, gid = owner_ids(t.tg, parent)
        # mkdir(2): a directory made in a set-group-ID one is set-group-ID too.
        t.kernel.fs.make_dir(parent, name, (mode & 0o1777 & ~t.fs.umask) | (parent.mode & st.S_ISGID), uid, gid)
    notify_dir(parent, IN_CREATE, name, isdir=True)
    return 0


@syscall(NR.mkdir)
def mkdir(t, path, mode):
    return mkdirat(t, AT_FDCWD & 0xFFFFFFFF, path, mode)


AT_REMOVEDIR = 0x200


@syscall(NR.unlinkat)
def unlinkat(t, dirfd, path, flags):
    parent, name, node, _ = lookup(t, i32(dirfd), path, follow=False)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if flags & AT_REMOVEDIR:
        if not node.is_dir():
            raise SyscallError(errno.ENOTDIR)
        if name in (".", "..") or node is t.fs.root:
            raise SyscallError(errno.EINVAL if name == "." else errno.EBUSY)
    elif node.is_dir():
        raise SyscallError(errno.EISDIR)
    may_delete(t.tg, parent, node)
    if t.kernel.fs.is_mount_point(node, parent):
        raise SyscallError(errno.EBUSY)
    if flags & AT_REMOVEDIR and t.kernel.fs.list_dir(node):
        raise SyscallError(errno.ENOTEMPTY)
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), os.rmdir if flags & AT_REMOVEDIR else os.unlink)
    else:
        on_host(t, node)
        parent.entries.pop(name, None)
        if parent.lower is not None:
            parent.whiteouts.add(name)
        if isinstance(node, MemRegular):
            node.nlink -= 1
            if node.nlink == 0 and node.opens == 0:
                t.kernel.fs.orphans.append(node)
    _removed(parent, name, node)
    return 0


def _removed(parent: Dir, name: str, node) -> None:
    """inotify: a name gone from `parent`; `node` itself too, unless it has another name
    or is open (then its close says so)."""
    isdir = node.is_dir()
    if not isdir:
        notify(node, IN_ATTRIB)  # its link count
    if isdir or not isinstance(node, MemRegular) or (node.nlink == 0 and node.opens == 0):
        deleted(node)
    notify_dir(parent, IN_DELETE, name, isdir=isdir)


@syscall(NR.unlink)
def unlink(t, path):
    return unlinkat(t, AT_FDCWD & 0xFFFFFFFF, path, 0)


@syscall(NR.rmdir)
def rmdir(t, path):
    return unlinkat(t, AT_FDCWD & 0xFFFFFFFF, path, AT_REMOVEDIR)


DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12


def _dtype(mode: int) -> int:
    return {st.S_IFIFO: DT_FIFO, st.S_IFCHR: DT_CHR, st.S_IFDIR: DT_DIR, st.S_IFBLK: DT_BLK,
            st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK, st.S_IFSOCK: DT_SOCK}.get(st.S_IFMT(mode), DT_UNKNOWN)


def _record64(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    """struct linux_dirent64: d_ino, d_off, d_reclen, d_type, the name and its NUL, 8-aligned."""
    reclen = (19 + len(name) + 1 + 7) & ~7
    return struct.pack("<QqHB", ino, off, reclen, dtype) + name + bytes(reclen - 19 - len(name))


def _record(ino: int, off: int, name: bytes, dtype: int) -> bytes:
    """The old struct linux_dirent: d_ino, d_off, d_reclen, the name and its NUL, then
    d_type in the record's last byte, 8-aligned."""
    reclen = (18 + len(name) + 2 + 7) & ~7
    return struct.pack("<QqH", ino, off, reclen) + name + bytes(reclen - 19 - len(name)) + bytes((dtype,))


def _getdents(t, fd: int, dirp: int, count: int, record) -> int:
    f = t.fds.get_open(fd)
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    d = f.node
    if f.listing is None or f.offset == 0:
        f.listing = [(".", d.ino, st.S_IFDIR), ("..", (d.parent or d).ino, st.S_IFDIR)]
        f.listing += t.kernel.fs.dir_entries(d)
    names = f.listing
    out = bytearray()
    index = f.offset
    while index < len(names):
        name, ino, kind = names[index]
        rec = record(ino, index + 1, os.fsencode(name), _dtype(kind))
        if len(out) + len(rec) > count:
            break
        out += rec
        index += 1
    if not out and index < len(names):
        raise SyscallError(errno.EINVAL)  # the buffer cannot hold one entry
    t.mm.write(dirp, bytes(out))
    f.offset = index
    f.notify(IN_ACCESS)
    return len(out)


@syscall(NR.getdents64)
def getdents64(t, fd, dirp, count):
    return _getdents(t, i32(fd), dirp, count & 0xFFFFFFFF, _record64)


@syscall(NR.getdents)
def getdents(t, fd, dirp, count):
    return _getdents(t, i32(fd), dirp, count & 0xFFFFFFFF, _record)


RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


@syscall(NR.renameat2)
def renameat2(t, olddirfd, oldpath, newdirfd, newpath, flags):
    if flags & ~RENAME_NOREPLACE:
        raise SyscallError(errno.EINVAL)
    old_parent, old_name, node, _ = lookup(t, i32(olddirfd), oldpath, follow=False)
    new_parent, new_name, target, _ = lookup(t, i32(newdirfd), newpath, follow=False)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if old_name in (".", "..") or new_name in (".", ".."):
        raise SyscallError(errno.EBUSY)
    fs = t.kernel.fs
    may_delete(t.tg, old_parent, node)
    if target is not None:
        may_delete(t.tg, new_parent, target)
    else:
        check(t.tg, new_parent, MAY_WRITE | MAY_EXEC)
    if node.is_dir() and new_parent is not old_parent:
        check(t.tg, node, MAY_WRITE)  # its ".." changes
    if fs.is_mount_point(node, old_parent) or (target is not None and fs.is_mount_point(target, new_parent)):
        raise SyscallError(errno.EBUSY)
    if fs.mount_of(node, old_parent) != fs.mount_of(new_parent, new_parent.parent):
        raise SyscallError(errno.EXDEV)
    hosts = [on_host(t, x) for x in (old_parent, new_parent)]
    if hosts[0] is not None or hosts[1] is not None:
        if hosts[0] is not hosts[1]:
            raise SyscallError(errno.EXDEV)
        if flags & RENAME_NOREPLACE and target is not None:
            raise SyscallError(errno.EEXIST)
        src = hosts[0].open(host_path(old_parent), os.O_PATH | os.O_DIRECTORY)
        try:
            hosts[0].at(host_path(new_parent, new_name), lambda n, dir_fd: os.rename(
                old_name, n, src_dir_fd=src, dst_dir_fd=dir_fd))
        finally:
            os.close(src)
        _moved(t, old_parent, old_name, new_parent, new_name, node, target)
        return 0
    on_host(t, node)
    if target is node:
        return 0
    if target is not None:
        if flags & RENAME_NOREPLACE:
            raise SyscallError(errno.EEXIST)
        if node.is_dir() and not target.is_dir():
            raise SyscallError(errno.ENOTDIR)
        if target.is_dir() and not node.is_dir():
            raise SyscallError(errno.EISDIR)
        if target.is_dir() and t.kernel.fs.list_dir(target):
            raise SyscallError(errno.ENOTEMPTY)
    if node.is_dir():
        if within(new_parent, node):
            raise SyscallError(errno.EINVAL)
        if node.lower is not None:
            raise SyscallError(errno.EXDEV)  # as overlayfs does without redirect_dir
        node.parent = new_parent
        node.name = new_name
    old_parent.entries.pop(old_name, None)
    if old_parent.lower is not None:
        old_parent.whiteouts.add(old_name)
    new_parent.entries[new_name] = node
    new_parent.whiteouts.discard(new_name)
    now = now_ns()
    old_parent.mtime = new_parent.mtime = node.ctime = now
    _moved(t, old_parent, old_name, new_parent, new_name, node, target)
    return 0


def _moved(t, old_parent: Dir, old_name: str, new_parent: Dir, new_name: str, node, target) -> None:
    """inotify: a rename's two events, tied by one cookie; the node moved; a target replaced."""
    k = t.kernel
    k.inotify_cookie += 1
    isdir = node.is_dir()
    notify_dir(old_parent, IN_MOVED_FROM, old_name, isdir=isdir, cookie=k.inotify_cookie)
    notify_dir(new_parent, IN_MOVED_TO, new_name, isdir=isdir, cookie=k.inotify_cookie)
    if target is not None:
        notify(target, IN_ATTRIB)
    notify(node, IN_MOVE_SELF)
    if target is not None and (target.is_dir() or not isinstance(target, MemRegular) or not target.opens):
        deleted(target)


@syscall(NR.renameat)
def renameat(t, olddirfd, oldpath, newdirfd, newpath):
    return renameat2(t, olddirfd, oldpath, newdirfd, newpath, 0)


@syscall(NR.rename)
def rename(t, oldpath, newpath):
    return renameat2(t, AT_FDCWD & 0xFFFFFFFF, oldpath, AT_FDCWD & 0xFFFFFFFF, newpath, 0)


@syscall(NR.linkat)
def linkat(t, olddirfd, oldpath, newdirfd, newpath, flags):
    flags = i32(flags)
    parent, name, node, raw = lookup(t, i32(olddirfd), oldpath, follow=bool(flags & AT_SYMLINK_FOLLOW),
                                     empty_ok=bool(flags & AT_EMPTY_PATH))
    if not raw and flags & AT_EMPTY_PATH:
        node = getattr(t.fds.get(i32(olddirfd)), "node", None)  # name an open (O_TMPFILE) file
        if node is None or node.is_dir():
            raise SyscallError(errno.ENOENT if node is None else errno.EPERM)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if node.is_dir():
        raise SyscallError(errno.EPERM)
    new_parent, new_name, target, _ = lookup(t, i32(newdirfd), newpath, follow=False)
    if target is not None:
        raise SyscallError(errno.EEXIST)
    check(t.tg, new_parent, MAY_WRITE | MAY_EXEC)
    fs = t.kernel.fs
    if parent is not None and fs.mount_of(node, parent) != fs.mount_of(new_parent, new_parent.parent):
        raise SyscallError(errno.EXDEV)
    host = on_host(t, new_parent)
    if host is not None:
        if on_host(t, node) is not host:
            raise SyscallError(errno.EXDEV)
        src = host.open(host_path(parent), os.O_PATH | os.O_DIRECTORY)
        try:
            host.at(host_path(new_parent, new_name), lambda n, dir_fd: os.link(
                name, n, src_dir_fd=src, dst_dir_fd=dir_fd, follow_symlinks=False))
        finally:
            os.close(src)
        _linked(node, new_parent, new_name)
        return 0
    on_host(t, node)
    if isinstance(node, LowerNode) and st.S_ISREG(node.mode):
        node = t.kernel.fs.copy_up(parent, name, node)
    node.nlink += 1
    node.ctime = now_ns()
    new_parent.entries[new_name] = node
    new_parent.whiteouts.discard(new_name)
    _linked(node, new_parent, new_name)
    return 0


def _linked(node, parent: Dir, name: str) -> None:
    notify(node, IN_ATTRIB)  # its link count
    notify_dir(parent, IN_CREATE, name)


@syscall(NR.link)
def link(t, oldpath, newpath):
    return linkat(t, AT_FDCWD & 0xFFFFFFFF, oldpath, AT_FDCWD & 0xFFFFFFFF, newpath, 0)


@syscall(NR.symlinkat)
def symlinkat(t, target, newdirfd, linkpath):
    content = t.mm.read_cstring(target)
    if not content:
        raise SyscallError(errno.ENOENT)
    parent, name, node, _ = lookup(t, i32(newdirfd), linkpath, follow=False)
    if node is not None:
        raise SyscallError(errno.EEXIST)
    check(t.tg, parent, MAY_WRITE | MAY_EXEC)
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), lambda n, dir_fd: os.symlink(content, n, dir_fd=dir_fd))
    else:
        now = now_ns()
        uid, gid = owner_ids(t.tg, parent)
        parent.entries[name] = MemSymlink(ino=t.kernel.fs.new_ino(), mode=st.S_IFLNK | 0o777, atime=now,
                                          mtime=now, ctime=now, target=content, uid=uid, gid=gid)
        parent.whiteouts.discard(name)
    notify_dir(parent, IN_CREATE, name)
    return 0


@syscall(NR.symlink)
def symlink(t, target, linkpath):
    return symlinkat(t, target, AT_FDCWD & 0xFFFFFFFF, linkpath)


@syscall(NR.mknodat)
def mknodat(t, dirfd, path, mode, dev):
    mode &= 0xFFFF  # an umode_t
    kind = st.S_IFMT(mode) or st.S_IFREG
    if kind not in (st.S_IFREG, st.S_IFCHR, st.S_IFBLK, st.S_IFIFO, st.S_IFSOCK):
        raise SyscallError(errno.EINVAL)
    parent, name, node, _ = lookup(t, i32(dirfd), path, follow=False)
    if node is not None:
        raise SyscallError(errno.EEXIST)
    if isinstance(parent, ProcDir):
        raise SyscallError(errno.EACCES)
    if kind in (st.S_IFCHR, st.S_IFBLK) and not capable(t.tg, CAP_MKNOD):
        raise SyscallError(errno.EPERM)
    check(t.tg, parent, MAY_WRITE | MAY_EXEC)
    if on_host(t, parent) is not None:
        raise SyscallError(errno.EPERM, "special files in a read-write bind mount are not supported")
    perm = mode & 0o7777 & ~t.fs.umask
    uid, gid = owner_ids(t.tg, parent)
    if kind == st.S_IFREG:
        t.kernel.fs.create_regular(parent, name, perm, uid, gid)
        notify_dir(parent, IN_CREATE, name)
        return 0
    if kind != st.S_IFIFO:
        raise SyscallError(errno.EPERM, "device and socket nodes are not supported")
    now = now_ns()
    t.kernel.pipe_ino += 1
    parent.entries[name] = FifoNode(ino=t.kernel.fs.new_ino(), mode=st.S_IFIFO | perm, uid=uid,
                                    gid=gid, atime=now, mtime=now, ctime=now,
                                    pipe=Pipe(ino=t.kernel.pipe_ino))
    parent.whiteouts.discard(name)
    notify_dir(parent, IN_CREATE, name)
    return 0


@syscall(NR.mknod)
def mknod(t, path, mode, dev):
    return mknodat(t, AT_FDCWD & 0xFFFFFFFF, path, mode, dev)
