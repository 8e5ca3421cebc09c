"""Credentials beyond the ids: capability sets, the filesystem ids, and the permission
checks they govern (capabilities(7), credentials(7), path_resolution(7)).

Credentials are per thread, as in Linux: each Task has a Creds (its real, effective and
saved uid and gid, fsuid and fsgid, supplementary groups and capability sets), which a
set*id(2), capset(2) or prctl(2) of that thread changes and no other thread sees (the C
libraries make set*id(2) apply to every thread by calling it in each; capset(2) stays the
caller's). A ThreadGroup's `creds`, `groups`, `fsuid`, `fsgid` and `caps` are those of the
thread in a syscall when it is one of the group's, else its leader's (what /proc and
another process see of it).

Root is not special to the checks: what lets a process past a file's permission bits is
CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH in its effective set, and root has them only as
long as it does not drop them or change to another uid.

Ids are kernel ids, and capabilities are held in a user namespace (snapbox.kernel.userns):
`capable` asks for one in the sandbox's first namespace (what governs the sandbox's own
objects: its network, clock, devices, mounts); the checks of a process's files, ids and
namespaces ask in its own, or in the one owning the object.
"""

from __future__ import annotations

import errno
import stat as st
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError
from snapbox.state import savable

# include/uapi/linux/capability.h
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
(CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID,
 CAP_SETPCAP, CAP_LINUX_IMMUTABLE) = range(10)
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK, CAP_IPC_OWNER, CAP_SYS_CHROOT, CAP_SYS_PTRACE = 10, 12, 13, 14, 15, 18, 19
CAP_SYS_ADMIN, CAP_SYS_NICE, CAP_SYS_RESOURCE, CAP_SYS_TIME, CAP_MKNOD = 21, 23, 24, 25, 27
CAP_MAC_OVERRIDE = 32
CAP_LAST_CAP = len(CAP_NAMES) - 1
ALL_CAPS = (1 << (CAP_LAST_CAP + 1)) - 1
# The capabilities a change of fsuid between 0 and another id takes from, or gives back to,
# the effective set (capabilities(7), "Effect of user ID changes on capabilities").
FS_CAPS = sum(1 << c for c in (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID,
                               CAP_LINUX_IMMUTABLE, CAP_MAC_OVERRIDE, CAP_MKNOD))

# securebits (include/uapi/linux/securebits.h): each flag, then its lock one bit up
SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS, SECBIT_NO_CAP_AMBIENT_RAISE = 1, 4, 16, 64
SECURE_ALL_BITS = 0x55
SECURE_ALL_LOCKS = SECURE_ALL_BITS << 1

MAY_EXEC, MAY_WRITE, MAY_READ = 1, 2, 4
NGROUPS_MAX = 65536  # the most supplementary groups a process may have


def bit(cap: int) -> int:
    return 1 << cap


# What no process of a sandbox is given, whatever its bundle asks: CAP_NET_RAW, as runsc
# withholds it (unless --net-raw). A sandbox has no raw or packet sockets, and a program
# that probes for them by making one is told EPERM, as in such a container, so that it
# goes on without them.
WITHHELD_CAPS = bit(CAP_NET_RAW)


# User namespaces (snapbox.kernel.userns): credentials hold kernel ids, the ids of the
# sandbox's first namespace (None), which maps every id to itself.
OVERFLOW_ID = 65534  # /proc/sys/kernel/overflowuid and overflowgid: an id with no name here
U32 = 0xFFFFFFFF
FIRST_MAP = ((0, 0, U32),)  # the first namespace's uid_map and gid_map


@savable
@dataclass(eq=False)
class UserNamespace:
    """A user namespace made in the sandbox."""

    parent: UserNamespace | None = None  # None: the sandbox's first
    owner: int = 0  # the kernel euid and egid of the process that made it
    group: int = 0
    level: int = 1  # how many namespaces down from the first
    inum: int = 0  # its inode number in /proc/PID/ns
    # Its maps, written once each: [first id here, first kernel id, count] per extent.
    uid_map: list = field(default_factory=list)
    gid_map: list = field(default_factory=list)
    setgroups: bool = True  # /proc/PID/setgroups: "allow" (once "deny", for good)


def level(ns: UserNamespace | None) -> int:
    return 0 if ns is None else ns.level


def extents(ns: UserNamespace | None, kind: str) -> list | tuple:
    """`kind` ("uid" or "gid") map of `ns`."""
    return FIRST_MAP if ns is None else getattr(ns, f"{kind}_map")


def to_kernel(ns: UserNamespace | None, ident: int, kind: str) -> int | None:
    """make_kuid(): the kernel id `ident` of `ns` is, or None if it has none."""
    ident &= U32
    if ns is None:
        return None if ident == U32 else ident
    for first, lower, count in ns.uid_map if kind == "uid" else ns.gid_map:
        if first <= ident < first + count:
            return lower + ident - first
    return None


def from_kernel(ns: UserNamespace | None, kid: int, kind: str) -> int | None:
    """from_kuid(): what `ns` calls kernel id `kid`, or None if it has no name for it."""
    if ns is None:
        return kid
    for first, lower, count in ns.uid_map if kind == "uid" else ns.gid_map:
        if lower <= kid < lower + count:
            return first + kid - lower
    return None


def shown(ns: UserNamespace | None, kid: int, kind: str) -> int:
    """from_kuid_munged(): the id a process of `ns` is told, the overflow id for one it has no name for."""
    ident = from_kernel(ns, kid, kind)
    return OVERFLOW_ID if ident is None else ident


def named(ns: UserNamespace | None, ident: int, kind: str) -> int:
    """to_kernel(), EINVAL for an id `ns` has not mapped (what set*id(2) and chown(2) say)."""
    kid = to_kernel(ns, ident, kind)
    if kid is None:
        raise SyscallError(errno.EINVAL)
    return kid


def ns_capable(cred, ns: UserNamespace | None, cap: int) -> bool:
    """cap_capable(): whether credentials `cred` (a Creds, or a ThreadGroup acting with its
    own) hold `cap` in user namespace `ns` (snapbox.kernel.userns)."""
    mine = cred.user_ns
    while True:
        if ns is mine:
            return bool(cred.caps.effective >> cap & 1)
        if level(ns) <= level(mine):
            return False
        if ns.parent is mine and ns.owner == cred.ids[1]:
            return True  # the owner of a namespace holds everything in it
        ns = ns.parent


@savable
@dataclass(eq=False)
class CapSets:
    """A process's capability sets (bit n: capability n) and securebits."""

    effective: int = ALL_CAPS  # what its calls are checked against
    permitted: int = ALL_CAPS  # what it may make effective
    inheritable: int = 0  # what an execve may keep (with the file's, or the ambient set)
    bounding: int = ALL_CAPS  # what an execve may ever grant
    ambient: int = 0  # kept across an execve of an unprivileged program; within permitted and inheritable
    securebits: int = 0  # SECBIT_* flags and their locks (PR_SET_SECUREBITS; PR_SET_KEEPCAPS is SECBIT_KEEP_CAPS)

    def copy(self) -> CapSets:
        return CapSets(self.effective, self.permitted, self.inheritable, self.bounding, self.ambient, self.securebits)

    def withhold(self, caps: int) -> None:
        """Take `caps` out of every set (bounding too: no execve gives them back)."""
        for name in ("effective", "permitted", "inheritable", "bounding", "ambient"):
            setattr(self, name, getattr(self, name) & ~caps)

    def has(self, cap: int) -> bool:
        return bool(self.effective >> cap & 1)


@savable
@dataclass(eq=False)
class Creds:
    """One thread's credentials (credentials(7))."""

    ids: list = field(default_factory=lambda: [0, 0, 0, 0, 0, 0])  # ruid euid suid rgid egid sgid
    groups: list = field(default_factory=list)  # supplementary group ids
    # The ids file permissions are checked against: they follow the effective ids (setfsuid).
    fsuid: int = 0
    fsgid: int = 0
    caps: CapSets = field(default_factory=CapSets)
    user_ns: UserNamespace | None = None  # the user namespace it is in (None: the sandbox's first)
    session_keyring: object = None  # its keys.Key, once it joined one (else its user's is used)

    def copy(self) -> Creds:
        """A thread's own copy, for a new thread or process (clone(2) copies credentials)."""
        return Creds(list(self.ids), list(self.groups), self.fsuid, self.fsgid, self.caps.copy(), self.user_ns,
                     self.session_keyring)


def capable(tg, cap: int) -> bool:
    """Whether process `tg` holds capability `cap` in the sandbox's first user namespace
    (its effective set has it, and it is in that namespace)."""
    return tg.user_ns is None and tg.caps.has(cap)


def own_capable(tg, cap: int) -> bool:
    """Whether process `tg` holds `cap` in its own user namespace (its effective set has it)."""
    return tg.caps.has(cap)


def capable_wrt(tg, node, cap: int) -> bool:
    """capable_wrt_inode_uidgid(): `cap` in `tg`'s own namespace, for a file whose owner
    and group that namespace has names for."""
    ns = tg.user_ns
    return tg.caps.has(cap) and (ns is None or from_kernel(ns, node.uid, "uid") is not None
                                 and from_kernel(ns, node.gid, "gid") is not None)


def root_uid(tg) -> int | None:
    """The kernel uid of root in `tg`'s namespace (None if it has none yet)."""
    return to_kernel(tg.user_ns, 0, "uid")


def ids_changed(tg, old: list[int], old_fsuid: int) -> None:
    """Adjust `tg`'s capabilities after a change of its uids from `old` (creds as they
    were) and fsuid from `old_fsuid`, as capabilities(7) says Linux does."""
    caps = tg.caps
    ruid, euid, suid = tg.creds[0:3]
    root = root_uid(tg)
    if not caps.securebits & SECBIT_NO_SETUID_FIXUP:
        if root in old[0:3] and root not in (ruid, euid, suid):
            if not caps.securebits & SECBIT_KEEP_CAPS:
                caps.permitted = 0
            caps.effective = 0
            caps.ambient = 0
        if old[1] == root and euid != root:
            caps.effective = 0
        elif old[1] != root and euid == root:
            caps.effective = caps.permitted
        if old_fsuid == root and tg.fsuid != root:
            caps.effective &= ~FS_CAPS
        elif old_fsuid != root and tg.fsuid == root:
            caps.effective |= caps.permitted & FS_CAPS


def exec_transform(tg) -> None:
    """The capabilities a process has after an execve (of a program without file
    capabilities or set-user-ID bits): root of its user namespace (unless SECBIT_NOROOT)
    is given every capability its bounding and inheritable sets allow; anyone else keeps
    only its ambient set. Keep-caps is cleared, and the saved ids become the effective ones."""
    caps = tg.caps
    ruid, euid = tg.creds[0], tg.creds[1]
    root = root_uid(tg)
    if root is not None and root in (ruid, euid) and not caps.securebits & SECBIT_NOROOT:
        caps.permitted = (caps.inheritable | caps.bounding) | caps.ambient
        caps.effective = caps.permitted if euid == root else caps.ambient
    else:
        caps.permitted = caps.ambient
        caps.effective = caps.ambient
    caps.securebits &= ~SECBIT_KEEP_CAPS
    tg.creds[2], tg.creds[5] = tg.creds[1], tg.creds[4]


def may_signal(sender, target, sig: int) -> bool:
    """kill(2): a process may signal another whose real or saved uid is its real or
    effective uid, any with CAP_KILL in the target's user namespace, and SIGCONT any of
    its session."""
    if sender is target or ns_capable(sender.acting(), target.user_ns, CAP_KILL):
        return True
    if sig == 18 and sender.sid == target.sid:  # SIGCONT
        return True
    return bool({sender.creds[0], sender.creds[1]} & {target.creds[0], target.creds[2]})


def may_ptrace(tracer, target) -> bool:
    """ptrace_may_access() with real credentials (what pidfd_getfd(2) asks): the caller
    itself; a process whose real, effective and saved uids all are the caller's real uid,
    and its gids the caller's real gid, unless it made itself undumpable; anyone with
    CAP_SYS_PTRACE in its user namespace."""
    if tracer is target or ns_capable(tracer.acting(), target.user_ns, CAP_SYS_PTRACE):
        return True
    if set(target.creds[0:3]) != {tracer.creds[0]} or set(target.creds[3:6]) != {tracer.creds[3]}:
        return False
    return target.prctl.get("dumpable", 1) != 0


def in_group(tg, gid: int) -> bool:
    return gid == tg.fsgid or gid in tg.groups


def may_access(tg, node, mask: int) -> bool:
    """generic_permission(): may `tg` read, write or execute/search (`mask`: MAY_*) `node`,
    by its permission bits or by CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (in its own user
    namespace, for a file whose owner and group that names)."""
    mode = node.mode
    if tg.fsuid == node.uid:
        bits = mode >> 6
    elif in_group(tg, node.gid):
        bits = mode >> 3
    else:
        bits = mode
    if bits & mask == mask:
        return True
    ns = tg.user_ns
    if ns is not None and (from_kernel(ns, node.uid, "uid") is None or from_kernel(ns, node.gid, "gid") is None):
        return False
    eff = tg.caps.effective
    is_dir = st.S_ISDIR(mode)
    if eff & bit(CAP_DAC_OVERRIDE) and (not mask & MAY_EXEC or is_dir or mode & 0o111):
        return True
    return bool(eff & bit(CAP_DAC_READ_SEARCH) and (mask == MAY_READ or (is_dir and not mask & MAY_WRITE)))


def check(tg, node, mask: int) -> None:
    """EACCES unless `tg` may access `node` so."""
    if not may_access(tg, node, mask):
        raise SyscallError(errno.EACCES)


def searches_freely(tg) -> bool:
    """Whether `tg` may search every directory (the walk need not check each one): in the
    sandbox's first user namespace, with CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH."""
    return tg.user_ns is None and bool(tg.caps.effective & (bit(CAP_DAC_OVERRIDE) | bit(CAP_DAC_READ_SEARCH)))


def owns(tg, node) -> bool:
    """inode_owner_or_capable(): the file's owner, or CAP_FOWNER."""
    return tg.fsuid == node.uid or capable_wrt(tg, node, CAP_FOWNER)


def owner_ids(tg, parent) -> tuple[int, int]:
    """The uid and gid of a file `tg` makes in directory `parent`: its fs ids, the group
    being the directory's if that is set-group-ID."""
    return tg.fsuid, parent.gid if parent.mode & st.S_ISGID else tg.fsgid


def may_delete(tg, parent, node) -> None:
    """May `tg` remove (or rename, or replace) `node` from directory `parent`: EACCES
    without write and search permission on it, EPERM if it is sticky and `tg` owns neither
    `node` nor it (and lacks CAP_FOWNER)."""
    check(tg, parent, MAY_WRITE | MAY_EXEC)
    if parent.mode & st.S_ISVTX and tg.fsuid not in (node.uid, parent.uid) and not capable_wrt(tg, node, CAP_FOWNER):
        raise SyscallError(errno.EPERM)


@dataclass
class RealIds:
    """What access(2) checks with (unless AT_EACCESS): a process's real uid and gid as its
    fs ids, and as capabilities all its permitted ones if that uid is its namespace's root,
    else none."""

    fsuid: int
    fsgid: int
    groups: list
    caps: CapSets
    user_ns: UserNamespace | None

    @classmethod
    def of(cls, tg) -> RealIds:
        caps = tg.caps.copy()
        if not caps.securebits & SECBIT_NO_SETUID_FIXUP:
            caps.effective = caps.permitted if tg.creds[0] == root_uid(tg) else 0
        return cls(tg.creds[0], tg.creds[3], tg.groups, caps, tg.user_ns)


def parse_caps(names: list) -> int:
    """OCI process.capabilities lists ("CAP_CHOWN", ...) as a set; ValueError for an
    unknown name."""
    out = 0
    for name in names:
        out |= bit(CAP_NAMES.index(name))
    return out
