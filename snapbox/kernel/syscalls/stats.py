"""File status: stat and its forms (fstat, lstat, newfstatat, statx), statfs and fstatfs,
access and faccessat, readlink."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.creds import RealIds, check, shown
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.host import host_meminfo
from snapbox.kernel.procfs import ProcDir, ProcNode
from snapbox.kernel.vfs import Inode
from snapbox.memfile import PAGE_SIZE
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, lookup



_STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")


def _seen(t, s: dict) -> dict:
    """A file's status with its owner and group as the caller's user namespace names them."""
    ns = t.tg.user_ns
    return s if ns is None else {**s, "uid": shown(ns, s["uid"], "uid"), "gid": shown(ns, s["gid"], "gid")}


def pack_stat(s: dict) -> bytes:
    """struct stat for x86-64."""
    a, m, c = s["atime"], s["mtime"], s["ctime"]
    return _STAT.pack(s["dev"], s["ino"], s["nlink"], s["mode"], s["uid"], s["gid"], 0, s["rdev"],
                      s["size"], s["blksize"], s["blocks"], a // 10**9, a % 10**9,
                      m // 10**9, m % 10**9, c // 10**9, c % 10**9)


@syscall(NR.fstat)
def fstat(t, fd, buf):
    t.mm.write(buf, pack_stat(_seen(t, t.fds.get(i32(fd)).stat())))
    return 0


def _stat_at(t, dirfd: int, path: int, buf: int, flags: int) -> int:
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SyscallError(errno.EINVAL)
    _, _, node, raw = lookup(t, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                             empty_ok=bool(flags & AT_EMPTY_PATH))
    if not raw and flags & AT_EMPTY_PATH:
        s = (t.fds.get(dirfd).stat() if dirfd != AT_FDCWD else t.fs.cwd.stat())
    elif node is None:
        raise SyscallError(errno.ENOENT)
    else:
        s = node.stat()
    t.mm.write(buf, pack_stat(_seen(t, s)))
    return 0


@syscall(NR.newfstatat)
def newfstatat(t, dirfd, path, buf, flags):
    return _stat_at(t, i32(dirfd), path, buf, i32(flags))


@syscall(NR.stat)
def stat(t, path, buf):
    return _stat_at(t, AT_FDCWD, path, buf, 0)


@syscall(NR.lstat)
def lstat(t, path, buf):
    return _stat_at(t, AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW)


AT_EACCESS = 0x200


def _access(t, dirfd: int, path: int, mode: int, flags: int) -> int:
    if mode & ~7 or flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SyscallError(errno.EINVAL)
    # access(2): checked with the real ids unless AT_EACCESS.
    who = t.tg if flags & AT_EACCESS else RealIds.of(t.tg)
    _, _, node, raw = lookup(t, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                             empty_ok=bool(flags & AT_EMPTY_PATH), who=who)
    if not raw and flags & AT_EMPTY_PATH:
        node = getattr(t.fds.get(dirfd), "node", None)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if mode:
        check(who, node, mode)  # R_OK, W_OK, X_OK are MAY_READ, MAY_WRITE, MAY_EXEC
    return 0


@syscall(NR.access)
def access(t, path, mode):
    return _access(t, AT_FDCWD, path, mode, 0)


@syscall(NR.faccessat)
def faccessat(t, dirfd, path, mode):
    return _access(t, i32(dirfd), path, mode, 0)


@syscall(NR.faccessat2)
def faccessat2(t, dirfd, path, mode, flags):
    return _access(t, i32(dirfd), path, mode, i32(flags))


@syscall(NR.readlinkat)
def readlinkat(t, dirfd, path, buf, size):
    if i32(size) <= 0:
        raise SyscallError(errno.EINVAL)
    _, _, node, _ = lookup(t, i32(dirfd), path, follow=False)
    if node is None:
        raise SyscallError(errno.ENOENT)
    target = t.kernel.fs.readlink(node)[:size]
    t.mm.write(buf, target)
    return len(target)


@syscall(NR.readlink)
def readlink(t, path, buf, size):
    return readlinkat(t, AT_FDCWD & 0xFFFFFFFF, path, buf, size)


_STATX_TS = struct.Struct("<qI4x")
STATX_BASIC_STATS = 0x7FF


@syscall(NR.statx)
def statx(t, dirfd, path, flags, mask, buf):
    flags = i32(flags)
    _, _, node, raw = lookup(t, i32(dirfd), path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                             empty_ok=bool(flags & AT_EMPTY_PATH))
    if not raw and flags & AT_EMPTY_PATH:
        s = t.fds.get(i32(dirfd)).stat() if i32(dirfd) != AT_FDCWD else t.fs.cwd.stat()
    elif node is None:
        raise SyscallError(errno.ENOENT)
    else:
        s = node.stat()

    def ts(ns: int) -> bytes:
        return _STATX_TS.pack(ns // 10**9, ns % 10**9)

    s = _seen(t, s)
    out = struct.pack("<IIQIIIHxxQQQQ", STATX_BASIC_STATS, s["blksize"], 0, s["nlink"], s["uid"], s["gid"],
                      s["mode"], s["ino"], s["size"], s["blocks"], 0)
    out += ts(s["atime"]) + ts(0) + ts(s["ctime"]) + ts(s["mtime"])
    out += struct.pack("<IIII", (s["rdev"] >> 8) & 0xFFF, s["rdev"] & 0xFF, (s["dev"] >> 8) & 0xFFF, s["dev"] & 0xFF)
    t.mm.write(buf, out.ljust(256, b"\0"))
    return 0


# statfs(2) magic numbers of the file systems the sandbox has.
OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, PROC_SUPER_MAGIC = 0x794C7630, 0x01021994, 0x9FA0
SOCKFS_MAGIC, PIPEFS_MAGIC, ANON_INODE_FS_MAGIC = 0x534F434B, 0x50495045, 0x09041934
ST_RDONLY = 1
_STATFS = struct.Struct("<qqqqqqqiiqqq32x")  # type, bsize, blocks, bfree, bavail, files, ffree, fsid, namelen, frsize, flags


def _statfs_of(t, node, parent) -> bytes:
    """struct statfs for the file system holding `node`: the sandbox's memory is its space."""
    fs = t.kernel.fs
    if isinstance(node, (ProcDir, ProcNode)) or isinstance(parent, ProcDir):
        kind, readonly = PROC_SUPER_MAGIC, False
    else:
        mount = fs.mount_of(node, parent) if parent is not None or node.is_dir() else fs.root
        kind = TMPFS_MAGIC if getattr(mount, "tmpfs", False) else OVERLAYFS_SUPER_MAGIC
        readonly = fs.readonly_root and not fs.writable_in_memory(node)
    return _pack_statfs(t, kind, readonly)


def _pack_statfs(t, kind: int, readonly: bool) -> bytes:
    mf = t.kernel.memfile
    total = mf.limit or host_meminfo().get("MemTotal", 1 << 34)
    blocks = total // PAGE_SIZE
    free = max(0, blocks - mf.allocated // PAGE_SIZE)
    return _STATFS.pack(kind, PAGE_SIZE, blocks, free, free, blocks, free, 0, 0, 255, PAGE_SIZE,
                        ST_RDONLY if readonly else 0)


@syscall(NR.statfs)
def statfs(t, path, buf):
    parent, _, node, _ = lookup(t, AT_FDCWD, path)
    if node is None:
        raise SyscallError(errno.ENOENT)
    t.mm.write(buf, _statfs_of(t, node, parent))
    return 0


@syscall(NR.fstatfs)
def fstatfs(t, fd, buf):
    f = t.fds.get(i32(fd))
    node = getattr(f, "node", None)
    if isinstance(node, Inode):
        data = _statfs_of(t, node, None)
    else:
        name = type(f).__name__
        kind = PIPEFS_MAGIC if name == "PipeFile" else SOCKFS_MAGIC if "Socket" in name else ANON_INODE_FS_MAGIC
        data = _pack_statfs(t, kind, False)
    t.mm.write(buf, data)
    return 0
