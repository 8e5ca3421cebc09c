"""User namespaces (user_namespaces(7)): a process may make one of its own with unshare(2)
or clone(2)'s CLONE_NEWUSER, without privilege, and holds every capability in it, and only
there: for what belongs to the sandbox's first namespace (its network, clock, mounts,
devices) it has none.

Credentials keep kernel ids: the ids of the sandbox's first user namespace, which is
every namespace's ancestor and maps every id to itself (None stands for it). A namespace's
uid_map and gid_map (written once, through /proc/PID/uid_map and gid_map) say which of its
ids are which kernel ids; what a process reads of an id (getuid(2), stat(2), /proc) is that
id as its own namespace sees it, or the overflow id 65534 where it has no name for it, and
an id it passes (setuid(2), chown(2)) must have one (EINVAL).

A capability is checked in a namespace: held in the namespace a process is in when its
effective set has it; held in every namespace below that one whose owner (the euid that
made it) is the process's euid, and in what those own; never above. A process's files are
checked in its own namespace, and only for files whose owner and group it has names for.
"""

from __future__ import annotations

import errno
import re

from snapbox.kernel.creds import (ALL_CAPS, CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN, U32, UserNamespace, extents, from_kernel,
                                  level, ns_capable, to_kernel)
from snapbox.kernel.errors import SyscallError
from snapbox.memfile import PAGE_SIZE

MAX_LEVEL = 32  # the deepest a namespace may be that makes another (ENOSPC past it)
MAX_EXTENTS = 340  # UID_GID_MAP_MAX_EXTENTS
SPACE = " \t\n\v\f\r"  # what the kernel's isspace() takes


def enters(cred, ns: UserNamespace) -> None:
    """A process's credentials in namespace `ns`, which it just made: every capability in
    it (none inherited, no ambient ones, no securebits), as set_cred_user_ns()."""
    cred.user_ns = ns
    caps = cred.caps
    caps.effective = caps.permitted = caps.bounding = ALL_CAPS
    caps.inheritable = caps.ambient = caps.securebits = 0


def make(cred, chrooted: bool, inum: int) -> UserNamespace:
    """A namespace made by a process with credentials `cred`, whose euid and egid own it.
    ENOSPC past 33 levels (EUSERS before Linux 4.9); EPERM in a chroot, or if the maker's
    own namespace has no name for its euid or egid."""
    parent = cred.user_ns
    if level(parent) > MAX_LEVEL:
        raise SyscallError(errno.ENOSPC)
    if chrooted:
        raise SyscallError(errno.EPERM)
    if from_kernel(parent, cred.ids[1], "uid") is None or from_kernel(parent, cred.ids[4], "gid") is None:
        raise SyscallError(errno.EPERM)
    return UserNamespace(parent=parent, owner=cred.ids[1], group=cred.ids[4], level=level(parent) + 1, inum=inum,
                         setgroups=True if parent is None else parent.setgroups)


def may_setgroups(ns: UserNamespace | None) -> bool:
    """userns_may_setgroups(): setgroups(2) in `ns` needs its gid_map written, and "allow"."""
    return ns is None or (bool(ns.gid_map) and ns.setgroups)


def show_map(ns: UserNamespace | None, reader: UserNamespace | None, kind: str) -> str:
    """/proc/PID/uid_map or gid_map of a process in `ns`, as a process in `reader` reads it:
    the lower ids as the reader names them (its parent's, when it reads its own namespace's)."""
    lower_ns = reader.parent if reader is ns and reader is not None else reader
    rows = []
    for first, lower, count in extents(ns, kind):
        seen = from_kernel(lower_ns, lower, kind)
        rows.append(f"{first:10d} {U32 if seen is None else seen:10d} {count:10d}\n")
    return "".join(rows)


def _parse_map(data: bytes) -> list[list[int]]:
    """The extents of a write to a map (map_write()'s parser): lines of three decimal
    numbers, NUL ending it all; EINVAL for anything else, overlaps and overflows."""
    text = data.split(b"\0", 1)[0].decode("latin-1")
    found: list[list[int]] = []
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines):
        fields = re.split(r"[ \t\v\f\r]+", line.strip(SPACE))
        if len(fields) != 3 or not all(f.isdigit() and f.isascii() for f in fields):
            raise SyscallError(errno.EINVAL)
        first, lower, count = (int(f) & U32 for f in fields)
        if first == U32 or lower == U32:
            raise SyscallError(errno.EINVAL)
        if (first + count) & U32 <= first or (lower + count) & U32 <= lower:
            raise SyscallError(errno.EINVAL)
        for f, lo, c in found:
            if first < f + c and f < first + count or lower < lo + c and lo < lower + count:
                raise SyscallError(errno.EINVAL)
        if len(found) + 1 == MAX_EXTENTS and n + 1 < len(lines):
            raise SyscallError(errno.EINVAL)
        found.append([first, lower, count])
    if not found:
        raise SyscallError(errno.EINVAL)
    return found


def write_map(writer, opener, ns: UserNamespace | None, kind: str, data: bytes, offset: int) -> int:
    """A write to /proc/PID/uid_map or gid_map of a process in `ns` (map_write() and
    new_idmap_permitted()): by `writer` (the writing Creds) to a file `opener` opened. Once
    only, at offset 0, by an opener in `ns` or its parent holding CAP_SYS_ADMIN in `ns`;
    mapping its own euid (or egid, once setgroups is denied) alone needs no more, any other
    ids CAP_SETUID (CAP_SETGID) in the parent for writer and opener both, and only ids
    the parent has."""
    if ns is None:
        raise SyscallError(errno.EPERM)  # the first namespace's maps are written already
    if opener.user_ns is not ns and opener.user_ns is not ns.parent:
        raise SyscallError(errno.EPERM)
    if offset != 0 or len(data) >= PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    if extents(ns, kind):
        raise SyscallError(errno.EPERM)
    if not ns_capable(opener, ns, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    found = _parse_map(data)
    setid = CAP_SETUID if kind == "uid" else CAP_SETGID
    if not _permitted(writer, opener, ns, kind, found, setid):
        raise SyscallError(errno.EPERM)
    mapped = []
    for first, lower, count in found:
        kid = _range_down(ns.parent, lower, count, kind)
        if kid is None:
            raise SyscallError(errno.EPERM)
        mapped.append([first, kid, count])
    if len(mapped) > 5:
        mapped.sort()  # Linux keeps more than five extents sorted, and shows them so
    setattr(ns, f"{kind}_map", mapped)
    return len(data)


def _permitted(writer, opener, ns: UserNamespace, kind: str, found: list, setid: int) -> bool:
    if len(found) == 1 and found[0][2] == 1 and ns.owner == opener.ids[1]:
        kid = to_kernel(ns.parent, found[0][1], kind)
        if kind == "uid" and kid == opener.ids[1]:
            return True
        if kind == "gid" and not ns.setgroups and kid == opener.ids[4]:
            return True
    return ns_capable(writer, ns.parent, setid) and ns_capable(opener, ns.parent, setid)


def _range_down(ns: UserNamespace | None, first: int, count: int, kind: str) -> int | None:
    """The kernel id of `first` in `ns` if all of [first, first + count) lie in one extent."""
    for f, lower, c in extents(ns, kind):
        if f <= first and first + count <= f + c:
            return lower + first - f
    return None


def write_setgroups(ns: UserNamespace | None, data: bytes, offset: int) -> int:
    """A write to /proc/PID/setgroups: "allow" or "deny" (then whitespace), at offset 0.
    Denying is for good, and only before the gid_map is written (EPERM)."""
    if offset != 0 or len(data) >= 8:
        raise SyscallError(errno.EINVAL)
    text = data.split(b"\0", 1)[0].decode("latin-1")
    word = "allow" if text.startswith("allow") else "deny" if text.startswith("deny") else None
    if word is None or text[len(word):].strip(SPACE):
        raise SyscallError(errno.EINVAL)
    allowed = ns is None or ns.setgroups
    if word == "allow":
        if not allowed:
            raise SyscallError(errno.EPERM)
    else:
        if ns is None or ns.gid_map:
            raise SyscallError(errno.EPERM)
        ns.setgroups = False
    return len(data)
