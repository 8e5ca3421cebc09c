"""inotify_init, inotify_init1, inotify_add_watch, inotify_rm_watch (the instances and the
events: snapbox.kernel.inotify)."""

from __future__ import annotations

import errno

from snapbox.kernel.creds import MAY_READ, check
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.inotify import IN_ALL_EVENTS, IN_DONT_FOLLOW, IN_MASK_ADD, IN_MASK_CREATE, IN_ONLYDIR, \
    WATCH_FLAGS, InotifyFile
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_FDCWD, lookup


@syscall(NR.inotify_init1)
def inotify_init1(t, flags):
    flags = i32(flags)
    if flags & ~(O_CLOEXEC | O_NONBLOCK):
        raise SyscallError(errno.EINVAL)
    return t.fds.install(InotifyFile(flags=flags & O_NONBLOCK), cloexec=bool(flags & O_CLOEXEC))


@syscall(NR.inotify_init)
def inotify_init(t):
    return inotify_init1(t, 0)


def _instance(t, fd: int) -> InotifyFile:
    f = t.fds.get(i32(fd))
    if not isinstance(f, InotifyFile):
        raise SyscallError(errno.EINVAL)
    return f


@syscall(NR.inotify_add_watch)
def inotify_add_watch(t, fd, path, mask):
    mask &= 0xFFFFFFFF
    f = _instance(t, fd)
    if not mask & IN_ALL_EVENTS or mask & ~(IN_ALL_EVENTS | WATCH_FLAGS) \
            or mask & (IN_MASK_ADD | IN_MASK_CREATE) == IN_MASK_ADD | IN_MASK_CREATE:
        raise SyscallError(errno.EINVAL)
    _, _, node, _ = lookup(t, AT_FDCWD, path, follow=not mask & IN_DONT_FOLLOW)
    if node is None:
        raise SyscallError(errno.ENOENT)
    if mask & IN_ONLYDIR and not node.is_dir():
        raise SyscallError(errno.ENOTDIR)
    check(t.tg, node, MAY_READ)
    return f.add_watch(node, mask)


@syscall(NR.inotify_rm_watch)
def inotify_rm_watch(t, fd, wd):
    f = _instance(t, fd)
    if i32(wd) not in f.watches:
        raise SyscallError(errno.EINVAL)
    f.remove_watch(i32(wd))
    return 0
