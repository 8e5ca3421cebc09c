"""Linux AIO: io_setup, io_submit, io_getevents, io_cancel, io_destroy (the contexts and
their rings: snapbox.kernel.aio). Requests are done when submitted, as Linux does
buffered file I/O; IOCB_CMD_POLL is not supported (EINVAL, logged)."""

from __future__ import annotations

import errno
import logging
import struct

from snapbox.kernel.aio import AIO_MAX_NR, IO_EVENT, AioContext, ring_size
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.eventfiles import EventFd
from snapbox.kernel.syscalls import NR, i64, syscall
from snapbox.kernel.syscalls.common import MAX_RW, iovecs, scatter
from snapbox.kernel.syscalls.time import read_timespec
from snapbox.kernel.vfs import DirFile, RegularFile

log = logging.getLogger("snapbox.kernel")

IOCB_CMD_PREAD, IOCB_CMD_PWRITE, IOCB_CMD_FSYNC, IOCB_CMD_FDSYNC = 0, 1, 2, 3
IOCB_CMD_POLL, IOCB_CMD_PREADV, IOCB_CMD_PWRITEV = 5, 7, 8
IOCB_FLAG_RESFD = 1
RWF_SUPPORTED = 0x1F  # RWF_HIPRI, DSYNC, SYNC, NOWAIT, APPEND
# struct iocb: data, key, rw_flags, opcode, reqprio, fildes, buf, nbytes, offset, reserved2, flags, resfd
IOCB = struct.Struct("<QIIHhIQQqQII")


def _context(t, ctx_id: int) -> AioContext:
    ctx = t.tg.aio.get(ctx_id)
    if ctx is None:
        raise SyscallError(errno.EINVAL)
    return ctx


@syscall(NR.io_setup, stopped=True)
def io_setup(t, nr_events, ctxp):
    nr_events &= 0xFFFFFFFF
    (current,) = struct.unpack("<Q", t.mm.read(ctxp, 8))
    if current or nr_events == 0 or nr_events > 0x10000000:
        raise SyscallError(errno.EINVAL)
    if sum(c.max_reqs for c in t.tg.aio.values()) + nr_events > AIO_MAX_NR:
        raise SyscallError(errno.EAGAIN)
    nr, size = ring_size(nr_events)
    addr = t.mm.map_anonymous(0, size, 3, False)
    ctx = AioContext(ring=addr, nr=nr, size=size, max_reqs=nr_events)
    ctx.init_ring(t.mm)
    try:
        t.mm.write(ctxp, struct.pack("<Q", addr))
    except SyscallError:
        t.mm.unmap(addr, size)
        raise
    t.tg.aio[addr] = ctx
    return 0


@syscall(NR.io_destroy, stopped=True)
def io_destroy(t, ctx_id):
    ctx = _context(t, ctx_id)
    del t.tg.aio[ctx_id]
    t.mm.unmap(ctx.ring, ctx.size)
    ctx.waiters.notify()
    return 0


def _do(t, op: int, f, buf: int, nbytes: int, offset: int) -> int:
    """Carry out one request; its result (or -errno) is what its event says."""
    try:
        if op in (IOCB_CMD_PREAD, IOCB_CMD_PREADV):
            if op == IOCB_CMD_PREAD:
                data = f.read(t, min(nbytes, MAX_RW), offset)
                t.mm.write(buf, data)
            else:
                vecs = iovecs(t, buf, nbytes)
                data = f.read(t, min(sum(n for _, n in vecs), MAX_RW), offset)
                scatter(t, vecs, data)
            return len(data)
        if op in (IOCB_CMD_PWRITE, IOCB_CMD_PWRITEV):
            if op == IOCB_CMD_PWRITE:
                data = t.mm.read(buf, min(nbytes, MAX_RW))
            else:
                data = b"".join(t.mm.read(base, n) for base, n in iovecs(t, buf, nbytes))
            return f.write(t, data, offset)
        return 0  # fsync, fdatasync: the sandbox's files have nothing waiting to be written
    except SyscallError as e:
        return -e.errno


def _submit_one(t, ctx: AioContext, obj: int) -> None:
    data, _, rw_flags, op, _, fd, buf, nbytes, offset, reserved2, flags, resfd = IOCB.unpack(
        t.mm.read(obj, IOCB.size))
    if reserved2 or i64(nbytes) < 0:
        raise SyscallError(errno.EINVAL)
    if ctx.queued(t.mm) >= ctx.nr - 1:
        raise SyscallError(errno.EAGAIN)  # the ring has no room for another event
    notify = None
    if flags & IOCB_FLAG_RESFD:
        notify = t.fds.get(resfd)
        if not isinstance(notify, EventFd):
            raise SyscallError(errno.EINVAL)
    if op == IOCB_CMD_POLL:
        log.warning("Linux AIO: IOCB_CMD_POLL is not supported")
        raise SyscallError(errno.EINVAL)
    if op not in (IOCB_CMD_PREAD, IOCB_CMD_PWRITE, IOCB_CMD_FSYNC, IOCB_CMD_FDSYNC, IOCB_CMD_PREADV,
                  IOCB_CMD_PWRITEV):
        raise SyscallError(errno.EINVAL)
    f = t.fds.get(fd)
    if op in (IOCB_CMD_FSYNC, IOCB_CMD_FDSYNC):
        if buf or offset or nbytes or rw_flags or not isinstance(f, (RegularFile, DirFile)):
            raise SyscallError(errno.EINVAL)
    elif not (f.readable() if op in (IOCB_CMD_PREAD, IOCB_CMD_PREADV) else f.writable()):
        raise SyscallError(errno.EBADF)
    elif rw_flags & ~RWF_SUPPORTED:
        raise SyscallError(errno.EOPNOTSUPP)
    res = _do(t, op, f, buf, nbytes, offset)
    ctx.complete(t.mm, data, obj, res)
    if notify is not None:
        notify.signal()


@syscall(NR.io_submit)
def io_submit(t, ctx_id, nr, iocbpp):
    ctx = _context(t, ctx_id)
    nr = i64(nr)
    if nr < 0:
        raise SyscallError(errno.EINVAL)
    for i in range(min(nr, ctx.nr)):
        try:
            (obj,) = struct.unpack("<Q", t.mm.read(iocbpp + 8 * i, 8))
            _submit_one(t, ctx, obj)
        except (SyscallError, WouldBlock):
            if i == 0:
                raise  # nothing done yet: the error, or the wait, is the call's
            return i
    return min(nr, ctx.nr)


@syscall(NR.io_getevents)
def io_getevents(t, ctx_id, min_nr, nr, events, timeout):
    ctx = _context(t, ctx_id)
    min_nr, nr = i64(min_nr), i64(nr)
    if min_nr < 0 or nr < 0 or min_nr > nr:
        raise SyscallError(errno.EINVAL)
    deadline = t.restart_value(NR.io_getevents)
    now = t.kernel.timekeeper.monotonic_ns()
    if deadline is None and timeout:
        deadline = now + read_timespec(t, timeout)
    ready = ctx.queued(t.mm)
    if ready < min_nr and (deadline is None or now < deadline):
        t.set_restart(NR.io_getevents, deadline)
        raise WouldBlock(ctx.waiters, deadline=deadline)
    data = ctx.take(t.mm, nr)
    t.mm.write(events, data)
    return len(data) // IO_EVENT.size


@syscall(NR.io_cancel)
def io_cancel(t, ctx_id, iocb, result):
    _context(t, ctx_id)
    raise SyscallError(errno.EINVAL)  # every request is done by the time io_submit returns
