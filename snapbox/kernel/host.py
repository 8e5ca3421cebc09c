"""The host as the sandbox sees it: the sandbox process's stdio, and the Linux that uname(2)
and /proc report.

A HostFile names which stdio stream it is, not a host fd: on restore it is bound to the
stdio of the restoring process, the way a runc container's stdio is its caller's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import selectors
import stat as st
import struct
import weakref
from dataclasses import dataclass

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import POLLIN, POLLOUT, OpenFile
from snapbox.state import ImageError, nosave, savable

TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
TIOCSCTTY, TIOCGPGRP, TIOCSPGRP = 0x540E, 0x540F, 0x5410
TIOCGWINSZ, TIOCSWINSZ, FIONREAD, TIOCNOTTY, TIOCGSID = 0x5413, 0x5414, 0x541B, 0x5422, 0x5429
# Terminal requests passed to the host terminal: request -> (bytes of its struct, written back?).
# The kernel's struct termios is 36 bytes (glibc's own is bigger; the ioctl uses the kernel's).
_TTY_FORWARDED = {TCGETS: (36, True), TCSETS: (36, False), TCSETSW: (36, False), TCSETSF: (36, False),
                  TIOCGWINSZ: (8, True), TIOCSWINSZ: (8, False), FIONREAD: (4, True)}
_NAMES = ("stdin", "stdout", "stderr")

# What uname(2) reports: a Linux the sandbox's programs can rely on, not the host's build.
UTS_RELEASE = "6.1.0"
UTS_VERSION = "#1 SMP snapbox"

def host_meminfo() -> dict[str, int]:
    """The host's /proc/meminfo in bytes (sysinfo(2) and the sandbox's /proc/meminfo)."""
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


_memory_and_swap: list[int] = []


def memory_and_swap() -> int:
    """The host's memory and swap in bytes (read once): what vm.overcommit_memory 0's
    heuristic lets no single allocation exceed."""
    if not _memory_and_swap:
        mem = host_meminfo()
        _memory_and_swap.append(mem.get("MemTotal", 0) + mem.get("SwapTotal", 0) or 1 << 62)
    return _memory_and_swap[0]


def _dup_stdio(n: int) -> int:
    """Our stdio stream n for the sandbox; /dev/null if this process has none there."""
    try:
        return os.dup(n)
    except OSError:
        return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


@savable
@dataclass(eq=False)
class HostFile(OpenFile):
    """One of the sandbox process's standard streams (0, 1 or 2)."""

    stdio: int = 0
    passed: bool = False  # a stream handed over by `snapbox exec`, not the sandbox's own
    fd: int = nosave(default=-1)  # the host fd: a dup of the sandbox process's stdio
    # Closes fd, once: at release(), or when the file is dropped unreleased (a kernel whose
    # image was refused half way through).
    closer: weakref.finalize | None = nosave(default=None)

    def __post_init__(self) -> None:
        self._hold(self.fd if self.fd >= 0 else _dup_stdio(self.stdio))

    def after_load(self, ctx) -> None:
        if self.stdio not in (0, 1, 2):
            raise ImageError(f"image holds a host stdio file numbered {self.stdio}")
        # An exec'd process's streams belonged to an `exec` command that is gone now.
        self._hold(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC) if self.passed else _dup_stdio(self.stdio))

    def rebind(self) -> None:
        """Follow the sandbox process's stdio, which has changed (a clone taken from its pool)."""
        self.release()
        self._hold(_dup_stdio(self.stdio))

    def _hold(self, fd: int) -> None:
        self.fd = fd
        self.closer = weakref.finalize(self, os.close, fd)

    def _ready(self, events: int) -> bool:
        r, w, _ = select.select([self.fd] if events == selectors.EVENT_READ else [],
                                [self.fd] if events == selectors.EVENT_WRITE else [], [], 0)
        return bool(r or w)

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if offset is not None:
            return os.pread(self.fd, count, offset)
        if not self._ready(selectors.EVENT_READ):
            raise WouldBlock(t.kernel.loop.host_queue(self.fd, selectors.EVENT_READ))
        try:
            return os.read(self.fd, count)
        except OSError as e:
            raise SyscallError(e.errno) from None

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if offset is not None:
            return os.pwrite(self.fd, data, offset)
        if not self._ready(selectors.EVENT_WRITE):
            raise WouldBlock(t.kernel.loop.host_queue(self.fd, selectors.EVENT_WRITE))
        mode = os.fstat(self.fd).st_mode
        # A pipe or socket that polls writable takes at least PIPE_BUF bytes without
        # blocking; more could stall the whole sentry, so the caller loops.
        if st.S_ISFIFO(mode) or st.S_ISSOCK(mode):
            data = data[:select.PIPE_BUF]
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            raise SyscallError(errno.EPIPE) from None
        except OSError as e:
            raise SyscallError(e.errno) from None

    def ready(self) -> int:
        r, w, _ = select.select([self.fd], [self.fd], [], 0)
        return (POLLIN if r else 0) | (POLLOUT if w else 0)

    def queues(self, t) -> tuple:
        return (t.kernel.loop.host_queue(self.fd, selectors.EVENT_READ),
                t.kernel.loop.host_queue(self.fd, selectors.EVENT_WRITE))

    def seek(self, offset: int, whence: int) -> int:
        try:
            return os.lseek(self.fd, offset, whence)
        except OSError as e:
            raise SyscallError(e.errno) from None

    def stat(self) -> dict:
        s = os.fstat(self.fd)
        return dict(dev=s.st_dev, ino=s.st_ino, mode=s.st_mode, nlink=s.st_nlink, uid=s.st_uid,
                    gid=s.st_gid, rdev=s.st_rdev, size=s.st_size, blksize=s.st_blksize,
                    blocks=s.st_blocks, atime=s.st_atime_ns, mtime=s.st_mtime_ns, ctime=s.st_ctime_ns)

    def ioctl(self, t, request: int, arg: int) -> int:
        if not os.isatty(self.fd):
            raise SyscallError(errno.ENOTTY)
        k = t.kernel
        # Job control on the terminal is the sandbox's own, with its process ids: each
        # session's terminal (init's console, an exec'd process's) has its foreground group.
        sid = t.tg.sid
        if request == TIOCGPGRP:
            t.mm.write(arg, struct.pack("<i", k.foreground_group(sid)))
            return 0
        if request == TIOCSPGRP:
            (pgrp,) = struct.unpack("<i", t.mm.read(arg, 4))
            members = [tg for tg in k.tasks.pidns.groups.values() if tg.pgid == pgrp and tg.exit_status is None]
            if pgrp < 0:
                raise SyscallError(errno.EINVAL)
            if not members:
                raise SyscallError(errno.ESRCH)
            if any(tg.sid != sid for tg in members):
                raise SyscallError(errno.EPERM)
            k.foreground[sid] = pgrp
            return 0
        if request == TIOCGSID:
            t.mm.write(arg, struct.pack("<i", sid))
            return 0
        if request in (TIOCSCTTY, TIOCNOTTY):
            return 0
        if request not in _TTY_FORWARDED:
            raise SyscallError(errno.ENOTTY)
        size, out = _TTY_FORWARDED[request]
        data = bytes(size) if out else t.mm.read(arg, size)
        try:
            result = fcntl.ioctl(self.fd, request, data)
        except OSError as e:
            raise SyscallError(e.errno) from None
        if out:
            t.mm.write(arg, result)
        return 0

    def release(self) -> None:
        if self.fd >= 0:
            self.closer()
            self.fd = -1

    def describe(self) -> str:
        return f"host {_NAMES[self.stdio]}" + (" (of exec)" if self.passed else "")
