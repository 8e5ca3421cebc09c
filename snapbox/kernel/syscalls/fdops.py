"""Opening and file descriptors: open, openat, creat, close, close_range, dup, fcntl,
flock, ioctl, pipe."""

from __future__ import annotations

import errno
import os
import stat as st
import struct

from snapbox.kernel.devices import DeviceFile, DeviceNode
from snapbox.kernel import locks
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.host import HostFile
from snapbox.kernel.fasync import set_async
from snapbox.kernel.fd import (
    O_ACCMODE,
    O_ASYNC,
    O_NONBLOCK,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_LARGEFILE,
    O_NOFOLLOW,
    O_PATH,
    O_RDWR,
    O_RDONLY,
    O_TMPFILE,
    O_TRUNC,
    O_WRONLY,
    SETFL_MASK,
    open_status,
)
from snapbox.kernel.creds import CAP_SYS_RESOURCE, MAY_EXEC, MAY_READ, MAY_WRITE, capable, check, owner_ids
from snapbox.kernel.pipe import FifoNode, make_pipe, open_fifo
from snapbox.kernel.socket import SocketNode
from snapbox.kernel.procfs import ProcDir, ProcNode
from snapbox.kernel.inotify import IN_CREATE, IN_MODIFY, IN_OPEN, dir_notify, notify_dir
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.tty import PtsNode, open_ptmx, open_slave, open_tty
from snapbox.kernel.syscalls.common import AT_FDCWD, host_path, lookup, on_host, truncate
from snapbox.kernel.vfs import F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, Dir, DirFile, \
    LowerNode, MemRegular, RegularFile, now_ns



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
        check(t.tg, node, MAY_WRITE | MAY_EXEC)
        tmp = fs.create_regular(node, ".tmpfile", mode & ~t.fs.umask, *owner_ids(t.tg, node))
        del node.entries[".tmpfile"]
        tmp.nlink = 0
        tmp.opens += 1
        f = RegularFile(flags=open_status(flags & ~O_TMPFILE), fs=fs, node=tmp,
                        name=f"{node.path().rstrip('/')}/#{tmp.ino} (deleted)")
        return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))
    created = node is None
    if node is None:
        if not flags & O_CREAT:
            raise SyscallError(errno.ENOENT)
        if isinstance(parent, ProcDir):
            raise SyscallError(errno.ENOENT)  # as Linux: nothing is made in /proc
        if name in (".", "..") or path.endswith(b"/"):
            raise SyscallError(errno.EISDIR)  # open(2): O_CREAT makes no directory
        check(t.tg, parent, MAY_WRITE | MAY_EXEC)
        host = on_host(t, parent)
        if host is not None:
            fd = host.open(host_path(parent, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode & ~t.fs.umask)
            os.close(fd)
            node = fs.lookup(parent, name)
        else:
            node = fs.create_regular(parent, name, mode & ~t.fs.umask, *owner_ids(t.tg, parent))
    elif flags & O_CREAT and flags & O_EXCL:
        raise SyscallError(errno.EEXIST)
    if st.S_ISLNK(node.mode) and not flags & O_PATH:
        raise SyscallError(errno.ELOOP)
    if flags & O_DIRECTORY and not node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    accmode = flags & O_ACCMODE
    if node.is_dir() and accmode != O_RDONLY and not flags & O_PATH:
        raise SyscallError(errno.EISDIR)
    if not created and not flags & O_PATH:
        # A file this call made is opened whatever its mode (open(2)).
        want = (MAY_READ if accmode in (O_RDONLY, O_RDWR) else 0) | \
            (MAY_WRITE if accmode in (O_WRONLY, O_RDWR) or flags & O_TRUNC else 0)
        if want:
            check(t.tg, node, want)
    if node.is_dir():
        f = DirFile(flags=flags & ~O_CLOEXEC, node=node)
    elif isinstance(node, PtsNode):
        f = open_slave(t, node, flags & ~O_CLOEXEC)
    elif isinstance(node, DeviceNode) and node.name == "ptmx":
        f = open_ptmx(t, flags & ~O_CLOEXEC)
    elif isinstance(node, DeviceNode) and node.name == "tty":
        f = open_tty(t, node, flags & ~O_CLOEXEC)  # the session's pty, or
        if f is None:
            if not os.isatty(0):
                raise SyscallError(errno.ENXIO)  # no controlling terminal
            f = HostFile(flags=flags & ~O_CLOEXEC, stdio=0)  # the terminal the sandbox runs on
    elif isinstance(node, DeviceNode):
        f = DeviceFile(flags=flags & ~O_CLOEXEC, node=node)
    elif isinstance(node, FifoNode):
        f = open_fifo(t, node, flags)
    elif isinstance(node, SocketNode) and not flags & O_PATH:
        raise SyscallError(errno.ENXIO)  # open(2) of a socket
    elif isinstance(node, ProcNode):
        if accmode != O_RDONLY and not node.mode & st.S_IWUSR and node.name.startswith(("sys/", "snapbox/")):
            raise SyscallError(errno.EACCES)  # a sysctl's mode holds for root too (proc_sys_permission)
        f = node.open(flags & ~O_CLOEXEC)
    else:
        if isinstance(node, LowerNode) and not st.S_ISREG(node.mode) and not flags & O_PATH:
            raise SyscallError(errno.ENXIO, "device and fifo nodes of the rootfs are not supported")
        host = None
        if accmode != O_RDONLY and not flags & O_PATH and isinstance(node, LowerNode):
            host = on_host(t, node)
            if host is None:
                node = fs.copy_up(parent, name, node)
        # Its name is the path it was found at from the root, as /proc/PID/fd shows it.
        where = f"{parent.path().rstrip('/')}/{name}" if isinstance(parent, Dir) else os.fsdecode(path)
        f = RegularFile(flags=flags & ~O_CLOEXEC, fs=fs, node=node, name=where, parent=parent, entry=name)
        if host is not None:
            f.host_fd = host.open(node.path, accmode | (os.O_TRUNC if flags & O_TRUNC else 0))
        if isinstance(node, MemRegular):
            node.opens += 1
        if accmode != O_RDONLY and isinstance(node, MemRegular) and flags & O_TRUNC:
            truncate(t, node, 0)
            if not created:
                f.notify(IN_MODIFY)
    if created:
        notify_dir(parent, IN_CREATE, name)
    if not flags & O_PATH and isinstance(f, (RegularFile, DirFile)):
        f.notify(IN_OPEN)
    f.flags = open_status(flags)
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


# ioctl(2) requests every file takes (ioctl_list(2); Linux's do_vfs_ioctl), before its own.
FIONCLEX, FIOCLEX, FIONBIO, FIONREAD, FIOASYNC = 0x5450, 0x5451, 0x5421, 0x541B, 0x5452


@syscall(NR.ioctl)
def ioctl(t, fd, request, arg):
    fd, request = i32(fd), request & 0xFFFFFFFF
    f = t.fds.get_open(fd)
    if request in (FIOCLEX, FIONCLEX):
        (t.fds.cloexec.add if request == FIOCLEX else t.fds.cloexec.discard)(fd)
        return 0
    if request == FIONBIO:  # what Python's socket.settimeout uses
        (on,) = struct.unpack("<i", t.mm.read(arg, 4))
        f.flags = f.flags | O_NONBLOCK if on else f.flags & ~O_NONBLOCK
        return 0
    if request == FIOASYNC:
        (on,) = struct.unpack("<i", t.mm.read(arg, 4))
        set_async(t, f, fd, bool(on))
        return 0
    unread = getattr(f, "unread", None)
    if request == FIONREAD and unread is not None:  # pipes and sockets: what a read would get now
        t.mm.write(arg, struct.pack("<i", unread()))
        return 0
    return f.ioctl(t, request, arg)


F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL = 0, 1, 2, 3, 4
F_DUPFD_CLOEXEC = 1030
F_GETLK, F_SETLK, F_SETLKW = 5, 6, 7
F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
PIPE_MAX_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size: the most an unprivileged process may ask for
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
ALL_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE
FD_CLOEXEC = 1
F_SETOWN, F_GETOWN, F_SETSIG, F_GETSIG, F_SETOWN_EX, F_GETOWN_EX = 8, 9, 10, 11, 15, 16
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
F_NOTIFY = 1026


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
        was = f.flags
        f.flags = (f.flags & ~SETFL_MASK) | (arg & SETFL_MASK)
        if (was ^ f.flags) & O_ASYNC:
            set_async(t, f, fd, bool(f.flags & O_ASYNC))
        return 0
    if cmd in (F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW):
        if f.flags & O_PATH:
            raise SyscallError(errno.EBADF)
        if not isinstance(f, RegularFile):
            raise SyscallError(errno.EINVAL)
        if cmd in (F_GETLK, F_OFD_GETLK):
            return locks.getlk(t, f, arg)
        owner = f if cmd in (F_OFD_SETLK, F_OFD_SETLKW) else None
        return locks.setlk(t, f, arg, cmd in (F_SETLKW, F_OFD_SETLKW), owner)
    if cmd in (F_ADD_SEALS, F_GET_SEALS):
        node = getattr(f, "node", None)
        if not isinstance(node, MemRegular) or not getattr(f, "name", "").startswith("/memfd:"):
            raise SyscallError(errno.EINVAL)  # only memfds take seals here
        if cmd == F_GET_SEALS:
            return node.seals
        if arg & ~ALL_SEALS:
            raise SyscallError(errno.EINVAL)
        if node.seals & F_SEAL_SEAL:
            raise SyscallError(errno.EPERM)
        if not f.writable():
            raise SyscallError(errno.EPERM)
        node.seals |= arg
        return 0
    if cmd in (F_SETOWN, F_GETOWN, F_SETOWN_EX, F_GETOWN_EX, F_SETSIG, F_GETSIG):
        return _owner(t, f, cmd, arg)
    if cmd == F_NOTIFY:
        if not isinstance(f, DirFile):
            raise SyscallError(errno.ENOTDIR)
        return dir_notify(t, f, fd, arg & 0xFFFFFFFF)
    if cmd in (F_GETPIPE_SZ, F_SETPIPE_SZ):
        if not hasattr(f, "pipe"):
            raise SyscallError(errno.EBADF)
        if cmd == F_GETPIPE_SZ:
            return f.pipe.capacity
        return _set_pipe_size(t, f.pipe, arg & 0xFFFFFFFF)
    raise SyscallError(errno.EINVAL)


def _owner(t, f, cmd: int, arg: int) -> int:
    """Who a file's signals go to (F_SETOWN, F_SETOWN_EX: a thread, a process or a process
    group, ESRCH if there is none of that id), and which signal (F_SETSIG)."""
    pidns = t.kernel.tasks.pidns
    if cmd == F_GETOWN:
        kind, who = f.fown
        return -who if kind == F_OWNER_PGRP else who
    if cmd == F_GETOWN_EX:
        t.mm.write(arg, struct.pack("<ii", *f.fown))
        return 0
    if cmd == F_GETSIG:
        return f.signum
    if cmd == F_SETSIG:
        if not 0 <= arg <= 64:
            raise SyscallError(errno.EINVAL)
        f.signum = arg
        return 0
    if cmd == F_SETOWN:
        who = i32(arg)
        kind, who = (F_OWNER_PGRP, -who) if who < 0 else (F_OWNER_PID, who)
    else:
        kind, who = struct.unpack("<ii", t.mm.read(arg, 8))
        if kind not in (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP):
            raise SyscallError(errno.EINVAL)
    if who:
        exists = (who in pidns.tasks if kind == F_OWNER_TID else who in pidns.groups if kind == F_OWNER_PID
                  else any(g.pgid == who for g in pidns.groups.values()))
        if not exists:
            raise SyscallError(errno.ESRCH)
    f.fown = (kind, who)
    f.fown_ids = (t.tg.creds[0], t.tg.creds[1])
    return 0


def _set_pipe_size(t, pipe, size: int) -> int:
    """F_SETPIPE_SZ: a power of two of pages, at least one (fcntl(2))."""
    if size > 1 << 31:
        raise SyscallError(errno.EINVAL)
    pages = 1
    while pages * 4096 < size:
        pages *= 2
    capacity = pages * 4096
    if capacity > PIPE_MAX_SIZE and not capable(t.tg, CAP_SYS_RESOURCE):
        raise SyscallError(errno.EPERM)
    if len(pipe.buf) > capacity:
        raise SyscallError(errno.EBUSY)
    pipe.capacity = capacity
    pipe.writable.notify()
    return capacity


@syscall(NR.flock)
def flock(t, fd, op):
    return locks.flock(t, t.fds.get_open(i32(fd)), i32(op))


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


MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB, MFD_NOEXEC_SEAL, MFD_EXEC = 1, 2, 4, 8, 0x10
MFD_NAME_MAX = 249  # memfd_create(2): NAME_MAX less "memfd:"


@syscall(NR.memfd_create)
def memfd_create(t, name, flags):
    """An anonymous file in the sandbox's memory (its pages are MemoryFile pages, so it maps
    shared, survives a checkpoint, and counts against the memory limit)."""
    flags = i32(flags)
    if flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC) or \
            flags & MFD_NOEXEC_SEAL and flags & MFD_EXEC:
        raise SyscallError(errno.EINVAL)
    if flags & MFD_HUGETLB:
        raise SyscallError(errno.EINVAL, "huge pages are not offered to the sandbox")
    try:
        raw = t.mm.read_cstring(name, MFD_NAME_MAX + 1)
    except SyscallError as e:
        raise SyscallError(errno.EINVAL if e.errno == errno.ENAMETOOLONG else e.errno) from None
    fs = t.kernel.fs
    now = now_ns()
    seals = 0 if flags & (MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL) else F_SEAL_SEAL
    node = MemRegular(ino=fs.new_ino(), mode=st.S_IFREG | (0o666 if flags & MFD_NOEXEC_SEAL else 0o777),
                      uid=t.tg.fsuid, gid=t.tg.fsgid, atime=now, mtime=now, ctime=now, memfile=fs.memfile,
                      nlink=0, opens=1, seals=seals)
    f = RegularFile(flags=O_RDWR | O_LARGEFILE, fs=fs, node=node, name=f"/memfd:{os.fsdecode(raw)} (deleted)")
    return t.fds.install(f, cloexec=bool(flags & MFD_CLOEXEC))
