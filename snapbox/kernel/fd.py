"""File descriptions (what an fd refers to) and the per-process FD table."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import ClassVar

from snapbox.kernel.errors import SyscallError
from snapbox.state import nosave, savable

O_ACCMODE = 0o3
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY
O_LARGEFILE = 0o100000  # x86-64's open(2) sets it on every file it opens
# Status flags F_SETFL may change (fcntl(2)).
O_ASYNC = 0o20000
SETFL_MASK = O_APPEND | O_NONBLOCK | O_ASYNC | 0o40000 | 0o1000000  # | O_DIRECT | O_NOATIME

RLIMIT_NOFILE_DEFAULT = 1024
NR_OPEN = 1 << 20  # fs.nr_open: the most fds a process may have open (RLIMIT_NOFILE's ceiling)


def open_status(flags: int) -> int:
    """The flags an open(2) leaves on its file for F_GETFL: those that acted only at the open
    dropped, O_LARGEFILE added (as x86-64's open adds it); an O_PATH file keeps only O_PATH,
    O_DIRECTORY and O_NOFOLLOW."""
    if flags & O_PATH:
        return flags & (O_PATH | O_DIRECTORY | O_NOFOLLOW)
    return flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_CLOEXEC) | O_LARGEFILE

POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
POLLRDNORM, POLLRDBAND, POLLWRNORM, POLLWRBAND = 0x40, 0x80, 0x100, 0x200
POLLRDHUP = 0x2000  # the peer shut its writing down (or this end its reading)


@savable
@dataclass(eq=False)
class OpenFile:
    """An open file description: shared by every fd dup'd from one open(2)."""

    flags: int = 0  # O_* status flags and access mode, as given to open (minus O_CLOEXEC)
    offset: int = 0  # the file position, for seekable files
    refs: int = 0  # fd table entries pointing here; 0 runs release()
    fown: tuple = (0, 0)  # F_SETOWN(_EX): (F_OWNER_TID, PID or PGRP, the id): who its signals go to
    fown_ids: tuple = ()  # (uid, euid) of the process that set fown: whom its signals may reach
    signum: int = 0  # F_SETSIG: the signal sent (0: SIGIO)
    # A stream has no positions (pipes, FIFOs, sockets, terminals, anonymous inodes such as
    # eventfds and epolls): pread, pwrite and their
    # v-forms fail on it with ESPIPE before its access mode is looked at (Linux's FMODE_PREAD).
    stream: ClassVar[bool] = False
    # A file of messages, not bytes (datagram and seqpacket sockets): a write of nothing
    # still sends one, empty; to any other file it writes nothing and returns 0.
    messages: ClassVar[bool] = False

    def readable(self) -> bool:
        return self.flags & O_ACCMODE in (O_RDONLY, O_RDWR) and not self.flags & O_PATH

    def writable(self) -> bool:
        return self.flags & O_ACCMODE in (O_WRONLY, O_RDWR) and not self.flags & O_PATH

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        raise SyscallError(errno.EINVAL)

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        raise SyscallError(errno.EINVAL)

    def seek(self, offset: int, whence: int) -> int:
        raise SyscallError(errno.ESPIPE)

    def stat(self) -> dict:
        raise SyscallError(errno.EBADF)

    def ioctl(self, t, request: int, arg: int) -> int:
        raise SyscallError(errno.ENOTTY)

    def ready(self) -> int:
        """The poll(2) events this file would report now (regular files: always ready)."""
        return POLLIN | POLLOUT

    def queues(self, t) -> tuple:
        """The WaitQueues that fire when ready() may have changed (for poll and select)."""
        return ()

    def release(self) -> None:
        """The last fd referring to this description was closed."""

    def describe(self) -> str:
        """What `inspect` and /proc/pid/fd show for this file."""
        return type(self).__name__


def drop_ref(f: OpenFile) -> None:
    """Let go of a reference to a file description; the last one releases it."""
    f.refs -= 1
    if f.refs == 0:
        f.release()


@savable
@dataclass(eq=False)
class FDTable:
    """fd number -> open file description, plus each fd's close-on-exec flag."""

    files: dict = field(default_factory=dict)  # int -> OpenFile
    cloexec: set = field(default_factory=set)  # fds with FD_CLOEXEC
    limit: int = RLIMIT_NOFILE_DEFAULT  # RLIMIT_NOFILE: fds must be below this
    # While a syscall runs (set by the kernel around it): the files a parked call of the
    # same task had resolved (Task.held), which it goes on with whatever became of their
    # fds since, as Linux's call holds a file reference; and the files this run resolves.
    held: dict = nosave(dict)
    seen: dict | None = nosave(default=None)

    def get(self, fd: int) -> OpenFile:
        f = self.held.get(fd) if self.held else None
        if f is not None:
            return f
        f = self.files.get(fd)
        if f is None:
            raise SyscallError(errno.EBADF)
        if self.seen is not None:
            self.seen[fd] = f
        return f

    def get_open(self, fd: int) -> OpenFile:
        """The file fd refers to, for a call that works on the file itself: an O_PATH
        descriptor, which serves only close, dup, fcntl's fd flags, fstat, fchdir and the
        *at calls, is EBADF to it, as to Linux's fdget."""
        f = self.get(fd)
        if f.flags & O_PATH:
            raise SyscallError(errno.EBADF)
        return f

    def install(self, f: OpenFile, cloexec: bool = False, lowest: int = 0) -> int:
        fd = lowest
        while fd in self.files:
            fd += 1
        if fd >= self.limit:
            raise SyscallError(errno.EMFILE)
        self.install_at(fd, f, cloexec)
        return fd

    def install_at(self, fd: int, f: OpenFile, cloexec: bool = False) -> None:
        if fd in self.files:
            self.close(fd)
        f.refs += 1
        self.files[fd] = f
        if cloexec:
            self.cloexec.add(fd)
        else:
            self.cloexec.discard(fd)

    def close(self, fd: int) -> None:
        f = self.files.pop(fd, None)
        if f is None:
            raise SyscallError(errno.EBADF)
        self.cloexec.discard(fd)
        drop_ref(f)

    def copy(self) -> FDTable:
        """A table of its own with the same descriptions (dup_fd: fork, unshare(CLONE_FILES))."""
        for f in self.files.values():
            f.refs += 1
        return FDTable(files=dict(self.files), cloexec=set(self.cloexec), limit=self.limit)

    def close_all(self) -> None:
        for fd in list(self.files):
            self.close(fd)
