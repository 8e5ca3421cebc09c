"""What the file families share: path arguments resolved in sandbox terms, iovec
arrays, blocking writes that keep their progress, and the *at() flags."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.creds import shown
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_APPEND
from snapbox.kernel.signals import SI_USER, SIGXFSZ, siginfo
from snapbox.kernel.syscalls import i32
from snapbox.kernel.task import RLIM_INFINITY, RLIMIT_DEFAULTS
from snapbox.kernel.vfs import Dir, DirFile, MemRegular, RegularFile


AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
IOV_MAX = 1024
MAX_RW = 0x7FFFF000  # Linux caps one read/write at this many bytes
_IOVEC = struct.Struct("<QQ")
RLIMIT_FSIZE = 1


def start_dir(t, dirfd: int, path: bytes):
    if path.startswith(b"/") or dirfd == AT_FDCWD:
        return t.fs.cwd
    f = t.fds.get(dirfd)
    if not isinstance(f, DirFile):
        raise SyscallError(errno.ENOTDIR)
    return f.node


def on_host(t, node):
    """The host directory (a Lower) holding `node` if it is in a read-write bind mount, None
    if it is in the in-memory layer; EROFS in a read-only bind mount."""
    layer = getattr(node, "layer", 0)
    fs = t.kernel.fs
    if not layer:
        if not fs.writable_in_memory(node):
            raise SyscallError(errno.EROFS)
        return None
    if layer not in fs.rw_layers:
        raise SyscallError(errno.EROFS)
    return fs.host(layer)


def host_path(node, name: str | None = None) -> str:
    """A node's path in its host directory (or that of `name` inside directory `node`)."""
    base = node.lower if isinstance(node, Dir) else node.path
    if name is None:
        return base
    return f"{base}/{name}" if base else name


def lookup(t, dirfd: int, path_addr: int, follow: bool = True, empty_ok: bool = False, who=None):
    """Resolve a path argument, searching directories as `who` (default: the caller's
    process) may; returns (parent, name, node-or-None, path bytes)."""
    path = t.mm.read_cstring(path_addr)
    if not path:
        if empty_ok:
            return None, "", None, path
        raise SyscallError(errno.ENOENT)  # before dirfd is looked at, as Linux's getname
    fs = t.kernel.fs
    parent, name, node = fs.walk(start_dir(t, dirfd, path), t.fs.root, path, follow, who=who or t.tg)
    return parent, name, node, path


def readable(t, fd: int, positioned: bool = False):
    """The file fd refers to, open for reading; `positioned` for a read at an offset
    (pread and its kin), which a stream refuses first."""
    f = t.fds.get(fd)
    if positioned and f.stream:
        raise SyscallError(errno.ESPIPE)
    if not f.readable():
        raise SyscallError(errno.EBADF)
    return f


def writable(t, fd: int, positioned: bool = False):
    """The file fd refers to, open for writing (`positioned`: as readable's)."""
    f = t.fds.get(fd)
    if positioned and f.stream:
        raise SyscallError(errno.ESPIPE)
    if not f.writable():
        raise SyscallError(errno.EBADF)
    return f


def write_all(t, nr: int, f, data: bytes, offset: int | None = None) -> int:
    """Write `data`, blocking until all of it is written, as write(2) does on a blocking file.

    Bytes already written when the file blocks are kept in the task's restart state, so
    the retry (or a restored task) goes on from there instead of writing them twice; with
    a socket's SO_SNDTIMEO, so is the deadline, at which the call returns what it wrote, or
    EAGAIN if nothing (socket(7)).
    """
    done = written(t, nr)
    if not data and f.messages:
        return f.write(t, data, offset)  # an empty datagram or record
    while done < len(data):
        try:
            done += f.write(t, data[done:], offset)
        except WouldBlock as wb:
            block = send_timeout(t, f, nr, wb, done)
            if block is None:
                break
            raise block from None
        except SyscallError:
            if done:
                break
            raise
        if offset is not None:
            break
    return done


def send_timeout(t, f, nr: int, wb: WouldBlock, done: int = 0) -> WouldBlock | None:
    """The block of a send on `f` that has written `done` bytes, its restart state set: with
    the socket's SO_SNDTIMEO, its deadline (kept in that state) added; None once the deadline
    has passed with bytes written (the call returns them), EAGAIN if none."""
    state = t.restart_value(nr)
    deadline = state[1] if isinstance(state, tuple) else None
    timeout = getattr(f, "sndtimeo", 0)
    if not timeout:
        if done:
            t.set_restart(nr, done)
        return wb
    now = t.kernel.timekeeper.monotonic_ns()
    if deadline is None:
        deadline = now + max(timeout, 0)
    if now >= deadline:
        if done:
            return None
        raise SyscallError(errno.EAGAIN) from None
    t.set_restart(nr, (done, deadline))
    return WouldBlock(*wb.waitables, deadline=deadline if wb.deadline is None else min(deadline, wb.deadline))


def written(t, nr: int) -> int:
    """Bytes a blocking write has written so far (its restart state)."""
    state = t.restart_value(nr)
    return state[0] if isinstance(state, tuple) else state or 0


def iovecs(t, iov: int, iovcnt: int) -> list[tuple[int, int]]:
    iovcnt = i32(iovcnt)
    if iovcnt < 0 or iovcnt > IOV_MAX:
        raise SyscallError(errno.EINVAL)
    raw = t.mm.read(iov, iovcnt * _IOVEC.size)
    vecs = [_IOVEC.unpack_from(raw, i * _IOVEC.size) for i in range(iovcnt)]
    for base, n in vecs:
        if n >= 1 << 63:
            raise SyscallError(errno.EINVAL)  # a negative length
        if base + n >= 1 << 63:
            raise SyscallError(errno.EFAULT)  # import_iovec's access_ok: no user address, before any is used
    return vecs


def gather(t, vecs: list[tuple[int, int]], limit: int = MAX_RW) -> bytes:
    """The bytes of an iovec array's buffers, at most `limit`, up to the first that cannot
    be read (EFAULT if that is the very first)."""
    out, total = [], 0
    for base, n in vecs:
        n = min(n, limit - total)
        if n <= 0:
            continue
        try:
            part = t.mm.read_some(base, n)
        except SyscallError:
            if total:
                break
            raise
        out.append(part)
        total += len(part)
        if len(part) < n:
            break
    return b"".join(out)


def file_size_room(t, f, offset: int | None) -> int | None:
    """How many bytes a write to regular file `f` at `offset` (None: its position) may
    write under RLIMIT_FSIZE (None: any number); none at all: EFBIG, and SIGXFSZ to the
    thread (as Linux's generic_write_check_limits)."""
    if not isinstance(f, RegularFile):
        return None
    limit = t.tg.rlimits.get(RLIMIT_FSIZE, RLIMIT_DEFAULTS[RLIMIT_FSIZE])[0]
    if limit >= RLIM_INFINITY:
        return None
    pos = offset if offset is not None else (f.node.size() if f.flags & O_APPEND else f.offset)
    if pos >= limit:
        exceeded(t)
    return limit - pos


def file_size_limited(t, f, data: bytes, offset: int | None) -> bytes:
    """What a write of `data` may write of it under RLIMIT_FSIZE (file_size_room)."""
    if not data or not isinstance(f, RegularFile):
        return data
    room = file_size_room(t, f, offset)
    return data if room is None else data[:room]


def may_grow_to(t, size: int, length: int) -> None:
    """A file of `size` bytes made `length` long (truncate, fallocate): past RLIMIT_FSIZE,
    EFBIG and SIGXFSZ (inode_newsize_ok)."""
    limit = t.tg.rlimits.get(RLIMIT_FSIZE, RLIMIT_DEFAULTS[RLIMIT_FSIZE])[0]
    if length > size and length > limit:
        exceeded(t)


def exceeded(t) -> None:
    """SIGXFSZ to the calling thread, and EFBIG: a file would grow past RLIMIT_FSIZE."""
    ns = t.tg.user_ns
    info = siginfo(SIGXFSZ, SI_USER, pid=t.tg.tgid, uid=shown(ns, t.tg.creds[0], "uid"))
    t.kernel.send_signal(t.tg, SIGXFSZ, info, task=t)
    raise SyscallError(errno.EFBIG)


def can_fill(t, vecs: list[tuple[int, int]]) -> None:
    """EFAULT unless the first byte of an iovec array's buffers may be written (see
    MemoryManager.can_put)."""
    for base, n in vecs:
        if n:
            t.mm.can_put(base, n)
            return


def scatter(t, vecs: list[tuple[int, int]], data: bytes) -> None:
    """Spread `data` over the (address, length) buffers of an iovec array, in order."""
    pos = 0
    for base, n in vecs:
        if pos >= len(data):
            break
        t.mm.write(base, data[pos : pos + n])
        pos += n


AT_SYMLINK_FOLLOW = 0x400


def received(t, nr: int) -> int:
    """Bytes a MSG_WAITALL receive has taken so far (its restart state)."""
    v = t.restart_value(nr)
    return v[1] if isinstance(v, tuple) else 0


def receive_timeout(t, f, nr: int, wb: WouldBlock, done: int = 0) -> WouldBlock:
    """The block of a receive on `f` (read, recv, accept), with the socket's SO_RCVTIMEO as
    its deadline: kept in the task's restart state (with the bytes a MSG_WAITALL receive
    has taken, `done`), so a retry or a restored task keeps both; raises EAGAIN once the
    deadline has passed, as socket(7) says."""
    saved = t.restart_value(nr)
    deadline = saved[2] if isinstance(saved, tuple) else saved
    timeout = getattr(f, "rcvtimeo", 0)
    if timeout < 0:
        raise SyscallError(errno.EAGAIN)
    now = t.kernel.timekeeper.monotonic_ns()
    if timeout and deadline is None:
        deadline = now + timeout
    t.set_restart(nr, ("waitall", done, deadline) if done else deadline)
    if not timeout:
        return wb
    if now >= deadline:
        raise SyscallError(errno.EAGAIN)
    return WouldBlock(*wb.waitables, deadline=deadline if wb.deadline is None else min(deadline, wb.deadline))


def truncate(t, node: MemRegular, length: int) -> None:
    """Truncate a file of the writable layer: what every process maps of it past its new
    end is no longer there (SIGBUS), as Linux's truncate_pagecache unmaps it."""
    mms = _mapping(t, node)
    node.truncate(length, mapped=any(v.node is node and v.shared for mm in mms for v in mm.vmas))
    resized(t, node, mms)


def resized(t, node, mms: list | None = None) -> None:
    """File `node` has been truncated: every mapping of it ends where it does now; at once
    in the caller's address space if it is stopped, else at each one's next stop."""
    size = node.size()
    for mm in _mapping(t, node) if mms is None else mms:
        mm.truncated(node, size, now=mm is t.tg.mm and mm.stub is not None and mm.stub.active not in (None, -1))


def _mapping(t, node) -> list:
    """The address spaces of the sandbox that map `node`."""
    mms = {id(tg.mm): tg.mm for tg in t.kernel.tasks.pidns.groups.values() if tg.mm is not None}
    return [mm for mm in mms.values() if any(vma.node is node for vma in mm.vmas)]
