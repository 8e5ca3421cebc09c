"""/proc, generated from kernel state: self, thread-self; per pid stat, status, statm,
cmdline, comm (writable), maps, smaps, smaps_rollup, oom_score, oom_score_adj (writable),
uid_map, gid_map and setgroups (writable: snapbox.kernel.userns), fd/, fdinfo/, exe, cwd,
root, ns/, task/TID/ (each thread's), for zombies too as Linux shows them; and stat, meminfo, cpuinfo, uptime, loadavg, mounts; and sys/ (SYSCTL: the limits the
sandbox enforces, the UTS names, which a write changes, a uuid).

/proc/PID/ns/KIND reads as a link to "KIND:[inode]"; opened, it is the namespace itself
(NsFile), which setns(2) takes: a magic link, as on Linux (Inode.magic).

Memory is counted from the MemoryFile: a mapping's resident bytes are those of its range
that are not holes (MemoryManager.resident), which is what Linux counts for memory that was
touched; a read-only mapping of a file's cached pages is shared by all its users, and its
proportional share (Pss) is divided among them.

And /proc/snapbox, snapbox's own: `restored` reads how many times this sandbox has been
restored from an image (0 for one that never was), and under `--snapshot-to IMAGE`
writing `checkpoint` asks for the sandbox to be checkpointed to IMAGE there and then. The
write returns once the image is written, in the sandbox that asked and in every sandbox
later restored from that image (which then reads `restored` to know which it is: a clone
reseeds, reconnects, reads the clock again). It fails with EIO if the image could not be
written.

Nothing of the host's /proc is ever shown: every byte is made from the sandbox's own
objects, at an open file's first read (as Linux's seq files make theirs), so a file
opened while its process ran and read once it is a zombie, or gone, reads as Linux's does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import uuid
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapbox.kernel.creds import (CAP_LAST_CAP, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_RESOURCE, NGROUPS_MAX, Creds,
                                  capable, may_ptrace, ns_capable, shown)
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import (NR_OPEN, O_ACCMODE, O_APPEND, O_CLOEXEC, O_NONBLOCK, O_RDWR, POLLERR, POLLIN, POLLOUT,
                               POLLPRI, POLLRDNORM, POLLWRNORM, OpenFile)
from snapbox.kernel.host import UTS_RELEASE, UTS_VERSION, HostFile, host_meminfo
from snapbox.kernel.ipc import MSGMAX, MSGMNB, MSGMNI, SEMMNI, SEMMNS, SEMMSL, SEMOPM, SHMALL, SHMMAX, SHMMNI
from snapbox.kernel.mm import MAX_MAP_COUNT, MMAP_MIN_ADDR, VVAR
from snapbox.kernel.namespaces import KINDS, UTS_NAMES, namespace_of, rename, uts
from snapbox.kernel import procnet
from snapbox.kernel.pipe import PipeFile
from snapbox.kernel.signals import SIG_DFL, SIG_IGN
from snapbox.kernel.userns import show_map, write_map, write_setgroups
from snapbox.kernel.socket import NOBODY, SO_RCVBUF, SO_SNDBUF, SOMAXCONN, SocketFile, buffer_max
from snapbox.kernel.vfs import MOUNTABLE, OVERLAY_DEV, Dir, Inode, now_ns
from snapbox.memfile import PAGE_SIZE
from snapbox.state import savable

if TYPE_CHECKING:
    from snapbox.kernel.kernel import Kernel

PROC_DEV = 0x4
NSFS_DEV = 0x3
PID_FILES = ("stat", "status", "statm", "cmdline", "comm", "maps", "smaps", "smaps_rollup", "environ", "auxv",
             "mounts", "mountinfo", "mem", "oom_score", "oom_score_adj", "uid_map", "gid_map", "setgroups", "io",
             "coredump_filter")
TASK_FILES = ("children",)  # a thread's directory's alone (task/TID/)
PEEKING = ("maps", "smaps", "smaps_rollup", "environ", "auxv", "io")  # opened only by who may ptrace the process
MODES = {"io": 0o400, "mem": 0o600, "environ": 0o400, "auxv": 0o400}
WRITABLE = ("oom_score_adj", "mem", "comm", "uid_map", "gid_map", "setgroups", "coredump_filter")
ZOMBIE_GONE = ("environ", "mem", "smaps_rollup")  # a zombie's: ESRCH (no memory to show)
PID_LINKS = ("exe", "cwd", "root")
TOP_FILES = ("stat", "meminfo", "cpuinfo", "uptime", "loadavg", "version", "cmdline", "devices", "filesystems")
TOP_LINKS = {"mounts": "self/mounts", "net": "self/net"}
USER_HZ = 100
RLIMIT_SIGPENDING, SIGPENDING_DEFAULT = 11, 4096
OOM_SCORE_ADJ_MIN, OOM_SCORE_ADJ_MAX = -1000, 1000


@savable
@dataclass(eq=False)
class ProcDir(Dir):
    """A directory of /proc: the top (pid 0), a process's directory (or one thread's:
    task/TID, and /proc/TID), or its fd/, fdinfo/, ns/ or task/ directory."""

    seek_end = True  # as procfs's generic_file_llseek
    kernel: Kernel | None = None
    pid: int = 0
    kind: str = "top"  # top, pid, tid, task, fd, fdinfo, ns, snapbox, sys
    tid: int = 0  # the thread a pid or tid directory shows (0: the process's leader)
    sub: str = ""  # which directory of /proc/sys ("" itself, "kernel", "kernel/random"...)

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
    tid: int = 0  # the thread whose comm it is (0: the leader)

    def target(self) -> bytes:
        return readlink(self)

    def magic(self) -> Inode | None:
        """What a magic link opens in place of a path: a namespace (ns/KIND), or an open
        file whose link names no path (fd/N of a pipe, or of a stream the sandbox was
        started with: /dev/stdin is /proc/self/fd/0). Other fd links are followed as paths."""
        if not self.name.startswith(("ns/", "fd/")):
            return None
        tg = self.kernel.tasks.pidns.groups.get(self.pid)
        if tg is None or tg.exit_status is not None:
            raise SyscallError(errno.ENOENT)
        if self.name.startswith("fd/"):
            f = tg.fds.files.get(int(self.name[3:]))
            if f is None:
                raise SyscallError(errno.ENOENT)
            if isinstance(f, SocketFile):
                raise SyscallError(errno.ENXIO)  # a socket is never opened by a path
            if not isinstance(f, (PipeFile, HostFile)):
                return None
            return FdNode(ino=self.ino, mode=f.stat()["mode"], kernel=self.kernel, pid=self.pid, name=self.name,
                          file=f)
        kind = self.name[3:]
        ns, inum = namespace_of(tg, kind)
        return NsNode(ino=inum, mode=stat.S_IFREG | 0o444, kernel=self.kernel, pid=self.pid, name=self.name,
                      kind=kind, ns=ns)

    def open(self, flags: int) -> OpenFile:
        if self.name == "mem":
            return _open_mem(self, flags)
        opener = self.kernel.current.cred.copy() if self.kernel.current is not None else None
        if self.pid:
            owner = self.kernel.tasks.pidns.groups.get(self.pid)
            if owner is None or owner.exit_status is not None and self.name in ZOMBIE_GONE:
                raise SyscallError(errno.ESRCH)  # gone; or a zombie, whose memory is gone
        if self.name in PEEKING and self.kernel.current is not None:
            tg = self.kernel.tasks.pidns.groups.get(self.pid)
            if tg is not None and not may_ptrace(self.kernel.current.tg, tg):
                raise SyscallError(errno.EACCES)  # what shows its memory: for those who could trace it
        if self.name == "setgroups" and flags & O_ACCMODE and opener is not None:
            tg = self.kernel.tasks.pidns.groups.get(self.pid)
            if tg is not None and not ns_capable(opener, tg.user_ns, CAP_SYS_ADMIN):
                raise SyscallError(errno.EPERM)  # changing it takes CAP_SYS_ADMIN in its namespace
        # An id map is its namespace's, taken at open: still there once the process is gone.
        content = _content(self) if self.name in ("uid_map", "gid_map") else None
        f = ProcFile(flags=flags, node=self, opener=opener, content=content)
        if self.name.removeprefix("sys/kernel/") in UTS_NAMES:
            f.names = uts(self.kernel.current) if self.kernel.current is not None else self.kernel
            f.seen = f.names.renames[UTS_NAMES.index(self.name.removeprefix("sys/kernel/"))]
        return f


@savable
@dataclass(eq=False)
class FdNode(ProcNode):
    """An open pipe or host stream as /proc/PID/fd/N opens it: a new open file of the same
    pipe (as a FIFO opens, without waiting: an unnamed pipe's other end is there or gone
    for good), or of the same host stream, opened anew through the host's /proc with no
    more access than the sandbox was given to it."""

    file: OpenFile | None = None

    def stat(self) -> dict:
        return self.file.stat()

    def open(self, flags: int) -> OpenFile:
        f = self.file
        mode = flags & O_ACCMODE
        if isinstance(f, PipeFile):
            f.pipe.open_end(mode)
            return PipeFile(flags=flags, pipe=f.pipe)
        given = fcntl.fcntl(f.fd, fcntl.F_GETFL) & O_ACCMODE
        if mode != given and given != O_RDWR:
            raise SyscallError(errno.EACCES)
        try:
            fd = os.open(f"/proc/self/fd/{f.fd}", flags & (O_ACCMODE | O_APPEND | O_NONBLOCK | os.O_TRUNC)
                         | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise SyscallError(e.errno) from None
        return HostFile(flags=flags, stdio=f.stdio, passed=f.passed, fd=fd)


@savable
@dataclass(eq=False)
class NsNode(ProcNode):
    """A namespace, as /proc/PID/ns/KIND opens it (nsfs): its inode number is the
    namespace's."""

    kind: str = "uts"
    ns: object = None  # the UtsNamespace, IpcNamespace or UserNamespace; None: the sandbox's first

    def stat(self) -> dict:
        return {**super().stat(), "dev": NSFS_DEV, "nlink": 1}

    def open(self, flags: int) -> NsFile:
        return NsFile(flags=flags, node=self)


@savable
@dataclass(eq=False)
class NsFile(OpenFile):
    """An open namespace: what setns(2) joins."""

    node: NsNode | None = None

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        raise SyscallError(errno.EINVAL)

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"{self.node.kind.removesuffix('_for_children')}:[{self.node.ino}]"


@savable
@dataclass(eq=False)
class ProcFile(OpenFile):
    """An open /proc file: a snapshot of its content taken by a read from its start (as
    Linux's seq files and sysctl handlers make theirs), what later reads go on reading."""

    node: ProcNode | None = None
    content: bytes | None = None
    opener: Creds | None = None  # the credentials it was opened with (Linux's f_cred)
    # Of /proc/sys/kernel/hostname or domainname: the opener's UTS names (a UtsNamespace or
    # the Kernel), and how many changes of the name it has reported (proc_sys_poll).
    names: object = None
    seen: int = 0

    def ready(self) -> int:
        """As proc_sys_poll: always readable and writable; a name's file adds POLLERR and
        POLLPRI once after each change of the name."""
        which = self.node.name.removeprefix("sys/kernel/")
        if self.names is None or which not in UTS_NAMES:
            return POLLIN | POLLOUT
        now = self.names.renames[UTS_NAMES.index(which)]
        if now != self.seen:
            self.seen = now
            return POLLIN | POLLRDNORM | POLLERR | POLLPRI
        return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM

    def queues(self, t) -> tuple:
        return (self.names.renamed,) if self.names is not None else ()

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        pos = self.offset if offset is None else offset
        if self.content is None or pos == 0 and not self._held_map():
            self.content = _content(self.node)
        data = self.content[pos : pos + count]
        if offset is None:
            self.offset += len(data)
        return data

    def _held_map(self) -> bool:
        """An id map whose process is gone: the one taken at open is all there is to read."""
        node = self.node
        return node.name in ("uid_map", "gid_map") and node.pid not in node.kernel.tasks.pidns.groups

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        """Only oom_score_adj and /proc/snapbox/checkpoint take writes (see the module's doc)."""
        if self.node.name == "oom_score_adj":
            return _write_oom_score_adj(t, self.node, data)
        if self.node.name == "comm":
            return _write_comm(t, self.node, data)
        if self.node.name in ("uid_map", "gid_map", "setgroups"):
            return self._write_userns(t, data, offset)
        if self.node.name == "coredump_filter":
            return _write_coredump_filter(self.node, data)
        if self.node.name in ("sys/kernel/hostname", "sys/kernel/domainname"):
            # As proc_dostring: up to a newline or NUL, at most 64 bytes (the file's mode, 0644
            # root's, is the only check, as on Linux).
            value = data.split(b"\n")[0].split(b"\0")[0][:64].decode("utf-8", "replace")
            rename(uts(t), self.node.name.rsplit("/", 1)[1], value)
            return len(data)
        if self.node.name == "sys/net/ipv4/ip_local_port_range":
            return _write_port_range(t, data)
        if self.node.name[4:] in NET_SETTINGS:
            return _write_setting(t, self.node.name[4:], data)
        if self.node.name in ("sys/kernel/keys/maxkeys", "sys/kernel/keys/root_maxkeys"):
            value = _integer(data)
            if value < 0:
                raise SyscallError(errno.EINVAL)  # proc_dointvec_minmax's floor
            setattr(t.kernel.keys, self.node.name.rsplit("/", 1)[1], value)
            return len(data)
        if self.node.name != "snapbox/checkpoint":
            # A file of its own with no write: EIO (proc_reg_write); a process's, EINVAL (vfs_write).
            raise SyscallError(errno.EINVAL if self.node.pid else errno.EIO)
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

    def _write_userns(self, t, data: bytes, offset: int | None) -> int:
        """A write to uid_map, gid_map or setgroups of the process's user namespace."""
        tg = self.node.kernel.tasks.pidns.groups.get(self.node.pid)
        if tg is None or tg.exit_status is not None:
            raise SyscallError(errno.ESRCH)
        pos = self.offset if offset is None else offset
        if self.node.name == "setgroups":
            n = write_setgroups(tg.user_ns, data, pos)
        else:
            n = write_map(t.cred, self.opener or t.cred, tg.user_ns, self.node.name[:3], data, pos)
        if offset is None:
            self.offset += n
        return n

    def seek(self, offset: int, whence: int) -> int:
        pos = {os.SEEK_SET: 0, os.SEEK_CUR: self.offset}.get(whence)  # no SEEK_END, as seq_file
        if pos is None or pos + offset < 0:
            raise SyscallError(errno.EINVAL)
        self.offset = pos + offset
        return self.offset

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"proc /proc/{self.node.pid or ''}{'/' if self.node.pid else ''}{self.node.name}"


MEM_CHUNK = 1 << 20  # the most one read or write of /proc/PID/mem moves


@savable
@dataclass(eq=False)
class ProcMemFile(OpenFile):
    """/proc/PID/mem: the process's memory, read and written at the file position taken as
    an address, as a debugger sees it (MemoryManager.debug_read and debug_write); EIO where nothing
    is mapped, end of file once the process has exited."""

    node: ProcNode | None = None

    def _mm(self):
        tg = self.node.kernel.tasks.pidns.groups.get(self.node.pid)
        return None if tg is None or tg.exit_status is not None else tg.mm

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        mm = self._mm()
        if mm is None or count == 0:
            return b""
        data = mm.debug_read(self.offset if offset is None else offset, min(count, MEM_CHUNK))
        if not data:
            raise SyscallError(errno.EIO)
        if offset is None:
            self.offset += len(data)
        return data

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        mm = self._mm()
        if mm is None or not data:
            return 0
        n = mm.debug_write(self.offset if offset is None else offset, data[:MEM_CHUNK])
        if not n:
            raise SyscallError(errno.EIO)
        if offset is None:
            self.offset += n
        return n

    def seek(self, offset: int, whence: int) -> int:
        if whence == os.SEEK_SET:
            self.offset = offset
        elif whence == os.SEEK_CUR:
            self.offset += offset
        else:
            raise SyscallError(errno.EINVAL)
        return self.offset

    def stat(self) -> dict:
        return self.node.stat()

    def describe(self) -> str:
        return f"proc /proc/{self.node.pid}/mem"


def _open_mem(node: ProcNode, flags: int) -> ProcMemFile:
    """Open /proc/PID/mem: only a process that could ptrace the owner may (the same user
    throughout, or CAP_SYS_PTRACE), as Linux's ptrace_may_access."""
    k = node.kernel
    tg = k.tasks.pidns.groups.get(node.pid)
    opener = k.current.tg if k.current is not None else None
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    if opener is not None and opener is not tg and not ns_capable(opener.acting(), tg.user_ns, CAP_SYS_PTRACE):
        uid, gid = opener.creds[0], opener.creds[3]
        if tg.creds[0:3] != [uid] * 3 or tg.creds[3:6] != [gid] * 3:
            raise SyscallError(errno.EACCES)
    return ProcMemFile(flags=flags, node=node)


PROC_ROOT_INO = 1  # as Linux numbers procfs's root
RLIMIT_RSS = 5


def mount_proc(kernel: Kernel) -> None:
    """Put /proc over whatever the rootfs has there."""
    fs = kernel.fs
    now = now_ns()
    proc = ProcDir(ino=PROC_ROOT_INO, mode=stat.S_IFDIR | 0o555, nlink=2, atime=now, mtime=now, ctime=now,
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
        if name in ("self", "thread-self", *TOP_LINKS):
            return ProcNode(ino=_ino(0, name), mode=stat.S_IFLNK | 0o777, kernel=k, name=name, ctime=now)
        if name.isdigit() and int(name) in groups:
            pid = int(name)
            ids = groups[pid].cred.ids
            return ProcDir(ino=_ino(pid, ""), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d,
                           kernel=k, pid=pid, kind="pid", ctime=now, mtime=now, atime=now, uid=ids[1], gid=ids[4])
        task = k.tasks.pidns.tasks.get(int(name)) if name.isdigit() else None
        if task is not None:  # a thread's id: its own directory, not listed (as Linux)
            ids = task.tg.cred.ids
            return ProcDir(ino=_ino(task.tid, ""), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d,
                           kernel=k, pid=task.tg.tgid, tid=task.tid, kind="pid", ctime=now, mtime=now, atime=now,
                           uid=ids[1], gid=ids[4])
        if name in TOP_FILES:
            return ProcNode(ino=_ino(0, name), mode=stat.S_IFREG | 0o444, kernel=k, name=name, ctime=now)
        if name in ("snapbox", "sys"):
            return ProcDir(ino=_ino(0, name), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d, kernel=k,
                           kind=name, ctime=now, mtime=now, atime=now)
    elif d.kind == "sys":
        path = f"{d.sub}/{name}" if d.sub else name
        if path in SYSCTL:
            return ProcNode(ino=_ino(0, "sys/" + path), mode=stat.S_IFREG | SYSCTL[path], kernel=k,
                            name="sys/" + path, ctime=now)
        if any(key.startswith(path + "/") for key in SYSCTL):
            return ProcDir(ino=_ino(0, "sys/" + path), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d,
                           kernel=k, kind="sys", sub=path, ctime=now, mtime=now, atime=now)
    elif d.kind == "snapbox":
        if name == "restored":
            return ProcNode(ino=_ino(0, "snapbox/" + name), mode=stat.S_IFREG | 0o444, kernel=k,
                            name="snapbox/" + name, ctime=now)
        if name == "checkpoint" and k.snapshot is not None:
            return ProcNode(ino=_ino(0, "snapbox/" + name), mode=stat.S_IFREG | 0o200, kernel=k,
                            name="snapbox/" + name, ctime=now)
    elif d.kind in ("pid", "tid"):
        if d.pid not in groups:
            raise SyscallError(errno.ESRCH)
        at = d.tid or d.pid
        owner = groups[d.pid].cred.ids  # a process's files are its euid's and egid's (task_dump_owner)
        if name in PID_FILES or name in TASK_FILES and d.kind == "tid":
            mode = MODES.get(name, 0o644 if name in WRITABLE else 0o444)
            return ProcNode(ino=_ino(at, name), mode=stat.S_IFREG | mode, kernel=k, pid=d.pid, tid=d.tid, name=name,
                            ctime=now, uid=owner[1], gid=owner[4])
        if name in PID_LINKS:
            return ProcNode(ino=_ino(at, name), mode=stat.S_IFLNK | 0o777, kernel=k, pid=d.pid, name=name,
                            ctime=now)
        if name == "net":
            return ProcDir(ino=_ino(at, name), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d, kernel=k,
                           pid=d.pid, kind="net", ctime=now, mtime=now, atime=now)
        if name in ("fd", "fdinfo", "ns") or name == "task" and d.kind == "pid":
            threads = len(groups[d.pid].tasks) if name == "task" else 0  # each one's directory links back
            return ProcDir(ino=_ino(at, name), mode=stat.S_IFDIR | (0o511 if name == "ns" else 0o555 if name == "task"
                                                                      else 0o500), nlink=2 + threads,
                           name=name, parent=d, kernel=k, pid=d.pid, kind=name, ctime=now, uid=owner[1],
                           gid=owner[4])
    elif d.kind == "task":
        tg = groups.get(d.pid)
        if tg is not None and name.isdigit() and any(task.tid == int(name) for task in tg.tasks):
            return ProcDir(ino=_ino(int(name), ""), mode=stat.S_IFDIR | 0o555, nlink=2, name=name, parent=d,
                           kernel=k, pid=d.pid, tid=int(name), kind="tid", ctime=now, mtime=now, atime=now,
                           uid=tg.cred.ids[1], gid=tg.cred.ids[4])
    elif d.kind == "net":
        if name in procnet.FILES:
            return ProcNode(ino=_ino(d.pid, "net" + name), mode=stat.S_IFREG | 0o444, kernel=k, pid=d.pid,
                            name="net/" + name, ctime=now)
    elif d.kind == "ns":
        if name in KINDS:
            return ProcNode(ino=_ino(d.pid, "ns" + name), mode=stat.S_IFLNK | 0o777, kernel=k, pid=d.pid,
                            name="ns/" + name, ctime=now)
    elif d.kind == "fd":
        tg = groups.get(d.pid)
        if tg is not None and name.isdigit() and int(name) in tg.fds.files:
            return ProcNode(ino=_ino(d.pid, "fd" + name), mode=stat.S_IFLNK | 0o700, kernel=k, pid=d.pid,
                            name="fd/" + name, ctime=now)
    elif d.kind == "fdinfo":
        tg = groups.get(d.pid)
        if tg is not None and name.isdigit() and int(name) in tg.fds.files:
            return ProcNode(ino=_ino(d.pid, "fdinfo" + name), mode=stat.S_IFREG | 0o444, kernel=k, pid=d.pid,
                            name="fdinfo/" + name, ctime=now)
    raise SyscallError(errno.ENOENT)


def list_dir(d: ProcDir) -> list[str]:
    groups = d.kernel.tasks.pidns.groups
    if d.kind == "top":
        pids = sorted(groups)
        return ["self", "thread-self", *TOP_FILES, *TOP_LINKS, "snapbox", "sys", *(str(p) for p in pids)]
    if d.kind == "sys":
        prefix = f"{d.sub}/" if d.sub else ""
        return sorted({key[len(prefix):].split("/")[0] for key in SYSCTL if key.startswith(prefix)})
    if d.kind == "snapbox":
        return ["restored", *(["checkpoint"] if d.kernel.snapshot is not None else [])]
    if d.pid not in groups:
        raise SyscallError(errno.ENOENT)  # a directory of a process gone (and reaped) since it was opened
    if d.kind in ("pid", "tid"):
        return [*PID_FILES, *PID_LINKS, "fd", "fdinfo", "net", "ns", *(["task"] if d.kind == "pid" else TASK_FILES)]
    if d.kind == "net":
        return list(procnet.FILES)
    if d.kind == "ns":
        return list(KINDS)
    tg = groups.get(d.pid)
    if d.kind == "task":
        return [str(task.tid) for task in tg.tasks] if tg is not None else []
    return [str(fd) for fd in sorted(tg.fds.files)] if tg is not None else []


def readlink(node: ProcNode) -> bytes:
    k = node.kernel
    if node.name == "self":
        current = k.current
        return str(current.tg.tgid if current is not None else 1).encode()
    if node.name == "thread-self":
        current = k.current
        return (f"{current.tg.tgid}/task/{current.tid}" if current is not None else "1/task/1").encode()
    if node.name in TOP_LINKS and not node.pid:
        return TOP_LINKS[node.name].encode()
    tg = k.tasks.pidns.groups.get(node.pid)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ENOENT)
    if node.name == "exe":
        return os.fsencode(tg.exe)
    if node.name == "cwd":
        return os.fsencode(tg.fs.cwd.path())
    if node.name == "root":
        return b"/"
    if node.name.startswith("ns/"):
        kind = node.name[3:]
        return f"{kind.removesuffix('_for_children')}:[{namespace_of(tg, kind)[1]}]".encode()
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
    if name in ("PtyMaster", "PtySlave", "NsFile", "SeccompListener"):
        return f.describe()
    if name == "HostFile":
        return f"host:[{('stdin', 'stdout', 'stderr')[f.stdio]}]"
    if isinstance(f, SocketFile):
        return f"socket:[{f.stat()['ino']}]"
    if isinstance(f, (ProcFile, ProcMemFile)):
        node = f.node
        where = f"/proc/{node.pid}/task/{node.tid}" if node.tid else f"/proc/{node.pid}" if node.pid else "/proc"
        return f"{where}/{node.name}"
    return f"anon_inode:[{ANON_NAMES.get(name, name)}]"


# What Linux calls its anonymous-inode files in /proc/PID/fd.
ANON_NAMES = {"EventFd": "eventfd", "SignalFd": "signalfd", "TimerFd": "timerfd", "EpollFile": "eventpoll",
              "PidFile": "pidfd", "InotifyFile": "inotify", "AioContext": "[aio]"}


def _content(node: ProcNode) -> bytes:
    k = node.kernel
    name = node.name
    if node.pid == 0:
        return _top(k, name).encode()
    tg = k.tasks.pidns.groups.get(node.pid)
    if tg is None:
        raise SyscallError(errno.ESRCH)
    if name in ("uid_map", "gid_map"):
        return show_map(tg.user_ns, _reader_ns(k), name[:3]).encode()
    if name.startswith("net/"):
        return procnet.content(k, name[4:]).encode()  # the one network namespace's
    if tg.exit_status is not None:
        return _zombie(k, tg, name).encode()
    if name == "cmdline":
        return b"".join(a + b"\0" for a in tg.argv)
    if name == "environ":  # what is there now of the strings execve put on its stack
        start, end = tg.mm.env_area
        try:
            return tg.mm.read(start, end - start)
        except SyscallError:
            return b""  # unmapped since
    if name == "auxv":
        return tg.mm.auxv
    if name == "mounts":
        return _mounts(k).encode()
    if name == "mountinfo":
        return _mountinfo(k).encode()
    if name == "comm":
        return _thread(tg, node.tid).comm.encode() + b"\n"
    if name == "stat":
        return _stat(k, tg).encode()
    if name == "status":
        return _status(k, tg, node.tid).encode()
    if name == "io":
        return _io(tg, node.tid).encode()
    if name == "children":
        return "".join(f"{c.tgid} " for c in tg.children if c.parent_tid == node.tid and not c.reaped).encode()
    if name == "statm":
        u = tg.mm.usage()
        fields = (u["VmSize"], u["VmRSS"], u["RssFile"] + u["RssShmem"], u["VmExe"], 0, u["VmData"] + u["VmStk"], 0)
        return (" ".join(str(f // PAGE_SIZE) for f in fields) + "\n").encode()
    if name == "maps":
        return "".join(_map_line(group[0], group[-1].end) for group in _mappings(tg.mm)).encode()
    if name == "smaps":
        return "".join(_map_line(g[0], g[-1].end) + _smaps(_group_usage(tg.mm, g), g[0], g[-1].end)
                       for g in _mappings(tg.mm)).encode()
    if name == "smaps_rollup":
        return _smaps_rollup(tg.mm).encode()
    if name == "oom_score":
        return f"{_oom_score(tg)}\n".encode()
    if name == "oom_score_adj":
        return f"{tg.oom_score_adj}\n".encode()
    if name == "coredump_filter":
        return f"{tg.mm.coredump_filter:08x}\n".encode()
    if name == "setgroups":
        return b"allow\n" if tg.user_ns is None or tg.user_ns.setgroups else b"deny\n"
    if name.startswith("fdinfo/"):
        return _fdinfo(tg, int(name[7:])).encode()
    raise SyscallError(errno.ENOENT)


def _fdinfo(tg, fd: int) -> str:
    """/proc/PID/fdinfo/N: the file's position and flags (O_CLOEXEC among them when the fd
    has it, in octal as Linux prints them) and its inode number (no mnt_id: the sandbox's
    mounts have no ids)."""
    f = tg.fds.files.get(fd)
    if f is None:
        raise SyscallError(errno.ENOENT)
    flags = f.flags | (O_CLOEXEC if fd in tg.fds.cloexec else 0)
    try:
        ino = f.stat()["ino"]
    except SyscallError:
        ino = 0
    return f"pos:\t{f.offset}\nflags:\t0{flags:o}\nino:\t{ino}\n"


def _zombie(k, tg, name: str) -> str:
    """A file of a process that has exited and not yet been waited for: it has no memory,
    files or program left, only its ids, name and signal state."""
    if name in ZOMBIE_GONE:
        raise SyscallError(errno.ESRCH)
    if name == "comm":
        return tg.name + "\n"
    if name == "stat":
        return _stat(k, tg)
    if name == "status":
        return _status(k, tg)
    if name == "io":
        return _io(tg, 0)
    if name == "statm":
        return "0 0 0 0 0 0 0\n"
    if name == "oom_score":
        return "0\n"
    if name == "oom_score_adj":
        return f"{tg.oom_score_adj}\n"
    return ""  # cmdline, maps, smaps


def _state(k, tg) -> str:
    from snapbox.kernel.task import Run

    if tg.exit_status is not None:
        return "Z"
    if tg.job_stopped:
        return "T"
    running = any(t.run is Run.RUNNING or t.queued or t is k.current for t in tg.tasks)
    return "R" if running else "S"  # (a process reading its own state is running)


def _stat(k, tg) -> str:
    from snapbox.kernel.task import RLIMIT_DEFAULTS

    zombie = tg.exit_status is not None
    comm = tg.name if zombie else tg.tasks[0].comm
    nice = 0 if zombie else tg.tasks[0].nice
    cpu_ns = tg.cpu_ns if zombie else sum(k.cpu_time_ns(t) for t in tg.tasks)
    ticks = cpu_ns * USER_HZ // 1_000_000_000
    vsize = 0 if zombie else tg.mm.size()
    rss = 0 if zombie else tg.mm.usage()["VmRSS"] // PAGE_SIZE
    ppid = tg.parent.tgid if tg.parent is not None else 0
    rsslim = tg.rlimits.get(RLIMIT_RSS, RLIMIT_DEFAULTS[RLIMIT_RSS])[0]  # getrlimit(RLIMIT_RSS)
    fields = [tg.tgid, f"({comm})", _state(k, tg), ppid, tg.pgid, tg.sid, 0, -1, 0x400000,
              0, 0, 0, 0, ticks, 0, tg.children_cpu_ns * USER_HZ // 1_000_000_000, 0, 20 + nice, nice,
              max(1, len(tg.tasks)), 0, 0, vsize, rss, rsslim]
    return " ".join(str(f) for f in fields) + " 0" * 27 + "\n"


def _status(k, tg, tid: int = 0) -> str:
    """/proc/PID/status, or of thread `tid` (/proc/TID/status, task/TID/status): its name,
    id and credentials, the rest its process's."""
    zombie = tg.exit_status is not None
    leader = None if zombie else tg.tasks[0]
    thread = _thread(tg, tid) if tid and not zombie else leader
    ppid = tg.parent.tgid if tg.parent is not None else 0
    states = {"R": "R (running)", "S": "S (sleeping)", "T": "T (stopped)", "Z": "Z (zombie)"}
    cred = thread.cred if thread is not None and thread.cred is not None else tg.cred
    c, reader = cred.caps, _reader_ns(k)
    creds = [shown(reader, x, "uid" if i < 3 else "gid") for i, x in enumerate(cred.ids)]
    out = [f"Name:\t{tg.name if zombie else thread.comm}\n"]
    if not zombie:
        out.append(f"Umask:\t{tg.fs.umask:04o}\n")
    pid = thread.tid if thread is not None else tg.tgid
    out.append(f"State:\t{states[_state(k, tg)]}\nTgid:\t{tg.tgid}\nNgid:\t0\nPid:\t{pid}\nPPid:\t{ppid}\n"
               f"TracerPid:\t0\nUid:\t{creds[0]}\t{creds[1]}\t{creds[2]}\t{shown(reader, cred.fsuid, 'uid')}\n"
               f"Gid:\t{creds[3]}\t{creds[4]}\t{creds[5]}\t{shown(reader, cred.fsgid, 'gid')}\n"
               f"FDSize:\t{0 if zombie else max(64, len(tg.fds.files))}\n"
               f"Groups:\t{' '.join(str(shown(reader, g, 'gid')) for g in cred.groups)} \n"
               f"NStgid:\t{tg.tgid}\nNSpid:\t{tg.tgid}\nNSpgid:\t{tg.pgid}\nNSsid:\t{tg.sid}\nKthread:\t0\n")
    if not zombie:
        u = tg.mm.usage()
        out.extend(f"{key}:\t{u.get(key, 0) // 1024:8d} kB\n" for key in (
            "VmPeak", "VmSize", "VmLck", "VmPin", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData",
            "VmStk", "VmExe", "VmLib"))
        out.append(f"VmPTE:\t{_page_tables(tg.mm) // 1024:8d} kB\nVmSwap:\t{0:8d} kB\nHugetlbPages:\t{0:8d} kB\n"
                   "CoreDumping:\t0\nTHP_enabled:\t1\n")
    ign = cgt = 0
    for sig, act in tg.sigactions.items():
        if act.handler == SIG_IGN:
            ign |= 1 << (sig - 1)
        elif act.handler != SIG_DFL:
            cgt |= 1 << (sig - 1)
    queued = sum(len(q) for t in tg.tasks for q in t.siginfo.values()) + sum(len(q) for q in tg.siginfo.values())
    pending_limit = tg.rlimits.get(RLIMIT_SIGPENDING, (SIGPENDING_DEFAULT,))[0]
    cpus = os.cpu_count() or 1
    allowed = (1 << cpus) - 1 if zombie else leader.affinity or (1 << cpus) - 1
    mode, filters = (0, None) if zombie else (leader.seccomp_mode, leader.seccomp)
    out.append(f"Threads:\t{max(1, len(tg.tasks))}\nSigQ:\t{queued}/{pending_limit}\n"
               f"SigPnd:\t{0 if zombie else leader.pending:016x}\nShdPnd:\t{tg.pending:016x}\n"
               f"SigBlk:\t{0 if zombie else leader.signal_mask:016x}\nSigIgn:\t{ign:016x}\nSigCgt:\t{cgt:016x}\n"
               f"CapInh:\t{c.inheritable:016x}\nCapPrm:\t{c.permitted:016x}\nCapEff:\t{c.effective:016x}\n"
               f"CapBnd:\t{c.bounding:016x}\nCapAmb:\t{c.ambient:016x}\n"
               f"NoNewPrivs:\t{tg.prctl.get('no_new_privs', 0)}\nSeccomp:\t{mode}\n"
               f"Seccomp_filters:\t{filters.count() if filters else 0}\n"
               f"Cpus_allowed:\t{allowed:x}\nCpus_allowed_list:\t{_cpu_list(allowed)}\n"
               "Mems_allowed_list:\t0\n")
    return "".join(out)


def _io(tg, tid: int) -> str:
    """/proc/PID/io (its threads', those ended too) or a thread's: the bytes and calls of
    the read and write families; none reach a block device here (read_bytes, write_bytes)."""
    if tid:
        counts = _thread(tg, tid).io
    else:
        counts = [sum(x) for x in zip(tg.io_done, *(t.io for t in tg.tasks))]
    rchar, wchar, syscr, syscw = counts
    return (f"rchar: {rchar}\nwchar: {wchar}\nsyscr: {syscr}\nsyscw: {syscw}\nread_bytes: 0\nwrite_bytes: 0\n"
            "cancelled_write_bytes: 0\n")


def _reader_ns(k):
    """The user namespace of the process reading /proc now (None: the sandbox's first)."""
    return k.current.cred.user_ns if k.current is not None else None


def _page_tables(mm) -> int:
    """The page tables an address space needs: a 4 KB table for each 2 MB its mappings reach."""
    tables = set()
    for v in mm.vmas:
        tables.update(range(v.start >> 21, ((v.end - 1) >> 21) + 1))
    return len(tables) * PAGE_SIZE


SMAPS_KEYS = ("Rss", "Pss", "Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty",
              "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
              "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss", "Locked")


def _vma_usage(mm, v) -> dict[str, int]:
    """A mapping's smaps figures in bytes: a file's cached pages are clean and shared by
    their users; every other resident page was written (private, or shared memory)."""
    rss = mm.resident(v)
    u = dict.fromkeys(SMAPS_KEYS, 0)
    u["Rss"] = u["Referenced"] = rss
    if v.pages is not None:
        users = max(1, v.pages.users)
        u["Pss"] = rss // users
        u["Shared_Clean" if users > 1 else "Private_Clean"] = rss
    elif v.shared:
        u["Pss"] = u["Pss_Dirty"] = u["Shared_Dirty"] = rss
    else:
        u["Pss"] = u["Pss_Dirty"] = u["Private_Dirty"] = u["Anonymous"] = rss
    if v.locked:
        u["Locked"] = u["Pss"]
    return u


def _smaps(u: dict[str, int], v, end: int | None = None) -> str:
    flags = [f for f, on in (("rd", v.prot & 1), ("wr", v.prot & 2), ("ex", v.prot & 4), ("sh", v.shared),
                             ("mr", True), ("mw", True), ("me", True), ("ms", v.shared),
                             ("gd", v.kind == "stack"), ("lo", v.locked),
                             ("ac", not v.shared and v.pages is None)) if on]
    lines = [f"{'Size:':<16}{((end or v.end) - v.start) // 1024:>8} kB\n", f"{'KernelPageSize:':<16}{4:>8} kB\n",
             f"{'MMUPageSize:':<16}{4:>8} kB\n"]
    lines += [f"{key + ':':<16}{u[key] // 1024:>8} kB\n" for key in SMAPS_KEYS]
    lines.append(f"{'THPeligible:':<16}{0:>8}\nVmFlags: {''.join(f + ' ' for f in flags)}\n")
    return "".join(lines)


def _smaps_rollup(mm) -> str:
    """The sum of every mapping's smaps figures, with Pss split by kind of memory."""
    total = dict.fromkeys(SMAPS_KEYS, 0)
    pss = {"Pss_Anon": 0, "Pss_File": 0, "Pss_Shmem": 0}
    for v in mm.vmas:
        u = _vma_usage(mm, v)
        for key in SMAPS_KEYS:
            total[key] += u[key]
        kind = "Pss_File" if v.kind.startswith("/") else "Pss_Shmem" if v.shared else "Pss_Anon"
        pss[kind] += u["Pss"]
    start, end = (mm.vmas[0].start, mm.vmas[-1].end) if mm.vmas else (0, 0)
    head = f"{start:08x}-{end:08x} ---p 00000000 00:00 0"
    keys = ("Rss", "Pss", "Pss_Dirty", *pss, *SMAPS_KEYS[3:])
    values = {**total, **pss}
    return f"{head:<73}[rollup]\n" + "".join(f"{key + ':':<16}{values[key] // 1024:>8} kB\n" for key in keys)


def _oom_score(tg) -> int:
    """Linux's proc_oom_score: the badness (resident and page-table pages, moved by
    oom_score_adj) scaled into 0..2000 of the host's memory and swap."""
    if tg.oom_score_adj == OOM_SCORE_ADJ_MIN:
        return 0
    mem = host_meminfo()
    total = max(1, (mem.get("MemTotal", 0) + mem.get("SwapTotal", 0)) // PAGE_SIZE)
    badness = (tg.mm.usage()["VmRSS"] + _page_tables(tg.mm)) // PAGE_SIZE + tg.oom_score_adj * total // 1000
    return max(0, (1000 + badness * 1000 // total) * 2 // 3)


def _write_oom_score_adj(t, node: ProcNode, data: bytes) -> int:
    """oom_score_adj: -1000..1000; below the lowest a privileged writer set, only with
    CAP_SYS_RESOURCE (proc(5))."""
    tg = node.kernel.tasks.pidns.groups.get(node.pid)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    try:
        value = int(data.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise SyscallError(errno.EINVAL) from None
    if not OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
        raise SyscallError(errno.EINVAL)
    privileged = capable(t.tg, CAP_SYS_RESOURCE)
    if value < tg.oom_score_adj_min and not privileged:
        raise SyscallError(errno.EACCES)
    tg.oom_score_adj = value
    if privileged:
        tg.oom_score_adj_min = value
    return len(data)


def _write_coredump_filter(node: ProcNode, data: bytes) -> int:
    """coredump_filter: a number (decimal, 0x hex or 0 octal, as kstrtouint's base 0) whose
    low 9 bits are kept."""
    tg = node.kernel.tasks.pidns.groups.get(node.pid)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    text = data.split(b"\0")[0].decode("latin-1").removesuffix("\n").removeprefix("+")
    base = 16 if text[:2].lower() == "0x" else 8 if text[:1] == "0" and len(text) > 1 else 10
    digits = text[2:] if base == 16 else text
    if not digits or not all(c in "0123456789abcdefABCDEF"[:base + (6 if base == 16 else 0)] for c in digits):
        raise SyscallError(errno.EINVAL)
    value = int(digits, base)
    if not 0 <= value <= 0xFFFFFFFF:
        raise SyscallError(errno.ERANGE)
    tg.mm.coredump_filter = value & 0x1FF
    return len(data)


def _thread(tg, tid: int):
    """The thread `tid` of `tg` (0: its leader); ESRCH once it is gone."""
    for task in tg.tasks:
        if task.tid == tid or not tid:
            return task
    raise SyscallError(errno.ESRCH)


def _write_comm(t, node: ProcNode, data: bytes) -> int:
    """A thread's name, as prctl(PR_SET_NAME) sets it: by a thread of its own process only
    (EINVAL from another, as Linux's comm_write), at most 15 bytes."""
    tg = node.kernel.tasks.pidns.groups.get(node.pid)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    if tg is not t.tg:
        raise SyscallError(errno.EINVAL)
    _thread(tg, node.tid).comm = data[:15].split(b"\0")[0].decode(errors="replace")
    return len(data)


def _mappings(mm) -> list[list]:
    """The VMAs grouped as Linux would show them, one line of maps each: neighbours alike
    in protection, kind and sharing, and for a file at following offsets of it (the
    sentry may keep a run of a file's pages in several VMAs, where they lie apart in the
    MemoryFile)."""
    groups: list[list] = []
    for v in mm.vmas:
        last = groups[-1][-1] if groups else None
        if last is not None and last.end == v.start and (last.prot, last.kind, last.shared) == \
                (v.prot, v.kind, v.shared) and last.pages is v.pages and \
                (not v.kind.startswith("/") or v.file_offset == last.file_offset + (last.end - last.start)):
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def _group_usage(mm, group: list) -> dict[str, int]:
    total = dict.fromkeys(SMAPS_KEYS, 0)
    for v in group:
        for key, value in _vma_usage(mm, v).items():
            total[key] += value
    return total


def _map_line(v, end: int | None = None) -> str:
    """The maps line of `v` (to `end`, for a group of VMAs that starts with it)."""
    prot = v.prot
    # The vDSO's data page is shared between processes here, a private special mapping on Linux.
    perms = ("r" if prot & 1 else "-") + ("w" if prot & 2 else "-") + ("x" if prot & 4 else "-") + \
        ("s" if v.shared and v.kind != VVAR else "p")
    path = {"stack": "[stack]", "heap": "[heap]", "anon": ""}.get(v.kind, v.kind)
    offset = v.file_offset if v.kind.startswith("/") else 0
    line = f"{v.start:08x}-{end or v.end:08x} {perms} {offset:08x} 00:00 0 "
    return f"{line:<73}{path}\n" if path else line + "\n"  # (show_map_vma pads to 73 only for a name)


def _cpuinfo(fs, cpus: int) -> str:
    """/proc/cpuinfo as x86's show_cpuinfo writes it: the CPU as CPUID describes it to the
    sandbox (vendor, family, model, flags) and as the host it was made on did (the rest),
    `cpus` of it, one package of that many cores."""
    info = fs.info
    out = []
    for cpu in range(cpus):
        fields = [("processor", cpu), ("vendor_id", fs.vendor), ("cpu family", fs.family), ("model", fs.model),
                  ("model name", info.get("model name", "")), ("stepping", info.get("stepping", "unknown")),
                  *[(key, info[key]) for key in ("microcode", "cpu MHz", "cache size") if key in info],
                  ("physical id", 0), ("siblings", cpus), ("core id", cpu), ("cpu cores", cpus), ("apicid", cpu),
                  ("initial apicid", cpu),
                  *[(key, info.get(key, "yes")) for key in ("fpu", "fpu_exception")],
                  ("cpuid level", info.get("cpuid level", 0)), ("wp", info.get("wp", "yes")),
                  ("flags", " ".join(sorted(fs.features))),
                  *[(key, info[key]) for key in ("bugs", "bogomips", "TLB size") if key in info],
                  ("clflush size", info.get("clflush size", 64)), ("cache_alignment", info.get("cache_alignment", 64)),
                  ("address sizes", info.get("address sizes", "")), ("power management", "")]
        out.append("".join(f"{key}{_tabs(key)}:{f' {value}' if value != '' else ''}\n" for key, value in fields) + "\n")
    return "".join(out)


def _tabs(key: str) -> str:
    """The tabs after a /proc/cpuinfo key that bring its colon to column 16 (none after one that long)."""
    return "" if len(key) >= 16 else "\t" if len(key) >= 8 else "\t\t"


def _mounts(k) -> str:
    return ("rootfs / overlay ro,relatime 0 0\nproc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
            "devtmpfs /dev devtmpfs rw,nosuid 0 0\n" + "".join(m.line() for m in k.fs.mounts))


def _mountinfo(k) -> str:
    """/proc/PID/mountinfo: /proc/mounts's mounts with an id each, their parent's (the
    mount their mount point lies in; the root's own), a device number, the root of the
    mount within its filesystem ("/": bind mounts show theirs as "/" too) and the rest."""
    out, points = [], []
    for n, line in enumerate(_mounts(k).splitlines(), 1):
        source, point, fstype, opts = line.split()[:4]
        parents = [(len(p), i) for p, i in points if point == p or point.startswith(p.rstrip("/") + "/")]
        parent = max(parents)[1] if parents else n
        points.append((point, n))
        dev = {"overlay": OVERLAY_DEV, "proc": PROC_DEV}.get(fstype, 0x100 + n)
        mount_opts = ",".join(o for o in opts.split(",") if o in ("ro", "rw", "nosuid", "nodev", "noexec", "relatime",
                                                                   "noatime", "nodiratime"))
        out.append(f"{n} {parent} 0:{dev} / {point} {mount_opts} - {fstype} {source} {opts.split(',')[0]}\n")
    return "".join(out)


def _top(k, name: str) -> str:
    if name.startswith("sys/"):
        return _sysctl(k, name[4:])
    if name == "snapbox/restored":
        return f"{k.restores}\n"
    if name == "snapbox/checkpoint":
        return ""
    if name == "stat":
        return _proc_stat(k)
    if name == "uptime":
        up = k.timekeeper.monotonic_ns() / 1e9
        return f"{up:.2f} {up:.2f}\n"
    if name == "loadavg":
        running = len(k.tasks.pidns.tasks)
        return f"0.00 0.00 0.00 1/{running} {k.tasks.pidns.next_id - 1}\n"
    if name == "cmdline":
        return "\n"  # the sentry was booted with no kernel command line
    if name == "devices":  # the character devices of the sandbox's /dev, by major (and none of blocks)
        return "Character devices:\n  1 mem\n  4 tty\n  5 /dev/tty\n  5 /dev/ptmx\n136 pts\n\nBlock devices:\n"
    if name == "filesystems":  # what mount(2) makes here
        return "".join(f"nodev\t{kind}\n" for kind in MOUNTABLE)
    if name == "version":
        return f"Linux version {UTS_RELEASE} (snapbox) {UTS_VERSION}\n"
    if name == "meminfo":
        mem = host_meminfo()
        keys = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree")
        return "".join(f"{key + ':':<16}{mem.get(key, 0) // 1024:8d} kB\n" for key in keys)
    if name == "cpuinfo":
        return _cpuinfo(k.features, os.cpu_count() or 1)
    raise SyscallError(errno.ENOENT)


# /proc/sys: the sysctls a sandbox has, each as the sandbox keeps or enforces it (path ->
# mode). The host name and domain name are the caller's UTS namespace's, and writable.
SYSCTL = {
    "kernel/hostname": 0o644, "kernel/domainname": 0o644, "kernel/ostype": 0o444, "kernel/osrelease": 0o444,
    "kernel/version": 0o444, "kernel/ngroups_max": 0o444, "kernel/cap_last_cap": 0o444,
    "kernel/random/uuid": 0o444, "kernel/msgmax": 0o444, "kernel/msgmnb": 0o444, "kernel/msgmni": 0o444,
    "kernel/sem": 0o444, "kernel/shmmax": 0o444, "kernel/shmall": 0o444, "kernel/shmmni": 0o444,
    "vm/mmap_min_addr": 0o444, "fs/nr_open": 0o444, "net/core/somaxconn": 0o444, "net/core/wmem_max": 0o444,
    "net/core/rmem_max": 0o444, "kernel/overflowuid": 0o444, "kernel/overflowgid": 0o444,
    "net/ipv4/ip_local_port_range": 0o644, "kernel/randomize_va_space": 0o444, "vm/max_map_count": 0o444,
    "net/ipv6/auto_flowlabels": 0o444, "net/ipv6/bindv6only": 0o444, "net/ipv6/ip6frag_time": 0o444,
    "net/ipv6/ip_nonlocal_bind": 0o444, "net/ipv4/tcp_sack": 0o644, "net/ipv4/tcp_recovery": 0o644,
    "net/ipv4/ip_forward": 0o644, "vm/overcommit_memory": 0o444, "kernel/keys/maxkeys": 0o644,
    "kernel/keys/root_maxkeys": 0o644,
}
# Those of them a sandbox keeps as written (Kernel.net_sysctls), with their defaults: the
# sentry's loopback neither forwards nor loses segments, so none changes what it does.
NET_SETTINGS = {"net/ipv4/tcp_sack": 1, "net/ipv4/tcp_recovery": 1, "net/ipv4/ip_forward": 0}


def _integer(data: bytes) -> int:
    """The one integer of a sysctl write (proc_dointvec: blanks around it, a sign)."""
    try:
        value = int(data.split(b"\0")[0].strip() or b"x")
    except ValueError:
        raise SyscallError(errno.EINVAL) from None
    if not -(1 << 31) <= value < 1 << 31:
        raise SyscallError(errno.EINVAL)
    return value


def _write_setting(t, path: str, data: bytes) -> int:
    """A write to a kept net setting."""
    t.kernel.net_sysctls[path] = _integer(data)
    return len(data)


def _write_port_range(t, data: bytes) -> int:
    """net.ipv4.ip_local_port_range: two ports, the first not above the second (as
    ipv4_local_port_range checks them); the sandbox's binds to port 0 take from it (with a
    network, a host socket's port is its namespace's choice)."""
    try:
        low, high = (int(x) for x in data.split(b"\0")[0].split())
    except ValueError:
        raise SyscallError(errno.EINVAL) from None
    if not 1 <= low <= high <= 65535:
        raise SyscallError(errno.EINVAL)
    t.kernel.local_ports = (low, high)
    return len(data)


def _sysctl(k, path: str) -> str:
    names = uts(k.current) if k.current is not None else k
    values = {
        "kernel/hostname": names.hostname, "kernel/domainname": names.domainname, "kernel/ostype": "Linux",
        "kernel/osrelease": UTS_RELEASE, "kernel/version": UTS_VERSION, "kernel/ngroups_max": NGROUPS_MAX,
        "kernel/cap_last_cap": CAP_LAST_CAP, "kernel/random/uuid": uuid.uuid4(), "kernel/msgmax": MSGMAX,
        "kernel/msgmnb": MSGMNB, "kernel/msgmni": MSGMNI, "kernel/sem": f"{SEMMSL}\t{SEMMNS}\t{SEMOPM}\t{SEMMNI}",
        "kernel/shmmax": SHMMAX, "kernel/shmall": SHMALL, "kernel/shmmni": SHMMNI, "vm/mmap_min_addr": MMAP_MIN_ADDR,
        "fs/nr_open": NR_OPEN, "net/core/somaxconn": SOMAXCONN, "net/core/wmem_max": buffer_max(SO_SNDBUF),
        "net/core/rmem_max": buffer_max(SO_RCVBUF), "kernel/overflowuid": NOBODY, "kernel/overflowgid": NOBODY,
        "net/ipv4/ip_local_port_range": "{}\t{}".format(*k.local_ports),
        "kernel/randomize_va_space": 0,  # snapbox places memory the same way each run
        "vm/max_map_count": MAX_MAP_COUNT,
        "net/ipv6/auto_flowlabels": 1, "net/ipv6/bindv6only": 0, "net/ipv6/ip6frag_time": 60,
        "net/ipv6/ip_nonlocal_bind": 0, "vm/overcommit_memory": 0,  # its heuristic: MemoryManager._alloc
        "kernel/keys/maxkeys": k.keys.maxkeys, "kernel/keys/root_maxkeys": k.keys.root_maxkeys,
        **{key: k.net_sysctls.get(key, default) for key, default in NET_SETTINGS.items()},
    }
    return f"{values[path]}\n"


def _cpu_list(mask: int) -> str:
    """A CPU mask as Linux lists it: 0-3,6."""
    cpus = [i for i in range(mask.bit_length()) if mask >> i & 1]
    runs, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            runs.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(runs)


def _proc_stat(k) -> str:
    """/proc/stat of the sandbox: the CPU time its processes used (user time; the rest of
    the CPUs' time since it started is idle), no interrupts (it has no devices), its
    context switches (the times its tasks blocked), its boot time, processes and states."""
    from snapbox.kernel.task import Run

    cpus = os.cpu_count() or 1
    groups = k.tasks.pidns.groups.values()
    used = sum(tg.cpu_ns if tg.exit_status is not None else sum(k.cpu_time_ns(t) for t in tg.tasks)
               for tg in groups) * USER_HZ // 1_000_000_000
    up = k.timekeeper.monotonic_ns() * USER_HZ // 1_000_000_000
    idle = max(0, up * cpus - used)
    lines = [f"cpu  {used} 0 0 {idle} 0 0 0 0 0 0\n"]
    lines += [f"cpu{n} {used // cpus} 0 0 {idle // cpus} 0 0 0 0 0 0\n" for n in range(cpus)]
    tasks = [t for tg in groups for t in tg.tasks]
    boot = (k.timekeeper.realtime_ns() - k.timekeeper.monotonic_ns()) // 1_000_000_000
    lines.append(f"intr 0\nctxt {k.switches}\nbtime {boot}\nprocesses {k.tasks.pidns.next_id - 1}\n"
                 f"procs_running {max(1, sum(t.run is Run.RUNNING for t in tasks))}\n"
                 f"procs_blocked 0\nsoftirq 0 0 0 0 0 0 0 0 0 0 0\n")
    return "".join(lines)
