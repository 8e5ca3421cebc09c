"""userfaultfd(2) for stubs: the sentry catches a stub's first touch of memory not yet loaded.

A stub's mappings are MAP_SHARED views of the memfd. Registered in MISSING mode, a page that
is not in the memfd yet stops the touching thread and queues a message on the userfaultfd
instead of reading as zeros; the sentry writes the page into the memfd (or zero-fills it)
and wakes the thread, which then finds the page. The userfaultfd is made inside the stub
(it belongs to the stub's address space) and taken over with pidfd_getfd(2); registering
and waking work from any process that holds it. UFFD_USER_MODE_ONLY is enough (stubs make
no host system calls on application memory) and needs no privilege.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from snapbox.platform.stub import SYS_CLOSE, SYS_USERFAULTFD, Stub, StubError

SYS_PIDFD_GETFD = 438
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_EVENT_PAGEFAULT = 0x12
UFFDIO_REGISTER_MODE_MISSING = 1

# _IOWR/_IOR(0xAA, nr, size) of <linux/userfaultfd.h>.
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_WAKE = 0x8010AA02
UFFDIO_ZEROPAGE = 0xC020AA04

MSG_SIZE = 32  # struct uffd_msg
_PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_for(stub: Stub) -> int:
    """A non-blocking, close-on-exec userfaultfd for `stub`'s address space, held by this
    process only (the stub's own descriptor is closed again)."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY
    theirs = stub.syscall(SYS_USERFAULTFD, flags)
    if theirs < 0:
        raise StubError(f"stub {stub.pid} could not make a userfaultfd: {os.strerror(-theirs)}")
    try:
        pidfd = os.pidfd_open(stub.pid)
        try:
            ours = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(theirs),
                                 ctypes.c_long(0))
            if ours < 0:
                e = ctypes.get_errno()
                raise StubError(f"cannot take stub {stub.pid}'s userfaultfd: {os.strerror(e)}")
        finally:
            os.close(pidfd)
    finally:
        stub.syscall(SYS_CLOSE, theirs)
    try:
        fcntl.ioctl(ours, UFFDIO_API, bytearray(struct.pack("<QQQ", UFFD_API, 0, 0)))
    except OSError as e:
        os.close(ours)
        raise StubError(f"userfaultfd handshake failed: {e.strerror}") from None
    return ours


def register(fd: int, start: int, length: int) -> None:
    """Catch first touches of missing pages in [start, start+length) (mapped, page-aligned)."""
    fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("<QQQQ", start, length, UFFDIO_REGISTER_MODE_MISSING, 0)))


def faults(fd: int) -> list[int]:
    """The page addresses of the page faults queued on `fd` (none if it has none)."""
    try:
        data = os.read(fd, MSG_SIZE * 64)
    except BlockingIOError:
        return []
    out = []
    for pos in range(0, len(data) - MSG_SIZE + 1, MSG_SIZE):
        if data[pos] == UFFD_EVENT_PAGEFAULT:
            out.append(struct.unpack_from("<Q", data, pos + 16)[0] & ~(_PAGE - 1))
    return out


def resolve(fd: int, addr: int) -> None:
    """Let the threads waiting on page `addr` go on: the page is zero-filled if it is still
    missing from the memfd, and otherwise they find it there."""
    try:
        fcntl.ioctl(fd, UFFDIO_ZEROPAGE, bytearray(struct.pack("<QQQq", addr, _PAGE, 0, 0)))
        return  # it wakes the waiters itself
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOENT, errno.EINVAL, errno.EAGAIN):
            raise
    try:
        fcntl.ioctl(fd, UFFDIO_WAKE, struct.pack("<QQ", addr, _PAGE))
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise
