"""Advisory file locks: POSIX record locks (fcntl F_SETLK and friends) and flock(2).

Locks live on the inode as plain data (they are saved with it); a task that waits for a
lock waits on the kernel's queue for that inode, which is not saved: after a restore it
asks again.
"""

from __future__ import annotations

import errno
import os
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock

F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = 1, 2, 4, 8
_FLOCK = struct.Struct("<hh4xqqi4x")  # struct flock on x86-64: 32 bytes, l_start at 8
END = 1 << 63  # a lock "to the end of the file"


def read_flock(t, addr: int, f) -> tuple[int, int, int]:
    """struct flock -> (type, start, end) with the start made absolute."""
    ltype, whence, start, length, _ = _FLOCK.unpack(t.mm.read(addr, _FLOCK.size))
    if ltype not in (F_RDLCK, F_WRLCK, F_UNLCK):
        raise SyscallError(errno.EINVAL)
    if whence == os.SEEK_CUR:
        start += f.offset
    elif whence == os.SEEK_END:
        start += f.node.size()
    elif whence != os.SEEK_SET:
        raise SyscallError(errno.EINVAL)
    if length < 0:
        start, length = start + length, -length
    if start < 0:
        raise SyscallError(errno.EINVAL)
    return ltype, start, start + length if length else END


def _conflict(node, owner, ltype: int, start: int, end: int):
    # flock locks (owners ("flock", file)) and record locks (a pid, or a file for OFD
    # locks) are independent, as on Linux.
    is_flock = isinstance(owner, tuple)
    for lock in node.locks:
        o, lt, s, e = lock
        if isinstance(o, tuple) != is_flock or o == owner:
            continue
        if s < end and start < e and (ltype == F_WRLCK or lt == F_WRLCK):
            return lock
    return None


def getlk(t, f, addr: int) -> int:
    ltype, start, end = read_flock(t, addr, f)
    c = _conflict(f.node, t.tg.tgid, ltype, start, end)
    if c is None:
        out = _FLOCK.pack(F_UNLCK, os.SEEK_SET, start, 0 if end == END else end - start, 0)
    else:
        owner, lt, s, e = c
        out = _FLOCK.pack(lt, os.SEEK_SET, s, 0 if e == END else e - s, owner if isinstance(owner, int) else -1)
    t.mm.write(addr, out)
    return 0


def setlk(t, f, addr: int, wait: bool, owner=None) -> int:
    """F_SETLK / F_SETLKW (owner: the process) and F_OFD_SETLK[W] (owner: the description)."""
    ltype, start, end = read_flock(t, addr, f)
    node = f.node
    owner = t.tg.tgid if owner is None else owner
    if ltype == F_RDLCK and not f.readable() or ltype == F_WRLCK and not f.writable():
        raise SyscallError(errno.EBADF)
    if ltype != F_UNLCK and _conflict(node, owner, ltype, start, end) is not None:
        if not wait:
            raise SyscallError(errno.EAGAIN)
        raise WouldBlock(t.kernel.fs.lock_queue(node))
    _replace(node, owner, ltype, start, end)
    t.kernel.fs.lock_queue(node).notify()
    return 0


def _replace(node, owner, ltype: int, start: int, end: int) -> None:
    """Set [start, end) to `ltype` for `owner`, splitting its existing locks around it."""
    kept = []
    for lock in node.locks:
        o, lt, s, e = lock
        if o != owner or e <= start or end <= s:
            kept.append(lock)
            continue
        if s < start:
            kept.append([o, lt, s, start])
        if end < e:
            kept.append([o, lt, end, e])
    if ltype != F_UNLCK:
        kept.append([owner, ltype, start, end])
    node.locks = sorted(kept, key=lambda lk: (lk[2], lk[3]))


def release_owner(fs, node, owner) -> None:
    """Drop every lock `owner` holds on `node` (a close, an exit)."""
    if any(lock[0] == owner for lock in node.locks):
        node.locks = [lock for lock in node.locks if lock[0] != owner]
        fs.lock_queue(node).notify()


def flock(t, f, op: int) -> int:
    node = getattr(f, "node", None)
    if node is None or not hasattr(node, "locks"):
        raise SyscallError(errno.EINVAL)
    owner = ("flock", f)
    kind = op & ~LOCK_NB
    if kind == LOCK_UN:
        release_owner(t.kernel.fs, node, owner)
        return 0
    if kind not in (LOCK_SH, LOCK_EX):
        raise SyscallError(errno.EINVAL)
    ltype = F_WRLCK if kind == LOCK_EX else F_RDLCK
    if _conflict(node, owner, ltype, 0, END) is not None:
        if op & LOCK_NB:
            raise SyscallError(errno.EWOULDBLOCK)
        raise WouldBlock(t.kernel.fs.lock_queue(node))
    _replace(node, owner, ltype, 0, END)
    return 0
