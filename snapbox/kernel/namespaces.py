"""The namespaces a process can have of its own (unshare(2), and clone(2)'s CLONE_NEW*
flags): UTS (hostname and domain name) and IPC (System V objects and POSIX message
queues). A process whose namespace is None shares the sandbox's first one, whose
names and objects the Kernel holds. The others (mount, pid, network, user, cgroup,
time) are refused with EINVAL, as by a Linux built without them, and logged.

Namespaces belong to processes here, where Linux gives them to threads: a thread
(CLONE_THREAD) cannot be made with new ones, and only a process of one thread may
unshare what its threads would otherwise share (its fd table, cwd and root).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from snapbox.kernel.creds import CAP_SYS_ADMIN, capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.ipc import IpcNamespace
from snapbox.state import savable

log = logging.getLogger("snapbox.kernel")

CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP = 0x80, 0x20000, 0x02000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = \
    0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000
UNSUPPORTED = CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
ALL = UNSUPPORTED | CLONE_NEWUTS | CLONE_NEWIPC
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM = 0x10000, 0x40000
NAMES = {CLONE_NEWTIME: "time", CLONE_NEWNS: "mount", CLONE_NEWCGROUP: "cgroup", CLONE_NEWUSER: "user",
         CLONE_NEWPID: "pid", CLONE_NEWNET: "network"}
_logged: set = set()


# /proc/PID/ns's entries, and the inode numbers of the sandbox's first namespaces (Linux's
# PROC_*_INIT_INO for those it numbers so); namespaces made later are numbered from
# Kernel.ns_inum.
KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "time_for_children", "user", "uts")
FIRST_INUM = {"ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC, "cgroup": 0xEFFFFFFB,
              "time": 0xEFFFFFFA, "mnt": 0xF0000000, "net": 0xF0000008}
FLAGS = {"cgroup": CLONE_NEWCGROUP, "ipc": CLONE_NEWIPC, "mnt": CLONE_NEWNS, "net": CLONE_NEWNET,
         "pid": CLONE_NEWPID, "time": CLONE_NEWTIME, "user": CLONE_NEWUSER, "uts": CLONE_NEWUTS}


@savable
@dataclass(eq=False)
class UtsNamespace:
    """A UTS namespace of a process's own: what uname(2) reports, sethostname changes."""

    hostname: str = ""
    domainname: str = ""
    inum: int = 0  # its inode number in /proc/PID/ns


def namespace_of(tg, kind: str) -> tuple[object, int]:
    """A process's namespace of `kind` (one of KINDS) and its inode number; None for the
    sandbox's first one."""
    kind = kind.removesuffix("_for_children")
    ns = tg.uts if kind == "uts" else tg.ipc if kind == "ipc" else None
    return ns, ns.inum if ns is not None else FIRST_INUM[kind]


def uts(t) -> UtsNamespace:
    """The UTS namespace of `t`'s process (the Kernel, for the first one: same fields)."""
    return t.tg.uts if t.tg.uts is not None else t.kernel


def ipc(t) -> IpcNamespace:
    return t.tg.ipc if t.tg.ipc is not None else t.kernel.ipc


def made(t, flags: int) -> tuple:
    """The (UTS, IPC) namespaces of a process made, or unshared, by `t` with `flags`;
    EPERM without CAP_SYS_ADMIN, EINVAL for a kind snapbox does not have."""
    if flags & (UNSUPPORTED | CLONE_NEWUTS | CLONE_NEWIPC) & ~CLONE_NEWUSER and not capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    missing = flags & UNSUPPORTED
    if missing:
        names = [name for bit, name in NAMES.items() if missing & bit]
        _refuse(f"new {', '.join(names)} namespace")
    new_uts, new_ipc = t.tg.uts, t.tg.ipc
    if flags & CLONE_NEWUTS:
        now = uts(t)
        t.kernel.ns_inum += 1
        new_uts = UtsNamespace(hostname=now.hostname, domainname=now.domainname, inum=t.kernel.ns_inum)
    if flags & CLONE_NEWIPC:
        t.kernel.ns_inum += 1
        new_ipc = IpcNamespace(inum=t.kernel.ns_inum)
    return new_uts, new_ipc


def for_clone(t, flags: int) -> tuple:
    """made() for clone(2), whose new process cannot both share the caller's semaphore
    undo list (CLONE_SYSVSEM) and have IPC objects of its own; and a thread none."""
    if flags & ALL and flags & CLONE_THREAD:
        made(t, flags)
        _refuse("a thread with namespaces of its own")
    if flags & CLONE_NEWIPC and flags & CLONE_SYSVSEM:
        raise SyscallError(errno.EINVAL)
    return made(t, flags)


def unshare(t, flags: int) -> None:
    """unshare(2)."""
    if flags & ~(CLONE_THREAD | CLONE_FS | CLONE_SIGHAND | CLONE_VM | CLONE_FILES | CLONE_SYSVSEM | ALL):
        raise SyscallError(errno.EINVAL)
    # What each implies, as Linux's check_unshare_flags has it.
    if flags & CLONE_NEWUSER:
        flags |= CLONE_THREAD | CLONE_FS
    if flags & CLONE_VM:
        flags |= CLONE_SIGHAND
    if flags & CLONE_SIGHAND:
        flags |= CLONE_THREAD
    if flags & CLONE_NEWNS:
        flags |= CLONE_FS
    if flags & CLONE_NEWIPC:
        flags |= CLONE_SYSVSEM
    alone = len(t.tg.tasks) == 1
    if flags & (CLONE_THREAD | CLONE_SIGHAND | CLONE_VM) and not alone:
        raise SyscallError(errno.EINVAL)  # a thread cannot leave its process
    new_uts, new_ipc = made(t, flags)
    if flags & (CLONE_FILES | CLONE_FS) and not alone:
        _refuse("a thread's own fd table or cwd (unshare CLONE_FILES or CLONE_FS)")
    if flags & CLONE_SYSVSEM:
        ipc(t).exited(t.tg.tgid)  # its semaphore adjustments are applied, as at exit
    t.tg.uts, t.tg.ipc = new_uts, new_ipc


def setns(t, f, nstype: int) -> None:
    """setns(2) with `f`, an open /proc/PID/ns file (procfs.NsFile): join its namespace.
    Of the kinds snapbox has one of only, that one is joined already."""
    kind = f.node.kind.removesuffix("_for_children")
    if nstype and nstype != FLAGS[kind]:
        raise SyscallError(errno.EINVAL)
    if kind == "user":
        raise SyscallError(errno.EINVAL)  # a process's own user namespace, as Linux answers
    if not capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    if kind == "uts":
        t.tg.uts = f.node.ns
    elif kind == "ipc" and f.node.ns is not t.tg.ipc:
        ipc(t).exited(t.tg.tgid)  # its semaphore adjustments are applied, as on leaving
        t.tg.ipc = f.node.ns


def _refuse(what: str) -> None:
    if what not in _logged:
        _logged.add(what)
        log.warning("%s: not supported (EINVAL)", what)
    raise SyscallError(errno.EINVAL, f"{what}: not supported")