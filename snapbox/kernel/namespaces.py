"""The namespaces a process can have of its own (unshare(2), and clone(2)'s CLONE_NEW*
flags): user (snapbox.kernel.userns), UTS (hostname and domain name) and IPC (System V
objects and POSIX message queues). A process whose namespace is None shares the sandbox's
first one, whose names and objects the Kernel holds. The others (mount, pid, network,
cgroup, time) are refused with EINVAL, as by a Linux built without them, and logged.

A new user namespace is made first, so that the caller's capabilities in it (all of them)
let it make the others in the same call; each is owned by the user namespace it was made
in, where changing it (sethostname(2), setns(2)) takes CAP_SYS_ADMIN.

Namespaces belong to processes here, where Linux gives them to threads: a thread
(CLONE_THREAD) cannot be made with new ones, and only a process of one thread may
unshare what its threads would otherwise share (its fd table, cwd and root).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from snapbox.kernel.creds import CAP_SYS_ADMIN, ns_capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.ipc import IpcNamespace
from snapbox.kernel.userns import enters, make
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

log = logging.getLogger("snapbox.kernel")

CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP = 0x80, 0x20000, 0x02000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = \
    0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000
UNSUPPORTED = CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWPID | CLONE_NEWNET
ALL = UNSUPPORTED | CLONE_NEWUSER | CLONE_NEWUTS | CLONE_NEWIPC
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_THREAD, CLONE_SYSVSEM = 0x10000, 0x40000
NAMES = {CLONE_NEWTIME: "time", CLONE_NEWNS: "mount", CLONE_NEWCGROUP: "cgroup", CLONE_NEWPID: "pid",
         CLONE_NEWNET: "network"}
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
    renames: list = field(default_factory=lambda: [0, 0])  # changes of each name (rename)
    renamed: WaitQueue = field(default_factory=WaitQueue)  # pollers of /proc/sys/kernel/{hostname,domainname}
    inum: int = 0  # its inode number in /proc/PID/ns
    owner: object = None  # the UserNamespace it was made in (None: the sandbox's first)


def namespace_of(tg, kind: str) -> tuple[object, int]:
    """A process's namespace of `kind` (one of KINDS) and its inode number; None for the
    sandbox's first one."""
    kind = kind.removesuffix("_for_children")
    ns = {"uts": tg.uts, "ipc": tg.ipc, "user": tg.user_ns}.get(kind)
    return ns, ns.inum if ns is not None else FIRST_INUM[kind]


def uts(t) -> UtsNamespace:
    """The UTS namespace of `t`'s process (the Kernel, for the first one: same fields)."""
    return t.tg.uts if t.tg.uts is not None else t.kernel


UTS_NAMES = ("hostname", "domainname")


def rename(names, which: str, value: str) -> None:
    """Set `names`'s (a UtsNamespace's, or the Kernel's) host or domain name (`which`), and
    tell who polls its /proc/sys/kernel file (each such file reports the change once)."""
    setattr(names, which, value)
    names.renames[UTS_NAMES.index(which)] += 1
    names.renamed.notify()


def ipc(t) -> IpcNamespace:
    return t.tg.ipc if t.tg.ipc is not None else t.kernel.ipc


def owner(ns) -> object:
    """The user namespace owning a UTS or IPC namespace (the Kernel's or None: the first)."""
    return getattr(ns, "owner", None)


def made(t, flags: int) -> tuple:
    """The (user, UTS, IPC) namespaces of a process made, or unshared, by `t` with `flags`
    (the user namespace only if a new one, else None); EPERM without CAP_SYS_ADMIN in the
    user namespace the others are made in, EINVAL for a kind snapbox does not have."""
    new_user = None
    if flags & CLONE_NEWUSER:
        t.kernel.ns_inum += 1
        new_user = make(t.cred, t.fs.root is not t.kernel.fs.root, t.kernel.ns_inum)
    user = new_user if new_user is not None else t.cred.user_ns
    if flags & (UNSUPPORTED | CLONE_NEWUTS | CLONE_NEWIPC) and not ns_capable(t.cred, user, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    missing = flags & UNSUPPORTED
    if missing:
        names = [name for bit, name in NAMES.items() if missing & bit]
        _refuse(f"new {', '.join(names)} namespace")
    new_uts, new_ipc = t.tg.uts, t.tg.ipc
    if flags & CLONE_NEWUTS:
        now = uts(t)
        t.kernel.ns_inum += 1
        new_uts = UtsNamespace(hostname=now.hostname, domainname=now.domainname, inum=t.kernel.ns_inum, owner=user)
    if flags & CLONE_NEWIPC:
        t.kernel.ns_inum += 1
        new_ipc = IpcNamespace(inum=t.kernel.ns_inum, owner=user)
    return new_user, new_uts, new_ipc


def for_clone(t, flags: int) -> tuple:
    """made() for clone(2), whose new process cannot both share the caller's semaphore
    undo list (CLONE_SYSVSEM) and have IPC objects of its own, nor share its fs context
    (CLONE_FS) and have a user namespace of its own; and a thread none."""
    if flags & CLONE_NEWUSER and flags & (CLONE_THREAD | CLONE_FS):
        raise SyscallError(errno.EINVAL)
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
    tg = t.tg
    alone = len(tg.tasks) == 1
    if flags & (CLONE_THREAD | CLONE_SIGHAND | CLONE_VM) and not alone:
        raise SyscallError(errno.EINVAL)  # a thread cannot leave its process
    if (flags & (CLONE_SIGHAND | CLONE_VM) and t.kernel.shared(tg, "sigactions")
            or flags & CLONE_VM and t.kernel.shared(tg, "mm")):
        raise SyscallError(errno.EINVAL)  # nor a process the handlers or memory it shares
    new_user, new_uts, new_ipc = made(t, flags)
    if flags & (CLONE_FILES | CLONE_FS) and not alone:
        _refuse("a thread's own fd table or cwd (unshare CLONE_FILES or CLONE_FS)")
    if flags & CLONE_FILES and t.kernel.shared(tg, "fds"):
        tg.fds = tg.fds.copy()
    if flags & CLONE_FS and t.kernel.shared(tg, "fs"):
        tg.fs = tg.fs.copy()
    if flags & CLONE_SYSVSEM:
        ipc(t).exited(t.tg.tgid)  # its semaphore adjustments are applied, as at exit
    if new_user is not None:
        enters(t.cred, new_user)
    tg.uts, tg.ipc = new_uts, new_ipc


def setns(t, f, nstype: int) -> None:
    """setns(2) with `f`, an open /proc/PID/ns file (procfs.NsFile): join its namespace,
    with CAP_SYS_ADMIN in the user namespace owning it (a user namespace: in it) and in
    the caller's own. Of the kinds snapbox has one of only, that one is joined already."""
    kind = f.node.kind.removesuffix("_for_children")
    if nstype and nstype != FLAGS[kind]:
        raise SyscallError(errno.EINVAL)
    ns = f.node.ns
    if kind == "user":
        if ns is t.cred.user_ns or len(t.tg.tasks) > 1:
            raise SyscallError(errno.EINVAL)  # its own already; a thread cannot leave its process
        if not ns_capable(t.cred, ns, CAP_SYS_ADMIN):
            raise SyscallError(errno.EPERM)
        enters(t.cred, ns)
        return
    if not ns_capable(t.cred, owner(ns), CAP_SYS_ADMIN) or not ns_capable(t.cred, t.cred.user_ns, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    if kind == "uts":
        t.tg.uts = ns
    elif kind == "ipc" and ns is not t.tg.ipc:
        ipc(t).exited(t.tg.tgid)  # its semaphore adjustments are applied, as on leaving
        t.tg.ipc = ns


def _refuse(what: str) -> None:
    if what not in _logged:
        _logged.add(what)
        log.warning("%s: not supported (EINVAL)", what)
    raise SyscallError(errno.EINVAL, f"{what}: not supported")