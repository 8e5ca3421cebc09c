"""File syscalls: open, read, write, seek, stat, ioctl and friends."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from snapbox.kernel.devices import DeviceFile, DeviceNode
from snapbox.kernel import locks
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.host import HostFile
from snapbox.kernel.fd import (
    O_ACCMODE,
    O_NONBLOCK,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOFOLLOW,
    O_PATH,
    O_RDONLY,
    O_TMPFILE,
    O_TRUNC,
    O_WRONLY,
    SETFL_MASK,
)
from snapbox.kernel.pipe import FifoNode, Pipe, make_pipe, open_fifo
from snapbox.kernel.socket import SocketNode
from snapbox.kernel.procfs import ProcDir, ProcNode
from snapbox.kernel.syscalls import NR, i32, i64, syscall
from snapbox.kernel.vfs import Dir, DirFile, LowerNode, MemRegular, MemSymlink, RegularFile, now_ns

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
IOV_MAX = 1024
MAX_RW = 0x7FFFF000  # Linux caps one read/write at this many bytes

_STAT = struct.Struct("<QQQIIIiQqqqqqqqqq24x")
_IOVEC = struct.Struct("<QQ")


def pack_stat(s: dict) -> bytes:
    """struct stat for x86-64."""
    a, m, c = s["atime"], s["mtime"], s["ctime"]
    return _STAT.pack(s["dev"], s["ino"], s["nlink"], s["mode"], s["uid"], s["gid"], 0, s["rdev"],
                      s["size"], s["blksize"], s["blocks"], a // 10**9, a % 10**9,
                      m // 10**9, m % 10**9, c // 10**9, c % 10**9)


def _start_dir(t, dirfd: int, path: bytes):
    if path.startswith(b"/") or dirfd == AT_FDCWD:
        return t.fs.cwd
    f = t.fds.get(dirfd)
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    return f.node


def on_host(t, node):
    """The host directory (a Lower) holding `node` if it is in a read-write bind mount, None
    if it is in the in-memory layer; EROFS in a read-only bind mount."""
    layer = getattr(node, "layer", 0)
    fs = t.kernel.fs
    if not layer:
        if not fs.writable_in_memory(node):
            raise SyscallError(errno.EROFS)
        return None
    if layer not in fs.rw_layers:
        raise SyscallError(errno.EROFS)
    return fs.host(layer)


def host_path(node, name: str | None = None) -> str:
    """A node's path in its host directory (or that of `name` inside directory `node`)."""
    base = node.lower if isinstance(node, Dir) else node.path
    if name is None:
        return base
    return f"{base}/{name}" if base else name


def lookup(t, dirfd: int, path_addr: int, follow: bool = True, empty_ok: bool = False):
    """Resolve a path argument; returns (parent, name, node-or-None, path bytes)."""
    path = t.mm.read_cstring(path_addr)
    if not path and empty_ok:
        return None, "", None, path
    fs = t.kernel.fs
    parent, name, node = fs.walk(_start_dir(t, dirfd, path), t.fs.root, path, follow)
    return parent, name, node, path


def open_node(t, dirfd: int, path_addr: int, flags: int, mode: int) -> int:
    fs = t.kernel.fs
    parent, name, node, path = lookup(t, dirfd, path_addr, follow=not flags & O_NOFOLLOW)
    if flags & O_TMPFILE == O_TMPFILE:
        # An unnamed file in directory `node`, which linkat(AT_EMPTY_PATH) may name later.
        if node is None:
            raise SyscallError(errno.ENOENT)
        if not node.is_dir():
            raise SyscallError(errno.ENOTDIR)
        if flags & O_ACCMODE == O_RDONLY or isinstance(node, ProcDir):
            raise SyscallError(errno.EINVAL if flags & O_ACCMODE == O_RDONLY else errno.EOPNOTSUPP)
        if on_host(t, node) is not None:
            raise SyscallError(errno.EOPNOTSUPP, "O_TMPFILE in a read-write bind mount is not supported")
        tmp = fs.create_regular(node, ".tmpfile", mode & ~t.fs.umask, t.tg.creds[1], t.tg.creds[4])
        del node.entries[".tmpfile"]
        tmp.nlink = 0
        tmp.opens += 1
        f = RegularFile(flags=flags & ~(O_CLOEXEC | O_TMPFILE) | (flags & O_ACCMODE), fs=fs, node=tmp,
                        name=f"{node.path().rstrip('/')}/#{tmp.ino} (deleted)")
        return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))
    if node is None:
        if not flags & O_CREAT:
            raise SyscallError(errno.ENOENT)
        if isinstance(parent, ProcDir):
            raise SyscallError(errno.EACCES)
        if name in (".", ".."):
            raise SyscallError(errno.EISDIR)
        host = on_host(t, parent)
        if host is not None:
            fd = host.open(host_path(parent, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode & ~t.fs.umask)
            os.close(fd)
            node = fs.lookup(parent, name)
        else:
            node = fs.create_regular(parent, name, mode & ~t.fs.umask, 0, 0)
    elif flags & O_CREAT and flags & O_EXCL:
        raise SyscallError(errno.EEXIST)
    if st.S_ISLNK(node.mode) and not flags & O_PATH:
        raise SyscallError(errno.ELOOP)
    if flags & O_DIRECTORY and not node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    accmode = flags & O_ACCMODE
    if node.is_dir():
        if accmode != O_RDONLY and not flags & O_PATH:
            raise SyscallError(errno.EISDIR)
        f = DirFile(flags=flags & ~O_CLOEXEC, node=node)
    elif isinstance(node, DeviceNode) and node.name == "tty":
        f = HostFile(flags=flags & ~O_CLOEXEC, stdio=0)  # the terminal the sandbox runs on
    elif isinstance(node, DeviceNode):
        f = DeviceFile(flags=flags & ~O_CLOEXEC, node=node)
    elif isinstance(node, FifoNode):
        f = open_fifo(t, node, flags)
    elif isinstance(node, SocketNode) and not flags & O_PATH:
        raise SyscallError(errno.ENXIO)  # open(2) of a socket
    elif isinstance(node, ProcNode):
        if accmode != O_RDONLY:
            raise SyscallError(errno.EACCES)
        f = node.open(flags & ~O_CLOEXEC)
    else:
        if isinstance(node, LowerNode) and not st.S_ISREG(node.mode) and not flags & O_PATH:
            raise SyscallError(errno.ENXIO, "device and fifo nodes of the rootfs are not supported")
        host = None
        if accmode != O_RDONLY and not flags & O_PATH and isinstance(node, LowerNode):
            host = on_host(t, node)
            if host is None:
                node = fs.copy_up(parent, name, node)
        f = RegularFile(flags=flags & ~O_CLOEXEC, fs=fs, node=node, name=os.fsdecode(path))
        if host is not None:
            f.host_fd = host.open(node.path, accmode | (os.O_TRUNC if flags & O_TRUNC else 0))
        if isinstance(node, MemRegular):
            node.opens += 1
        if accmode != O_RDONLY and isinstance(node, MemRegular) and flags & O_TRUNC:
            node.truncate(0)
    return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))


@syscall(NR.openat)
def openat(t, dirfd, path, flags, mode):
    return open_node(t, i32(dirfd), path, i32(flags), mode & 0o7777)


@syscall(NR.open)
def open_(t, path, flags, mode):
    return open_node(t, AT_FDCWD, path, i32(flags), mode & 0o7777)


@syscall(NR.creat)
def creat(t, path, mode):
    return open_node(t, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode & 0o7777)


@syscall(NR.close)
def close(t, fd):
    f = t.fds.get(i32(fd))
    node = getattr(f, "node", None)
    if node is not None and getattr(node, "locks", None):
        # fcntl(2): closing any fd of a file drops the process's record locks on it.
        locks.release_owner(t.kernel.fs, node, t.tg.tgid)
    t.fds.close(i32(fd))
    return 0


def _readable(t, fd: int):
    f = t.fds.get(fd)
    if not f.readable():
        raise SyscallError(errno.EBADF)
    return f


def _writable(t, fd: int):
    f = t.fds.get(fd)
    if not f.writable():
        raise SyscallError(errno.EBADF)
    return f


@syscall(NR.read)
def read(t, fd, buf, count):
    f = _readable(t, i32(fd))
    data = f.read(t, min(count, MAX_RW))
    t.mm.write(buf, data)
    return len(data)


@syscall(NR.pread64)
def pread64(t, fd, buf, count, offset):
    f = _readable(t, i32(fd))
    if i64(offset) < 0:
        raise SyscallError(errno.EINVAL)
    data = f.read(t, min(count, MAX_RW), i64(offset))
    t.mm.write(buf, data)
    return len(data)


def write_all(t, nr: int, f, data: bytes, offset: int | None = None) -> int:
    """Write `data`, blocking until all of it is written, as write(2) does on a blocking file.

    Bytes already written when the file blocks are kept in the task's restart state, so
    the retry (or a restored task) goes on from there instead of writing them twice.
    """
    done = t.restart_value(nr) or 0
    while done < len(data):
        try:
            done += f.write(t, data[done:], offset)
        except WouldBlock:
            if done:
                t.set_restart(nr, done)
            raise
        except SyscallError:
            if done:
                break
            raise
        if offset is not None:
            break
    return done


@syscall(NR.write)
def write(t, fd, buf, count):
    f = _writable(t, i32(fd))
    data = t.mm.read(buf, min(count, MAX_RW))
    return write_all(t, NR.write, f, data)


@syscall(NR.pwrite64)
def pwrite64(t, fd, buf, count, offset):
    f = _writable(t, i32(fd))
    if i64(offset) < 0:
        raise SyscallError(errno.EINVAL)
    data = t.mm.read(buf, min(count, MAX_RW))
    return f.write(t, data, i64(offset))


def _iovecs(t, iov: int, iovcnt: int) -> list[tuple[int, int]]:
    iovcnt = i32(iovcnt)
    if iovcnt < 0 or iovcnt > IOV_MAX:
        raise SyscallError(errno.EINVAL)
    raw = t.mm.read(iov, iovcnt * _IOVEC.size)
    return [_IOVEC.unpack_from(raw, i * _IOVEC.size) for i in range(iovcnt)]


@syscall(NR.readv)
def readv(t, fd, iov, iovcnt):
    f = _readable(t, i32(fd))
    vecs = _iovecs(t, iov, iovcnt)
    data = f.read(t, min(sum(n for _, n in vecs), MAX_RW))
    scatter(t, vecs, data)
    return len(data)


def scatter(t, vecs: list[tuple[int, int]], data: bytes) -> None:
    """Spread `data` over the (address, length) buffers of an iovec array, in order."""
    pos = 0
    for base, n in vecs:
        if pos >= len(data):
            break
        t.mm.write(base, data[pos : pos + n])
        pos += n


@syscall(NR.writev)
def writev(t, fd, iov, iovcnt):
    f = _writable(t, i32(fd))
    data = b"".join(t.mm.read(base, n) for base, n in _iovecs(t, iov, iovcnt))
    return write_all(t, NR.writev, f, data[:MAX_RW])


@syscall(NR.lseek)
def lseek(t, fd, offset, whence):
    return t.fds.get(i32(fd)).seek(i64(offset), i32(whence))


@syscall(NR.fstat)
def fstat(t, fd, buf):
    t.mm.write(buf, pack_stat(t.fds.get(i32(fd)).stat()))
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
    t.mm.write(buf, pack_stat(s))
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


@syscall(NR.ioctl)
def ioctl(t, fd, request, arg):
    return t.fds.get(i32(fd)).ioctl(t, request & 0xFFFFFFFF, arg)


F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_DUPFD_CLOEXEC = 1030
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_GETPIPE_SZ = 1032
FD_CLOEXEC = 1


@syscall(NR.fcntl)
def fcntl(t, fd, cmd, arg):
    fd, cmd = i32(fd), i32(cmd)
    f = t.fds.get(fd)
    if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
        if i32(arg) < 0:
            raise SyscallError(errno.EINVAL)
        return t.fds.install(f, cloexec=cmd == F_DUPFD_CLOEXEC, lowest=i32(arg))
    if cmd == F_GETFD:
        return FD_CLOEXEC if fd in t.fds.cloexec else 0
    if cmd == F_SETFD:
        (t.fds.cloexec.add if arg & FD_CLOEXEC else t.fds.cloexec.discard)(fd)
        return 0
    if cmd == F_GETFL:
        return f.flags
    if cmd == F_SETFL:
        f.flags = (f.flags & ~SETFL_MASK) | (arg & SETFL_MASK)
        return 0
    if cmd in (F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW):
        if not isinstance(f, RegularFile):
            raise SyscallError(errno.EINVAL)
        if cmd in (F_GETLK, F_OFD_GETLK):
            return locks.getlk(t, f, arg)
        owner = f if cmd in (F_OFD_SETLK, F_OFD_SETLKW) else None
        return locks.setlk(t, f, arg, cmd in (F_SETLKW, F_OFD_SETLKW), owner)
    if cmd == F_GETPIPE_SZ:
        if not hasattr(f, "pipe"):
            raise SyscallError(errno.EBADF)
        return f.pipe.capacity
    raise SyscallError(errno.EINVAL)


@syscall(NR.flock)
def flock(t, fd, op):
    return locks.flock(t, t.fds.get(i32(fd)), i32(op))


@syscall(NR.dup)
def dup(t, fd):
    return t.fds.install(t.fds.get(i32(fd)))


@syscall(NR.dup2)
def dup2(t, oldfd, newfd):
    oldfd, newfd = i32(oldfd), i32(newfd)
    f = t.fds.get(oldfd)
    if oldfd == newfd:
        return newfd
    if not 0 <= newfd < t.fds.limit:
        raise SyscallError(errno.EBADF)
    t.fds.install_at(newfd, f)
    return newfd


@syscall(NR.dup3)
def dup3(t, oldfd, newfd, flags):
    oldfd, newfd = i32(oldfd), i32(newfd)
    if oldfd == newfd or flags & ~O_CLOEXEC:
        raise SyscallError(errno.EINVAL)
    f = t.fds.get(oldfd)
    if not 0 <= newfd < t.fds.limit:
        raise SyscallError(errno.EBADF)
    t.fds.install_at(newfd, f, cloexec=bool(flags & O_CLOEXEC))
    return newfd


@syscall(NR.getcwd)
def getcwd(t, buf, size):
    path = os.fsencode(t.fs.cwd.path()) + b"\0"
    if size < len(path):
        raise SyscallError(errno.ERANGE)
    t.mm.write(buf, path)
    return len(path)


@syscall(NR.chdir)
def chdir(t, path):
    _, _, node, _ = lookup(t, AT_FDCWD, path)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if not node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    t.fs.cwd = node
    return 0


@syscall(NR.fchdir)
def fchdir(t, fd):
    f = t.fds.get(i32(fd))
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    t.fs.cwd = f.node
    return 0


@syscall(NR.umask)
def umask(t, mask):
    old, t.fs.umask = t.fs.umask, mask & 0o777
    return old


F_OK, X_OK, W_OK, R_OK = 0, 1, 2, 4


def _access(t, dirfd: int, path: int, mode: int, flags: int) -> int:
    if mode & ~7:
        raise SyscallError(errno.EINVAL)
    _, _, node, _ = lookup(t, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW)
    if node is None:
        raise SyscallError(errno.ENOENT)
    # The sandbox runs as root: only execute needs some x bit (access(2), "root" note).
    if mode & X_OK and not node.is_dir() and not node.mode & 0o111:
        raise SyscallError(errno.EACCES)
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


@syscall(NR.fsync, NR.fdatasync)
def fsync(t, fd):
    t.fds.get(i32(fd))
    return 0


@syscall(NR.ftruncate)
def ftruncate(t, fd, length):
    f = t.fds.get(i32(fd))
    if i64(length) < 0 or not isinstance(f, RegularFile):
        raise SyscallError(errno.EINVAL)
    if not f.writable():
        raise SyscallError(errno.EINVAL)
    if f._on_host():
        os.ftruncate(f._host(), i64(length))
        return 0
    if not isinstance(f.node, MemRegular):
        raise SyscallError(errno.EBADF)
    f.node.truncate(i64(length))
    return 0


@syscall(NR.mkdirat)
def mkdirat(t, dirfd, path, mode):
    parent, name, node, _ = lookup(t, i32(dirfd), path, follow=False)
    if node is not None:
        raise SyscallError(errno.EEXIST)
    if isinstance(parent, ProcDir):
        raise SyscallError(errno.EACCES)
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), os.mkdir, mode & 0o7777 & ~t.fs.umask)
        return 0
    t.kernel.fs.make_dir(parent, name, mode & ~t.fs.umask)
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
        if t.kernel.fs.list_dir(node):
            raise SyscallError(errno.ENOTEMPTY)
    elif node.is_dir():
        raise SyscallError(errno.EISDIR)
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), os.rmdir if flags & AT_REMOVEDIR else os.unlink)
        return 0
    on_host(t, node)
    parent.entries.pop(name, None)
    if parent.lower is not None:
        parent.whiteouts.add(name)
    if isinstance(node, MemRegular):
        node.nlink -= 1
        if node.nlink == 0 and node.opens == 0:
            node.release_pages()
    return 0


@syscall(NR.unlink)
def unlink(t, path):
    return unlinkat(t, AT_FDCWD & 0xFFFFFFFF, path, 0)


@syscall(NR.rmdir)
def rmdir(t, path):
    return unlinkat(t, AT_FDCWD & 0xFFFFFFFF, path, AT_REMOVEDIR)



@syscall(NR.pipe2)
def pipe2(t, fds, flags):
    if flags & ~(O_CLOEXEC | O_NONBLOCK | 0o40000):  # O_DIRECT is accepted and ignored
        raise SyscallError(errno.EINVAL)
    r, w = make_pipe(t.kernel, flags)
    rfd = t.fds.install(r, cloexec=bool(flags & O_CLOEXEC))
    try:
        wfd = t.fds.install(w, cloexec=bool(flags & O_CLOEXEC))
    except SyscallError:
        t.fds.close(rfd)
        raise
    try:
        t.mm.write(fds, struct.pack("<ii", rfd, wfd))
    except SyscallError:
        t.fds.close(rfd)
        t.fds.close(wfd)
        raise
    return 0


@syscall(NR.pipe)
def pipe(t, fds):
    return pipe2(t, fds, 0)


DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12


def _dtype(mode: int) -> int:
    return {st.S_IFIFO: DT_FIFO, st.S_IFCHR: DT_CHR, st.S_IFDIR: DT_DIR, st.S_IFBLK: DT_BLK,
            st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK, st.S_IFSOCK: DT_SOCK}.get(st.S_IFMT(mode), DT_UNKNOWN)


@syscall(NR.getdents64)
def getdents64(t, fd, dirp, count):
    f = t.fds.get(i32(fd))
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    fs = t.kernel.fs
    d = f.node
    names = [".", ".."] + fs.list_dir(d)
    out = bytearray()
    index = f.offset
    while index < len(names):
        name = names[index]
        if name == ".":
            node = d
        elif name == "..":
            node = d.parent or d
        else:
            try:
                node = fs.lookup(d, name)
            except SyscallError:
                index += 1
                continue
        raw = os.fsencode(name)
        reclen = (19 + len(raw) + 1 + 7) & ~7
        if len(out) + reclen > count:
            break
        out += struct.pack("<QqHB", node.ino, index + 1, reclen, _dtype(node.mode)) + raw
        out += bytes(reclen - 19 - len(raw))
        index += 1
    if not out and index < len(names):
        raise SyscallError(errno.EINVAL)  # the buffer cannot hold one entry
    t.mm.write(dirp, bytes(out))
    f.offset = index
    return len(out)


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

    out = struct.pack("<IIQIIIHxxQQQQ", STATX_BASIC_STATS, s["blksize"], 0, s["nlink"], s["uid"], s["gid"],
                      s["mode"], s["ino"], s["size"], s["blocks"], 0)
    out += ts(s["atime"]) + ts(0) + ts(s["ctime"]) + ts(s["mtime"])
    out += struct.pack("<IIII", (s["rdev"] >> 8) & 0xFFF, s["rdev"] & 0xFF, (s["dev"] >> 8) & 0xFFF, s["dev"] & 0xFF)
    t.mm.write(buf, out.ljust(256, b"\0"))
    return 0


def _transfer(t, nr: int, out_fd: int, in_fd: int, offset_addr: int, count: int) -> int:
    src = _readable(t, in_fd)
    dst = _writable(t, out_fd)
    count = min(count, MAX_RW)
    if offset_addr:
        (offset,) = struct.unpack("<q", t.mm.read(offset_addr, 8))
        if offset < 0:
            raise SyscallError(errno.EINVAL)
        data = src.read(t, count, offset)
    else:
        data = src.read(t, count)
    n = write_all(t, nr, dst, data)
    if offset_addr:
        t.mm.write(offset_addr, struct.pack("<q", offset + n))
    return n


@syscall(NR.sendfile)
def sendfile(t, out_fd, in_fd, offset, count):
    return _transfer(t, NR.sendfile, i32(out_fd), i32(in_fd), offset, count)


@syscall(NR.copy_file_range)
def copy_file_range(t, fd_in, off_in, fd_out, off_out, length, flags):
    if flags:
        raise SyscallError(errno.EINVAL)
    if off_out:
        raise SyscallError(errno.EINVAL, "an explicit output offset is not supported yet")
    return _transfer(t, NR.copy_file_range, i32(fd_out), i32(fd_in), off_in, length)


RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def _is_ancestor(a: Dir, b: Dir) -> bool:
    while b is not None:
        if b is a:
            return True
        b = b.parent
    return False


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
        if _is_ancestor(node, new_parent):
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
    return 0


@syscall(NR.renameat)
def renameat(t, olddirfd, oldpath, newdirfd, newpath):
    return renameat2(t, olddirfd, oldpath, newdirfd, newpath, 0)


@syscall(NR.rename)
def rename(t, oldpath, newpath):
    return renameat2(t, AT_FDCWD & 0xFFFFFFFF, oldpath, AT_FDCWD & 0xFFFFFFFF, newpath, 0)


AT_SYMLINK_FOLLOW = 0x400


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
        return 0
    on_host(t, node)
    if isinstance(node, LowerNode) and st.S_ISREG(node.mode):
        node = t.kernel.fs.copy_up(parent, name, node)
    node.nlink += 1
    node.ctime = now_ns()
    new_parent.entries[new_name] = node
    new_parent.whiteouts.discard(new_name)
    return 0


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
    host = on_host(t, parent)
    if host is not None:
        host.at(host_path(parent, name), lambda n, dir_fd: os.symlink(content, n, dir_fd=dir_fd))
        return 0
    now = now_ns()
    parent.entries[name] = MemSymlink(ino=t.kernel.fs.new_ino(), mode=st.S_IFLNK | 0o777, atime=now,
                                      mtime=now, ctime=now, target=content)
    parent.whiteouts.discard(name)
    return 0


@syscall(NR.symlink)
def symlink(t, target, linkpath):
    return symlinkat(t, target, AT_FDCWD & 0xFFFFFFFF, linkpath)


def _node_of(t, dirfd: int, path: int, flags: int):
    _, _, node, raw = lookup(t, dirfd, path, follow=not flags & AT_SYMLINK_NOFOLLOW,
                             empty_ok=bool(flags & AT_EMPTY_PATH))
    if not raw and flags & AT_EMPTY_PATH:
        f = t.fds.get(dirfd)
        node = getattr(f, "node", None)
        if node is None:
            raise SyscallError(errno.EPERM)
    if node is None:
        raise SyscallError(errno.ENOENT)
    return node


def _chmod(t, node, mode: int) -> int:
    host = on_host(t, node)
    if host is not None:
        host.at(host_path(node), os.chmod, mode & 0o7777)
        return 0
    node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
    node.ctime = now_ns()
    return 0


@syscall(NR.fchmodat)
def fchmodat(t, dirfd, path, mode):
    return _chmod(t, _node_of(t, i32(dirfd), path, 0), mode)


@syscall(NR.chmod)
def chmod(t, path, mode):
    return _chmod(t, _node_of(t, AT_FDCWD, path, 0), mode)


@syscall(NR.fchmod)
def fchmod(t, fd, mode):
    node = getattr(t.fds.get(i32(fd)), "node", None)
    if node is None:
        raise SyscallError(errno.EPERM)
    return _chmod(t, node, mode)


def _chown(t, node, uid: int, gid: int) -> int:
    host = on_host(t, node)
    if host is not None:
        host.at(host_path(node), lambda n, dir_fd: os.chown(n, i32(uid), i32(gid), dir_fd=dir_fd,
                                                             follow_symlinks=False))
        return 0
    if i32(uid) != -1:
        node.uid = uid & 0xFFFFFFFF
    if i32(gid) != -1:
        node.gid = gid & 0xFFFFFFFF
    node.ctime = now_ns()
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
    node = getattr(t.fds.get(i32(fd)), "node", None)
    if node is None:
        raise SyscallError(errno.EPERM)
    return _chown(t, node, uid, gid)


UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


@syscall(NR.utimensat)
def utimensat(t, dirfd, path, times, flags):
    flags = i32(flags)
    if path:
        node = _node_of(t, i32(dirfd), path, flags)
    else:
        node = getattr(t.fds.get(i32(dirfd)), "node", None)
        if node is None:
            raise SyscallError(errno.EBADF)
    host = on_host(t, node)
    now = now_ns()
    stamps = [(0, UTIME_NOW), (0, UTIME_NOW)] if not times else \
        [struct.unpack_from("<qq", t.mm.read(times, 32), i * 16) for i in range(2)]
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
    return 0


@syscall(NR.truncate)
def truncate(t, path, length):
    if i64(length) < 0:
        raise SyscallError(errno.EINVAL)
    parent, name, node, _ = lookup(t, AT_FDCWD, path)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if node.is_dir():
        raise SyscallError(errno.EISDIR)
    host = on_host(t, node)
    if host is not None:
        fd = host.open(node.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, i64(length))
        finally:
            os.close(fd)
        return 0
    if isinstance(node, LowerNode):
        node = t.kernel.fs.copy_up(parent, name, node)
    if not isinstance(node, MemRegular):
        raise SyscallError(errno.EINVAL)
    node.truncate(i64(length))
    return 0


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
    if on_host(t, parent) is not None:
        raise SyscallError(errno.EPERM, "special files in a read-write bind mount are not supported")
    perm = mode & 0o7777 & ~t.fs.umask
    if kind == st.S_IFREG:
        t.kernel.fs.create_regular(parent, name, perm, t.tg.creds[1], t.tg.creds[4])
        return 0
    if kind != st.S_IFIFO:
        raise SyscallError(errno.EPERM, "device and socket nodes are not supported")
    now = now_ns()
    t.kernel.pipe_ino += 1
    parent.entries[name] = FifoNode(ino=t.kernel.fs.new_ino(), mode=st.S_IFIFO | perm, uid=t.tg.creds[1],
                                    gid=t.tg.creds[4], atime=now, mtime=now, ctime=now,
                                    pipe=Pipe(ino=t.kernel.pipe_ino))
    parent.whiteouts.discard(name)
    return 0


@syscall(NR.mknod)
def mknod(t, path, mode, dev):
    return mknodat(t, AT_FDCWD & 0xFFFFFFFF, path, mode, dev)


CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 2, 4


@syscall(NR.close_range)
def close_range(t, first, last, flags):
    first, last = first & 0xFFFFFFFF, last & 0xFFFFFFFF
    if first > last or flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC):
        raise SyscallError(errno.EINVAL)
    for fd in [fd for fd in t.fds.files if first <= fd <= last]:
        if flags & CLOSE_RANGE_CLOEXEC:
            t.fds.cloexec.add(fd)
        else:
            t.fds.close(fd)
    return 0
