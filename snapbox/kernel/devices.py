"""/dev: the character devices every program expects (null, zero, full, random, urandom,
and the terminal ones, whose files are in snapbox.kernel.tty)."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.fd import OpenFile
from snapbox.kernel.vfs import Dir, Filesystem, Inode, MemSymlink, now_ns
from snapbox.state import savable

# name -> (major, minor), as on Linux (Documentation/admin-guide/devices.txt)
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
MAX_READ = 1 << 20


def makedev(major: int, minor: int) -> int:
    return ((major & 0xFFF) << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12) | ((major & ~0xFFF) << 32)


@savable
@dataclass(eq=False)
class DeviceNode(Inode):
    """A character device node; `name` says which device it is."""

    name: str = ""


@savable
@dataclass(eq=False)
class DeviceFile(OpenFile):
    """An open character device."""

    node: DeviceNode | None = None

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        name = self.node.name
        if name == "null":
            return b""
        if name in ("zero", "full"):
            return bytes(min(count, MAX_READ))
        return os.urandom(min(count, MAX_READ))

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        if self.node.name == "full":
            raise SyscallError(errno.ENOSPC)
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        return 0  # these devices ignore the file position (lseek succeeds, as on Linux)

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"device /dev/{self.node.name}"


def mount_dev(fs: Filesystem) -> None:
    """Put a fresh /dev over whatever the rootfs has there: the standard devices, /dev/tty
    (the controlling terminal), /dev/ptmx and a /dev/pts for pseudo-terminals
    (snapbox.kernel.tty), a /dev/shm tmpfs, and the links runc makes: /dev/fd, /dev/stdin,
    /dev/stdout and /dev/stderr into /proc/self/fd."""
    now = now_ns()
    dev = Dir(ino=fs.new_ino(), mode=stat.S_IFDIR | 0o755, nlink=2, atime=now, mtime=now, ctime=now,
              name="dev", parent=fs.root, tmpfs=True)
    for name, (major, minor) in dict(DEVICES, tty=(5, 0), ptmx=(5, 2)).items():
        dev.entries[name] = DeviceNode(ino=fs.new_ino(), mode=stat.S_IFCHR | 0o666, atime=now,
                                       mtime=now, ctime=now, name=name, rdev=makedev(major, minor))
    # devpts as container runtimes mount it (ptmxmode=0666): its own ptmx, and a node per pty.
    pts = Dir(ino=fs.new_ino(), mode=stat.S_IFDIR | 0o755, nlink=2, atime=now, mtime=now, ctime=now,
              name="pts", parent=dev, tmpfs=True)
    pts.entries["ptmx"] = DeviceNode(ino=fs.new_ino(), mode=stat.S_IFCHR | 0o666, atime=now, mtime=now,
                                     ctime=now, name="ptmx", rdev=makedev(5, 2))
    dev.entries["pts"] = pts
    # POSIX shared memory and named semaphores (shm_open, sem_open) are files in /dev/shm,
    # a tmpfs, as in every container runc starts.
    dev.entries["shm"] = Dir(ino=fs.new_ino(), mode=stat.S_IFDIR | 0o1777, nlink=2, atime=now, mtime=now,
                             ctime=now, name="shm", parent=dev, tmpfs=True)
    dev.nlink += 2
    for name, target in (("fd", b"/proc/self/fd"), ("stdin", b"/proc/self/fd/0"), ("stdout", b"/proc/self/fd/1"),
                         ("stderr", b"/proc/self/fd/2")):
        dev.entries[name] = MemSymlink(ino=fs.new_ino(), mode=stat.S_IFLNK | 0o777, atime=now, mtime=now,
                                       ctime=now, target=target)
    fs.root.entries["dev"] = dev
    fs.root.whiteouts.discard("dev")
