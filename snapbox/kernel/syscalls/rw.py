"""Reading and writing: read, write and their p/v forms (preadv2, pwritev2), lseek, fsync, sync,
syncfs, sync_file_range, sendfile and copy_file_range."""

from __future__ import annotations

import errno
import stat
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_APPEND
from snapbox.kernel.vfs import DirFile, RegularFile
from snapbox.kernel.syscalls import NR, i32, i64, syscall
from snapbox.kernel.syscalls.net import recv_all, recv_target
from snapbox.kernel.syscalls.common import MAX_RW, can_fill, file_size_limited, file_size_room, gather, iovecs, readable, receive_timeout, scatter, writable, write_all



def _read(t, n: int) -> int:
    """A read-family call has read `n` bytes: counted in /proc/PID/io (rchar, syscr)."""
    t.io[0] += n
    t.io[2] += 1
    return n


def _wrote(t, n: int) -> int:
    """A write-family call has written `n` bytes (wchar, syscw)."""
    t.io[1] += n
    t.io[3] += 1
    return n


@syscall(NR.read)
def read(t, fd, buf, count):
    f = readable(t, i32(fd))
    t.mm.can_put(buf, count)
    if (target := recv_target(f, 0, min(count, MAX_RW))) > 1:  # a stream socket's SO_RCVLOWAT
        return _read(t, recv_all(t, NR.read, f, [(buf, min(count, MAX_RW))], 0, target))
    try:
        data = f.read(t, min(count, MAX_RW))
    except WouldBlock as wb:
        raise receive_timeout(t, f, NR.read, wb) from None
    t.mm.write(buf, data)
    return _read(t, len(data))


def _span_ok(offset: int, count: int) -> None:
    """rw_verify_area(): EINVAL for a count that is negative as a signed size, or a range
    that runs past the largest file position."""
    if offset < 0 or count >= 1 << 63 or offset + count >= 1 << 63:
        raise SyscallError(errno.EINVAL)


@syscall(NR.pread64)
def pread64(t, fd, buf, count, offset):
    f = readable(t, i32(fd), positioned=True)
    _span_ok(i64(offset), count)
    data = f.read(t, min(count, MAX_RW), i64(offset))
    t.mm.write(buf, data)
    return _read(t, len(data))


@syscall(NR.write)
def write(t, fd, buf, count):
    f = writable(t, i32(fd))
    data = file_size_limited(t, f, t.mm.read_some(buf, min(count, MAX_RW)) if count else b"", None)
    return _wrote(t, write_all(t, NR.write, f, data))


@syscall(NR.pwrite64)
def pwrite64(t, fd, buf, count, offset):
    f = writable(t, i32(fd), positioned=True)
    _span_ok(i64(offset), count)
    data = file_size_limited(t, f, t.mm.read_some(buf, min(count, MAX_RW)) if count else b"", i64(offset))
    return _wrote(t, f.write(t, data, i64(offset)))


@syscall(NR.readv)
def readv(t, fd, iov, iovcnt):
    f = readable(t, i32(fd))
    vecs = iovecs(t, iov, iovcnt)
    can_fill(t, vecs)
    try:
        data = f.read(t, min(sum(n for _, n in vecs), MAX_RW))
    except WouldBlock as wb:
        raise receive_timeout(t, f, NR.readv, wb) from None
    scatter(t, vecs, data)
    return _read(t, len(data))


@syscall(NR.writev)
def writev(t, fd, iov, iovcnt):
    f = writable(t, i32(fd))
    data = file_size_limited(t, f, gather(t, iovecs(t, iov, iovcnt)), None)
    return _wrote(t, write_all(t, NR.writev, f, data))


RWF_HIPRI, RWF_DSYNC, RWF_SYNC, RWF_NOWAIT, RWF_APPEND = 1, 2, 4, 8, 0x10


def _at(f, offset: int, flags: int) -> int | None:
    """preadv2/pwritev2's offset: -1 is the file position (None), as for readv/writev."""
    if flags & ~(RWF_HIPRI | RWF_DSYNC | RWF_SYNC | RWF_NOWAIT | RWF_APPEND):
        raise SyscallError(errno.EOPNOTSUPP)
    if flags & RWF_NOWAIT and not isinstance(f, RegularFile):
        raise SyscallError(errno.EOPNOTSUPP)  # only files that never block say so here
    if offset == -1:
        return None
    if offset < 0:
        raise SyscallError(errno.EINVAL)
    return offset


@syscall(NR.preadv)
def preadv(t, fd, iov, iovcnt, pos_l, pos_h):
    if i64(pos_l) < 0:
        raise SyscallError(errno.EINVAL)  # only preadv2 takes -1 for the file position
    return preadv2(t, fd, iov, iovcnt, pos_l, pos_h, 0)


@syscall(NR.preadv2)
def preadv2(t, fd, iov, iovcnt, pos_l, pos_h, flags):
    f = readable(t, i32(fd), positioned=i64(pos_l) != -1)
    offset = _at(f, i64(pos_l), i32(flags))
    vecs = iovecs(t, iov, iovcnt)
    data = f.read(t, min(sum(n for _, n in vecs), MAX_RW), offset)
    scatter(t, vecs, data)
    return _read(t, len(data))


@syscall(NR.pwritev)
def pwritev(t, fd, iov, iovcnt, pos_l, pos_h):
    if i64(pos_l) < 0:
        raise SyscallError(errno.EINVAL)
    return pwritev2(t, fd, iov, iovcnt, pos_l, pos_h, 0)


@syscall(NR.pwritev2)
def pwritev2(t, fd, iov, iovcnt, pos_l, pos_h, flags):
    f = writable(t, i32(fd), positioned=i64(pos_l) != -1)
    offset = _at(f, i64(pos_l), i32(flags))
    if i32(flags) & RWF_APPEND and isinstance(f, RegularFile):
        offset = f.node.size()
    data = file_size_limited(t, f, gather(t, iovecs(t, iov, iovcnt)), offset)
    if offset is None:
        return _wrote(t, write_all(t, NR.pwritev2, f, data))
    return _wrote(t, f.write(t, data, offset))


@syscall(NR.lseek)
def lseek(t, fd, offset, whence):
    return t.fds.get(i32(fd)).seek(i64(offset), i32(whence))


@syscall(NR.fsync, NR.fdatasync)
def fsync(t, fd):
    t.fds.get_open(i32(fd))
    return 0


@syscall(NR.sync)
def sync(t):
    return 0  # the sandbox's files are in its memory or a bind mount's: nothing waits to be written


@syscall(NR.syncfs)
def syncfs(t, fd):
    t.fds.get_open(i32(fd))
    return 0


SYNC_FILE_RANGE_FLAGS = 1 | 2 | 4  # WAIT_BEFORE, WRITE, WAIT_AFTER


@syscall(NR.sync_file_range)
def sync_file_range(t, fd, offset, nbytes, flags):
    f = t.fds.get_open(i32(fd))
    if i32(flags) & ~SYNC_FILE_RANGE_FLAGS or i64(offset) < 0 or i64(nbytes) < 0:
        raise SyscallError(errno.EINVAL)
    if not isinstance(f, RegularFile):
        raise SyscallError(errno.ESPIPE)
    return 0


def _transfer(t, nr: int, out_fd: int, in_fd: int, offset_addr: int, count: int) -> int:
    """sendfile(2): EINVAL for a negative count, an append-only output, an input that is
    not a file's data (a directory), or a range past the largest file position."""
    src = readable(t, in_fd)
    dst = writable(t, out_fd)
    if count >= 1 << 63 or dst.flags & O_APPEND or isinstance(src, DirFile):
        raise SyscallError(errno.EINVAL)
    if isinstance(dst, RegularFile):
        _span_ok(dst.offset, count)
    count = min(count, MAX_RW)
    if count:
        count = min(count, file_size_room(t, dst, None) or count)  # RLIMIT_FSIZE
    if offset_addr:
        (offset,) = struct.unpack("<q", t.mm.read(offset_addr, 8))
        _span_ok(offset, count)
        data = src.read(t, count, offset)
    else:
        data = src.read(t, count)
    n = write_all(t, nr, dst, data)
    if offset_addr:
        t.mm.write(offset_addr, struct.pack("<q", offset + n))
    return n


@syscall(NR.sendfile)
def sendfile(t, out_fd, in_fd, offset, count):
    return _transfer(t, NR.sendfile, i32(out_fd), i32(in_fd), offset, count)


@syscall(NR.copy_file_range)
def copy_file_range(t, fd_in, off_in, fd_out, off_out, length, flags):
    """copy_file_range(2): between regular files, from and to the given offsets (each
    updated), or the files' own (then those move)."""
    if flags:
        raise SyscallError(errno.EINVAL)
    src, dst = readable(t, i32(fd_in)), writable(t, i32(fd_out))
    if dst.flags & O_APPEND:
        raise SyscallError(errno.EBADF)
    for f in (src, dst):
        mode = f.stat()["mode"]
        if stat.S_ISDIR(mode):
            raise SyscallError(errno.EISDIR)
        if not stat.S_ISREG(mode):
            raise SyscallError(errno.EINVAL)
    count = min(length, MAX_RW)
    pos_in = struct.unpack("<q", t.mm.read(off_in, 8))[0] if off_in else src.offset
    pos_out = struct.unpack("<q", t.mm.read(off_out, 8))[0] if off_out else dst.offset
    if pos_in < 0 or pos_out < 0:
        raise SyscallError(errno.EINVAL)
    same = getattr(src, "node", None) is not None and getattr(src, "node", None) is getattr(dst, "node", None)
    if same and pos_in < pos_out + count and pos_out < pos_in + count:
        raise SyscallError(errno.EINVAL)  # overlapping ranges of one file
    if count:
        count = min(count, file_size_room(t, dst, pos_out) or count)
    data = src.read(t, count, pos_in) if count else b""
    n = write_all(t, NR.copy_file_range, dst, data, pos_out) if data else 0
    for addr, f, pos in ((off_in, src, pos_in), (off_out, dst, pos_out)):
        if addr:
            t.mm.write(addr, struct.pack("<q", pos + n))
        else:
            f.offset = pos + n
    return n


POSIX_FADV_NOREUSE = 5  # the highest advice (NORMAL, RANDOM, SEQUENTIAL, WILLNEED, DONTNEED, NOREUSE)


@syscall(NR.fadvise64)
def fadvise64(t, fd, offset, length, advice):
    """Advice about the page cache, checked as Linux checks it, then taken as given: the
    sentry reads files as it needs them."""
    f = t.tg.fds.get_open(i32(fd))
    if stat.S_ISFIFO(f.stat()["mode"]):
        raise SyscallError(errno.ESPIPE)
    if not 0 <= i32(advice) <= POSIX_FADV_NOREUSE or i64(length) < 0:
        raise SyscallError(errno.EINVAL)
    return 0


@syscall(NR.readahead)
def readahead(t, fd, offset, count):
    """Read ahead into the page cache: checked as Linux checks it (a regular file open for
    reading), nothing more to do."""
    f = t.tg.fds.get_open(i32(fd))
    if not f.readable():
        raise SyscallError(errno.EBADF)
    if not stat.S_ISREG(f.stat()["mode"]):
        raise SyscallError(errno.EINVAL)
    return 0
