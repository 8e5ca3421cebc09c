"""splice(2), tee(2) and vmsplice(2): moving bytes through a pipe without a user buffer.

The sentry holds every pipe's bytes, so a splice is a read from one file and a write to
the other done here, with the pipe's side taken only as far as the other side went: a
file or socket that takes part of what the pipe offered leaves the rest in the pipe.
"""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_APPEND, O_NONBLOCK
from snapbox.kernel.pipe import PipeFile
from snapbox.kernel.signals import SIGPIPE
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import MAX_RW, file_size_room, iovecs, readable, scatter, writable

SPLICE_F_MOVE, SPLICE_F_NONBLOCK, SPLICE_F_MORE, SPLICE_F_GIFT = 1, 2, 4, 8
SPLICE_F_ALL = SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE | SPLICE_F_GIFT


def _offset(t, addr: int) -> int | None:
    if not addr:
        return None
    (offset,) = struct.unpack("<q", t.mm.read(addr, 8))
    if offset < 0:
        raise SyscallError(errno.EINVAL)
    return offset


def _take(t, pipe_file: PipeFile, count: int, nonblock: bool) -> bytes:
    """Up to `count` bytes at the head of a pipe, left there (the caller consumes them):
    b"" at end of file; EAGAIN or a block when it is empty."""
    p = pipe_file.pipe
    if not p.buf:
        if p.writers == 0:
            return b""
        if nonblock or pipe_file.flags & O_NONBLOCK:
            raise SyscallError(errno.EAGAIN)
        raise WouldBlock(p.readable)
    return bytes(p.buf[:count])


def _consume(pipe_file: PipeFile, n: int) -> None:
    p = pipe_file.pipe
    del p.buf[:n]
    p.writable.notify()


def _room(t, pipe_file: PipeFile, nonblock: bool) -> int:
    """Bytes a pipe takes now; EAGAIN or a block when it is full, EPIPE with no reader."""
    p = pipe_file.pipe
    if p.readers == 0:
        t.kernel.send_signal(t.tg, SIGPIPE)
        raise SyscallError(errno.EPIPE)
    room = p.capacity - len(p.buf)
    if room <= 0:
        if nonblock or pipe_file.flags & O_NONBLOCK:
            raise SyscallError(errno.EAGAIN)
        raise WouldBlock(p.writable)
    return room


@syscall(NR.splice)
def splice(t, fd_in, off_in, fd_out, off_out, length, flags):
    flags = i32(flags)
    if flags & ~SPLICE_F_ALL:
        raise SyscallError(errno.EINVAL)
    src = readable(t, i32(fd_in))
    dst = writable(t, i32(fd_out))
    in_pipe, out_pipe = isinstance(src, PipeFile), isinstance(dst, PipeFile)
    if not in_pipe and not out_pipe:
        raise SyscallError(errno.EINVAL)
    if (in_pipe and off_in) or (out_pipe and off_out):
        raise SyscallError(errno.ESPIPE)
    if in_pipe and out_pipe and src.pipe is dst.pipe:
        raise SyscallError(errno.EINVAL)
    if not out_pipe and dst.flags & O_APPEND:
        raise SyscallError(errno.EINVAL)
    offset_in, offset_out = _offset(t, off_in), _offset(t, off_out)
    for offset in (offset_in, offset_out):
        if offset is not None and offset + length >= 1 << 63:
            raise SyscallError(errno.EINVAL)  # rw_verify_area: past the largest file position
    count = min(length, MAX_RW)
    if count == 0:
        return 0
    nonblock = bool(flags & SPLICE_F_NONBLOCK)
    if in_pipe:
        if not out_pipe:
            count = min(count, file_size_room(t, dst, offset_out) or count)  # RLIMIT_FSIZE
        data = _take(t, src, count, nonblock)
        if not data:
            return 0
        if out_pipe:
            data = data[:_room(t, dst, nonblock)]
        n = dst.write(t, data, offset_out)
        _consume(src, n)
    else:
        room = _room(t, dst, nonblock)
        data = src.read(t, min(count, room), offset_in)
        n = dst.pipe.put(data, True, atomic=False) if data else 0
    if offset_in is not None:
        t.mm.write(off_in, struct.pack("<q", offset_in + n))
    if offset_out is not None:
        t.mm.write(off_out, struct.pack("<q", offset_out + n))
    return n


@syscall(NR.tee)
def tee(t, fd_in, fd_out, length, flags):
    flags = i32(flags)
    if flags & ~SPLICE_F_ALL:
        raise SyscallError(errno.EINVAL)
    src = readable(t, i32(fd_in))
    dst = writable(t, i32(fd_out))
    if not isinstance(src, PipeFile) or not isinstance(dst, PipeFile) or src.pipe is dst.pipe:
        raise SyscallError(errno.EINVAL)
    count = min(length, MAX_RW)
    if count == 0:
        return 0
    nonblock = bool(flags & SPLICE_F_NONBLOCK)
    data = _take(t, src, count, nonblock)
    if not data:
        return 0
    return dst.pipe.put(data[:_room(t, dst, nonblock)], True, atomic=False)


@syscall(NR.vmsplice)
def vmsplice(t, fd, iov, nr_segs, flags):
    if i32(flags) & ~SPLICE_F_ALL:
        raise SyscallError(errno.EINVAL)
    f = t.fds.get(i32(fd))
    if not isinstance(f, PipeFile):
        raise SyscallError(errno.EBADF)
    vecs = iovecs(t, iov, nr_segs)
    nonblock = bool(i32(flags) & SPLICE_F_NONBLOCK)
    if f.writable():  # user memory into the pipe
        data = b"".join(t.mm.read(base, n) for base, n in vecs)[:MAX_RW]
        if not data:
            return 0
        return f.pipe.put(data[:_room(t, f, nonblock)], True, atomic=False)
    data = _take(t, f, min(sum(n for _, n in vecs), MAX_RW), nonblock)
    scatter(t, vecs, data)
    _consume(f, len(data))
    return len(data)
