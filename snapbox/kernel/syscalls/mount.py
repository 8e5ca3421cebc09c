"""mount(2) and umount2(2) inside the sandbox: tmpfs, proc, and bind mounts of the
sandbox's own files and directories, stacked over what they cover and taken away again.

The sandbox has one mount namespace, so propagation types (MS_SHARED, MS_PRIVATE,
MS_SLAVE, MS_UNBINDABLE) have no peer to act on and are taken as they are. MS_NOEXEC is
kept (execve refuses files there with EACCES); MS_NOSUID and MS_NODEV hold anyway (no
set-user-ID execs, no device nodes made in the sandbox). Not supported, refused with
EINVAL and logged: read-only mounts (MS_RDONLY, also on remount), MS_MOVE, mounts over
the root.
"""

from __future__ import annotations

import errno
import logging
import re

from snapbox.kernel.creds import CAP_SYS_ADMIN, capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.procfs import ProcDir
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_FDCWD, lookup
from snapbox.kernel.vfs import MOUNTABLE, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, Dir, DirFile, now_ns, within

log = logging.getLogger("snapbox.kernel")

MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_SILENT = 0x20, 0x1000, 0x2000, 0x4000, 0x8000
MS_UNBINDABLE, MS_PRIVATE, MS_SLAVE, MS_SHARED = 1 << 17, 1 << 18, 1 << 19, 1 << 20
PROPAGATION = MS_UNBINDABLE | MS_PRIVATE | MS_SLAVE | MS_SHARED
MS_MGC_VAL, MS_MGC_MSK = 0xC0ED0000, 0xFFFF0000
KEPT = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | 0x400 | 0x800 | (1 << 21) | (1 << 24)  # and atime ones
MNT_FORCE, MNT_DETACH, MNT_EXPIRE, UMOUNT_NOFOLLOW = 1, 2, 4, 8
_logged: set = set()


def _refuse(what: str) -> None:
    if what not in _logged:
        _logged.add(what)
        log.warning("mount: %s: not supported (EINVAL)", what)
    raise SyscallError(errno.EINVAL, f"{what}: not supported")


def _target(t, addr: int, follow: bool = True):
    """(parent, name, node) of a mount's path: a path ending in "." names its directory."""
    parent, name, node, _ = lookup(t, AT_FDCWD & 0xFFFFFFFF, addr, follow=follow)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if name in (".", "..") and isinstance(node, Dir):
        parent, name = node.parent, node.name
    return parent, name, node


@syscall(NR.mount)
def mount(t, source, target, fstype, flags, data):
    if flags & MS_MGC_MSK == MS_MGC_VAL:
        flags &= ~MS_MGC_MSK  # the magic number old programs put in the top half
    if not capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    fs = t.kernel.fs
    parent, name, node = _target(t, target)
    top = parent is None or fs.mount_at(parent, name, node) is not None
    if flags & PROPAGATION:
        kinds = flags & PROPAGATION
        if kinds & (kinds - 1) or flags & ~(PROPAGATION | MS_REC | MS_SILENT) or not top:
            raise SyscallError(errno.EINVAL)
        return 0  # one mount namespace: nothing to propagate to or from
    if flags & MS_REMOUNT:
        if not top or parent is None:
            raise SyscallError(errno.EINVAL)
        if flags & MS_RDONLY:
            _refuse("read-only mounts")
        fs.mount_at(parent, name, node).flags = flags & KEPT
        return 0
    if flags & MS_MOVE:
        _refuse("MS_MOVE")
    if flags & MS_RDONLY:
        _refuse("read-only mounts")
    if parent is None:
        _refuse("a mount over the root")
    if flags & MS_BIND:
        return _bind(t, source, parent, name, node, flags)
    kind = t.mm.read_cstring(fstype, 256).decode(errors="replace") if fstype else ""
    if kind not in MOUNTABLE:
        raise SyscallError(errno.ENODEV)
    if not isinstance(node, Dir):
        raise SyscallError(errno.ENOTDIR)
    label = t.mm.read_cstring(source, 4096).decode(errors="replace") if source else "none"
    if kind == "proc":
        now = now_ns()
        top_node = ProcDir(ino=fs.new_ino(), mode=0o40555, nlink=2, atime=now, mtime=now, ctime=now,
                           name=name, parent=parent, kernel=t.kernel)
    else:
        options = t.mm.read_cstring(data, 4096).decode(errors="replace") if data else ""
        top_node = fs.new_tmpfs(parent, name, *_tmpfs_options(options))
    fs.attach(parent, name, node, top_node, kind, label, flags & KEPT)
    return 0


def _tmpfs_options(options: str) -> tuple[int, int, int]:
    """The mode, uid and gid of a new tmpfs from mount(2)'s data (size= and the like
    are taken and not enforced: memory is the sandbox's limit)."""
    mode, uid, gid = 0o1777, 0, 0
    for opt in filter(None, options.split(",")):
        key, _, value = opt.partition("=")
        try:
            if key == "mode":
                if not re.fullmatch(r"[0-7]+", value):
                    raise ValueError(value)
                mode = int(value, 8) & 0o7777
            elif key == "uid":
                uid = int(value)
            elif key == "gid":
                gid = int(value)
        except ValueError:
            raise SyscallError(errno.EINVAL) from None
    return mode, uid, gid


def _bind(t, source: int, parent: Dir, name: str, node, flags: int) -> int:
    """MS_BIND: the file or directory at `source` seen at `parent`/`name` as well."""
    fs = t.kernel.fs
    s_parent, s_name, s_node = _target(t, source)
    if s_node.is_dir() != node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    where = s_node if isinstance(s_node, Dir) else s_parent
    origin = next((m for m in reversed(fs.mounts) if within(where, m.node)), None)
    fs.attach(parent, name, node, s_node, origin.fstype if origin else "overlay",
              origin.source if origin else "rootfs", flags & KEPT)
    return 0


@syscall(NR.umount2)
def umount2(t, target, flags):
    flags = i32(flags)
    if flags & ~(MNT_FORCE | MNT_DETACH | MNT_EXPIRE | UMOUNT_NOFOLLOW) or \
            (flags & MNT_EXPIRE and flags & (MNT_FORCE | MNT_DETACH)):
        raise SyscallError(errno.EINVAL)
    if not capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    fs = t.kernel.fs
    parent, name, node = _target(t, target, follow=not flags & UMOUNT_NOFOLLOW)
    m = fs.mount_at(parent, name, node) if parent is not None else None
    if m is None:
        raise SyscallError(errno.EINVAL)
    if flags & MNT_DETACH:
        fs.detach(m)
        return 0
    if _busy(t, m):
        raise SyscallError(errno.EBUSY)
    if flags & MNT_EXPIRE and not m.expiring:
        m.expiring = True
        raise SyscallError(errno.EAGAIN)
    fs.detach(m)
    return 0


def _busy(t, m) -> bool:
    """Whether something is in the mount: a mount on it, a process's working directory or
    root, an open directory."""
    fs = t.kernel.fs
    if not isinstance(m.node, Dir):
        return any(f is not None and getattr(f, "node", None) is m.node
                   for tg in t.kernel.tasks.pidns.groups.values() for f in tg.fds.files.values())
    if any(other is not m and within(other.parent, m.node) for other in fs.mounts):
        return True
    for tg in t.kernel.tasks.pidns.groups.values():
        if tg.exit_status is not None:
            continue
        if within(tg.fs.cwd, m.node) or within(tg.fs.root, m.node):
            return True
        if any(isinstance(f, DirFile) and within(f.node, m.node) for f in tg.fds.files.values()):
            return True
    return False
