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

    def copy(self) -> Creds:
        """A thread's own copy, for a new thread or process (clone(2) copies credentials)."""
        return Creds(list(self.ids), list(self.groups), self.fsuid, self.fsgid, self.caps.copy())


def capable(tg, cap: int) -> bool:
    """Whether process `tg` holds capability `cap` (in its effective set)."""
    return tg.caps.has(cap)


def ids_changed(tg, old: list[int], old_fsuid: int) -> None:
    """Adjust `tg`'s capabilities after a change of its uids from `old` (creds as they
    were) and fsuid from `old_fsuid`, as capabilities(7) says Linux does."""
    caps = tg.caps
    ruid, euid, suid = tg.creds[0:3]
    if not caps.securebits & SECBIT_NO_SETUID_FIXUP:
        if 0 in old[0:3] and 0 not in (ruid, euid, suid):
            if not caps.securebits & SECBIT_KEEP_CAPS:
                caps.permitted = 0
            caps.effective = 0
            caps.ambient = 0
        if old[1] == 0 and euid != 0:
            caps.effective = 0
        elif old[1] != 0 and euid == 0:
            caps.effective = caps.permitted
        if old_fsuid == 0 and tg.fsuid != 0:
            caps.effective &= ~FS_CAPS
        elif old_fsuid != 0 and tg.fsuid == 0:
            caps.effective |= caps.permitted & FS_CAPS


def exec_transform(tg) -> None:
    """The capabilities a process has after an execve (of a program without file
    capabilities or set-user-ID bits): root (unless SECBIT_NOROOT) is given every
    capability its bounding and inheritable sets allow; anyone else keeps only its
    ambient set. Keep-caps is cleared, and the saved ids become the effective ones."""
    caps = tg.caps
    ruid, euid = tg.creds[0], tg.creds[1]
    if (ruid == 0 or euid == 0) and not caps.securebits & SECBIT_NOROOT:
        caps.permitted = (caps.inheritable | caps.bounding) | caps.ambient
        caps.effective = caps.permitted if euid == 0 else caps.ambient
    else:
        caps.permitted = caps.ambient
        caps.effective = caps.ambient
    caps.securebits &= ~SECBIT_KEEP_CAPS
    tg.creds[2], tg.creds[5] = tg.creds[1], tg.creds[4]


def may_signal(sender, target, sig: int) -> bool:
    """kill(2): a process may signal another whose real or saved uid is its real or
    effective uid, any with CAP_KILL, and SIGCONT any of its session."""
    if capable(sender, CAP_KILL) or sender is target:
        return True
    if sig == 18 and sender.sid == target.sid:  # SIGCONT
        return True
    return bool({sender.creds[0], sender.creds[1]} & {target.creds[0], target.creds[2]})


def may_ptrace(tracer, target) -> bool:
    """ptrace_may_access() with real credentials (what pidfd_getfd(2) asks): the caller
    itself; a process whose real, effective and saved uids all are the caller's real uid,
    and its gids the caller's real gid, unless it made itself undumpable; anyone with
    CAP_SYS_PTRACE."""
    if tracer is target or capable(tracer, CAP_SYS_PTRACE):
        return True
    if set(target.creds[0:3]) != {tracer.creds[0]} or set(target.creds[3:6]) != {tracer.creds[3]}:
        return False
    return target.prctl.get("dumpable", 1) != 0


def in_group(tg, gid: int) -> bool:
    return gid == tg.fsgid or gid in tg.groups


def may_access(tg, node, mask: int) -> bool:
    """generic_permission(): may `tg` read, write or execute/search (`mask`: MAY_*) `node`,
    by its permission bits or by CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH."""
    mode = node.mode
    if tg.fsuid == node.uid:
        bits = mode >> 6
    elif in_group(tg, node.gid):
        bits = mode >> 3
    else:
        bits = mode
    if bits & mask == mask:
        return True
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
    """Whether `tg` may search every directory (the walk need not check each one)."""
    return bool(tg.caps.effective & (bit(CAP_DAC_OVERRIDE) | bit(CAP_DAC_READ_SEARCH)))


def owns(tg, node) -> bool:
    """inode_owner_or_capable(): the file's owner, or CAP_FOWNER."""
    return tg.fsuid == node.uid or capable(tg, CAP_FOWNER)


def owner_ids(tg, parent) -> tuple[int, int]:
    """The uid and gid of a file `tg` makes in directory `parent`: its fs ids, the group
    being the directory's if that is set-group-ID."""
    return tg.fsuid, parent.gid if parent.mode & st.S_ISGID else tg.fsgid


def may_delete(tg, parent, node) -> None:
    """May `tg` remove (or rename, or replace) `node` from directory `parent`: EACCES
    without write and search permission on it, EPERM if it is sticky and `tg` owns neither
    `node` nor it (and lacks CAP_FOWNER)."""
    check(tg, parent, MAY_WRITE | MAY_EXEC)
    if parent.mode & st.S_ISVTX and tg.fsuid not in (node.uid, parent.uid) and not capable(tg, CAP_FOWNER):
        raise SyscallError(errno.EPERM)


@dataclass
class RealIds:
    """What access(2) checks with (unless AT_EACCESS): a process's real uid and gid as its
    fs ids, and as capabilities all its permitted ones if that uid is 0, else none."""

    fsuid: int
    fsgid: int
    groups: list
    caps: CapSets

    @classmethod
    def of(cls, tg) -> RealIds:
        caps = tg.caps.copy()
        if not caps.securebits & SECBIT_NO_SETUID_FIXUP:
            caps.effective = caps.permitted if tg.creds[0] == 0 else 0
        return cls(tg.creds[0], tg.creds[3], tg.groups, caps)


def parse_caps(names: list) -> int:
    """OCI process.capabilities lists ("CAP_CHOWN", ...) as a set; ValueError for an
    unknown name."""
    out = 0
    for name in names:
        out |= bit(CAP_NAMES.index(name))
    return out
