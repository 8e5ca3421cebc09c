"""/proc, generated from kernel state: self, per-pid stat, status, cmdline, comm, maps,
fd/, exe, cwd; and meminfo, cpuinfo, uptime, loadavg, mounts.

And /proc/snapbox, snapbox's own: `restored` reads how many times this sandbox has been
restored from an image (0 for one that never was), and under `--snapshot-to IMAGE`
writing `checkpoint` asks for the sandbox to be checkpointed to IMAGE there and then. The
write returns once the image is written, in the sandbox that asked and in every sandbox
later restored from that image (which then reads `restored` to know which it is: a clone
reseeds, reconnects, reads the clock again). It fails with EIO if the image could not be
written.

Nothing of the host's /proc is ever shown: every byte is made from the sandbox's own
objects, at open time (as Linux's seq files are read at open, roughly).
"""

from __future__ import annotations

import errno
import os
import stat
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import OpenFile
from snapbox.kernel.host import UTS_RELEASE, UTS_VERSION, host_meminfo
from snapbox.kernel.vfs import Dir, Inode, now_ns
from snapbox.memfile import PAGE_SIZE
from snapbox.state import savable

if TYPE_CHECKING:
    from snapbox.kernel.kernel import Kernel

PROC_DEV = 0x4
PID_FILES = ("stat", "status", "cmdline", "comm", "maps", "environ")
PID_LINKS = ("exe", "cwd", "root")
TOP_FILES = ("meminfo", "cpuinfo", "uptime", "loadavg", "mounts", "version")


@savable
@dataclass(eq=False)
class ProcDir(Dir):
    """A directory of /proc: the top (pid 0), a process's directory, or its fd/ directory."""

    kernel: Kernel | None = None
    pid: int = 0
    kind: str = "top"  # top, pid, fd, snapbox

    def child(self, name: str) -> Inode:
        return lookup(self, name)

    def names(self) -> list[str]:
        return list_dir(self)


@savable
@dataclass(eq=False)
class ProcNode(Inode):
    """A file or symlink of /proc whose content is made from kernel state when read."""

    kernel: Kernel | None = None
    pid: int = 0
    name: str = ""  # which file: stat, status, ..., or self, exe, cwd, root, fd number

    def target(self) -> bytes:
        return readlink(self)

    def open(self, flags: int) -> ProcFile:
        return ProcFile(flags=flags, node=self, content=_content(self))


@savable
@dataclass(eq=False)
class ProcFile(OpenFile):
    """An open /proc file: a snapshot of its content taken at open."""

    node: ProcNode | None = None
    content: bytes = b""

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        pos = self.offset if offset is None else offset
        data = self.content[pos : pos + count]
        if offset is None:
            self.offset += len(data)
        return data

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        """Only /proc/snapbox/checkpoint takes writes (see the module's doc)."""
        if self.node.name != "snapbox/checkpoint":
            raise SyscallError(errno.EINVAL)
        k = t.kernel
        if t.snapshot == "taken":  # written since: here, or in the sandbox restored from it
            t.snapshot = ""
            return len(data)
        if t.snapshot == "failed":
            t.snapshot = ""
            raise SyscallError(errno.EIO)
        if k.snapshot is None:
            raise SyscallError(errno.EOPNOTSUPP)  # an fd from before a restore without --snapshot-to
        if t.snapshot != "wanted":
            t.snapshot = "wanted"
            k.loop.call_at(0, lambda: k.snapshot(t))
        raise WouldBlock(k.snapshot_done)

    def seek(self, offset: int, whence: int) -> int:
        pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.offset, os.SEEK_END: len(self.content)}.get(whence)
        if pos is None or pos + offset < 0:
            raise SyscallError(errno.EINVAL)
        self.offset = pos + offset
        return self.offset

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"proc /proc/{self.node.pid or ''}{'/' if self.node.pid else ''}{self.node.name}"


def mount_proc(kernel: Kernel) -> None:
    """Put /proc over whatever the rootfs has there."""
    fs = kernel.fs
    now = now_ns()
    proc = ProcDir(ino=fs.new_ino(), mode=stat.S_IFDIR | 0o555, nlink=2, atime=now, mtime=now, ctime=now,
                   name="proc", parent=fs.root, kernel=kernel)
    fs.root.entries["proc"] = proc
    fs.root.whiteouts.discard("proc")


def _ino(pid: int, name: str) -> int:
    return 0x1000000 + pid * 64 + zlib.crc32(name.encode()) % 64


def lookup(d: ProcDir, name: str) -> Inode:
    """The child `name` of a /proc directory, made afresh."""
    k = d.kernel
    now = now_ns()
    groups = k.tasks.pidns.groups
    if d.kind == "top":
        if name == "self":
            return ProcNode(ino=_ino(0, name), mode=stat.S_IFLNK | 0o777, kernel=k, name="self", ctime=now)
        if name.isdigit() and int(name) in groups and groups[int(name)].exit_status is None:
            pid = int(name)
            return ProcDir(ino=_ino(pid, ""), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d,
                           kernel=k, pid=pid, kind="pid", ctime=now, mtime=now, atime=now)
        if name in TOP_FILES:
            return ProcNode(ino=_ino(0, name), mode=stat.S_IFREG | 0o444, kernel=k, name=name, ctime=now)
        if name == "snapbox":
            return ProcDir(ino=_ino(0, name), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d, kernel=k,
                           kind="snapbox", ctime=now, mtime=now, atime=now)
    elif d.kind == "snapbox":
        if name == "restored":
            return ProcNode(ino=_ino(0, "snapbox/" + name), mode=stat.S_IFREG | 0o444, kernel=k,
                            name="snapbox/" + name, ctime=now)
        if name == "checkpoint" and k.snapshot is not None:
            return ProcNode(ino=_ino(0, "snapbox/" + name), mode=stat.S_IFREG | 0o200, kernel=k,
                            name="snapbox/" + name, ctime=now)
    elif d.kind == "pid":
        if d.pid not in groups:
            raise SyscallError(errno.ESRCH)
        if name in PID_FILES:
            return ProcNode(ino=_ino(d.pid, name), mode=stat.S_IFREG | 0o444, kernel=k, pid=d.pid, name=name,
                            ctime=now)
        if name in PID_LINKS:
            return ProcNode(ino=_ino(d.pid, name), mode=stat.S_IFLNK | 0o777, kernel=k, pid=d.pid, name=name,
                            ctime=now)
        if name == "fd":
            return ProcDir(ino=_ino(d.pid, "fd"), mode=stat.S_IFDIR | 0o500, nlink=2, name="fd", parent=d,
                           kernel=k, pid=d.pid, kind="fd", ctime=now)
    elif d.kind == "fd":
        tg = groups.get(d.pid)
        if tg is not None and name.isdigit() and int(name) in tg.fds.files:
            return ProcNode(ino=_ino(d.pid, "fd" + name), mode=stat.S_IFLNK | 0o700, kernel=k, pid=d.pid,
                            name="fd/" + name, ctime=now)
    raise SyscallError(errno.ENOENT)


def list_dir(d: ProcDir) -> list[str]:
    groups = d.kernel.tasks.pidns.groups
    if d.kind == "top":
        pids = sorted(p for p, g in groups.items() if g.exit_status is None)
        return ["self", *TOP_FILES, "snapbox", *(str(p) for p in pids)]
    if d.kind == "snapbox":
        return ["restored", *(["checkpoint"] if d.kernel.snapshot is not None else [])]
    if d.kind == "pid":
        return [*PID_FILES, *PID_LINKS, "fd"]
    tg = groups.get(d.pid)
    return [str(fd) for fd in sorted(tg.fds.files)] if tg is not None else []


def readlink(node: ProcNode) -> bytes:
    k = node.kernel
    if node.name == "self":
        current = k.current
        return str(current.tg.tgid if current is not None else 1).encode()
    tg = k.tasks.pidns.groups.get(node.pid)
    if tg is None:
        raise SyscallError(errno.ENOENT)
    if node.name == "exe":
        return os.fsencode(tg.exe)
    if node.name == "cwd":
        return os.fsencode(tg.fs.cwd.path())
    if node.name == "root":
        return b"/"
    f = tg.fds.files.get(int(node.name[3:]))
    if f is None:
        raise SyscallError(errno.ENOENT)
    return os.fsencode(_fd_target(f))


def _fd_target(f) -> str:
    """What readlink(/proc/pid/fd/N) shows for an open file."""
    name = type(f).__name__
    if name == "RegularFile":
        return f.name
    if name == "DirFile":
        return f.node.path()
    if name == "PipeFile":
        return f"pipe:[{f.pipe.ino}]"
    if name == "DeviceFile":
        return f"/dev/{f.node.name}"
    if name in ("PtyMaster", "PtySlave"):
        return f.describe()
    if name == "HostFile":
        return f"host:[{('stdin', 'stdout', 'stderr')[f.stdio]}]"
    return f"anon_inode:[{name}]"


def _content(node: ProcNode) -> bytes:
    k = node.kernel
    name = node.name
    if node.pid == 0:
        return _top(k, name).encode()
    tg = k.tasks.pidns.groups.get(node.pid)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    leader = tg.tasks[0]
    if name == "cmdline":
        return b"".join(a + b"\0" for a in tg.argv)
    if name == "environ":
        return b""
    if name == "comm":
        return leader.comm.encode() + b"\n"
    if name == "stat":
        return _stat(k, tg).encode()
    if name == "status":
        return _status(k, tg).encode()
    if name == "maps":
        return "".join(_map_line(v) for v in tg.mm.vmas).encode()
    raise SyscallError(errno.ENOENT)


def _state(tg) -> str:
    from snapbox.kernel.task import Run

    return "R" if any(t.run is Run.RUNNING for t in tg.tasks) else "S"


def _stat(k, tg) -> str:
    leader = tg.tasks[0]
    ticks = sum(k.cpu_time_ns(t) for t in tg.tasks) * 100 // 1_000_000_000
    vsize = sum(v.end - v.start for v in tg.mm.vmas)
    ppid = tg.parent.tgid if tg.parent is not None else 0
    fields = [tg.tgid, f"({leader.comm})", _state(tg), ppid, tg.pgid, tg.sid, 0, -1, 0x400000,
              0, 0, 0, 0, ticks, 0, 0, 0, 20 + leader.nice, leader.nice, len(tg.tasks), 0, 0, vsize,
              vsize // PAGE_SIZE]
    return " ".join(str(f) for f in fields) + " 0" * 28 + "\n"


def _status(k, tg) -> str:
    leader = tg.tasks[0]
    ppid = tg.parent.tgid if tg.parent is not None else 0
    states = {"R": "R (running)", "S": "S (sleeping)"}
    creds, c = tg.creds, tg.caps
    vm = sum(v.end - v.start for v in tg.mm.vmas) // 1024
    return (f"Name:\t{leader.comm}\nUmask:\t{tg.fs.umask:04o}\nState:\t{states[_state(tg)]}\n"
            f"Tgid:\t{tg.tgid}\nPid:\t{tg.tgid}\nPPid:\t{ppid}\n"
            f"Uid:\t{creds[0]}\t{creds[1]}\t{creds[2]}\t{tg.fsuid}\n"
            f"Gid:\t{creds[3]}\t{creds[4]}\t{creds[5]}\t{tg.fsgid}\n"
            f"FDSize:\t{max(64, len(tg.fds.files))}\nGroups:\t{' '.join(map(str, tg.groups))}\n"
            f"VmSize:\t{vm:8d} kB\nThreads:\t{len(tg.tasks)}\n"
            f"SigPnd:\t{leader.pending:016x}\nShdPnd:\t{tg.pending:016x}\n"
            f"SigBlk:\t{leader.signal_mask:016x}\n"
            f"CapInh:\t{c.inheritable:016x}\nCapPrm:\t{c.permitted:016x}\nCapEff:\t{c.effective:016x}\n"
            f"CapBnd:\t{c.bounding:016x}\nCapAmb:\t{c.ambient:016x}\n"
            f"NoNewPrivs:\t{tg.prctl.get('no_new_privs', 0)}\n")


def _map_line(v) -> str:
    prot = v.prot
    perms = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + "p"
    path = {"stack": "[stack]", "heap": "[heap]", "anon": ""}.get(v.kind, v.kind)
    offset = v.file_offset if v.kind.startswith("/") else 0
    line = f"{v.start:08x}-{v.end:08x} {perms} {offset:08x} 00:00 0"
    return f"{line:<73}{path}\n" if path else line + "\n"


def _top(k, name: str) -> str:
    if name == "snapbox/restored":
        return f"{k.restores}\n"
    if name == "snapbox/checkpoint":
        return ""
    if name == "uptime":
        up = k.timekeeper.monotonic_ns() / 1e9
        return f"{up:.2f} {up:.2f}\n"
    if name == "loadavg":
        running = len(k.tasks.pidns.tasks)
        return f"0.00 0.00 0.00 1/{running} {k.tasks.pidns.next_id - 1}\n"
    if name == "mounts":
        return ("rootfs / overlay ro,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
                "devtmpfs /dev devtmpfs rw,nosuid 0 0\n")
    if name == "version":
        return f"Linux version {UTS_RELEASE} (snapbox) {UTS_VERSION}\n"
    if name == "meminfo":
        mem = host_meminfo()
        keys = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree")
        return "".join(f"{key + ':':<16}{mem.get(key, 0) // 1024:8d} kB\n" for key in keys)
    if name == "cpuinfo":
        fs = k.features
        flags = " ".join(sorted(fs.features))
        out = []
        for cpu in range(os.cpu_count() or 1):
            out.append(f"processor\t: {cpu}\nvendor_id\t: {fs.vendor}\ncpu family\t: {fs.family}\n"
                       f"model\t\t: {fs.model}\nflags\t\t: {flags}\n\n")
        return "".join(out)
    raise SyscallError(errno.ENOENT)
