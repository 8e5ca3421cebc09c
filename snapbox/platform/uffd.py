"""userfaultfd(2) for stubs: the sentry catches a stub's first touch of memory not yet loaded.

A stub's mappings are MAP_SHARED views of the memfd. Registered in MISSING mode, a page that
is not in the memfd yet stops the touching thread and queues a message on the userfaultfd
instead of reading as zeros; the sentry writes the page into the memfd (or zero-fills it)
and wakes the thread, which then finds the page. The userfaultfd is made inside the stub
(it belongs to the stub's address space) and taken over with pidfd_getfd(2); registering
and waking work from any process that holds it. UFFD_USER_MODE_ONLY is enough (stubs make
no host system calls on application memory) and needs no privilege.

The same fds track written pages (live migration, incremental checkpoints): registered in
write-protect mode with UFFD_FEATURE_WP_ASYNC, a write to a protected page is resolved by
the host kernel itself, which only notes that the page was written; PAGEMAP_SCAN on the
process's /proc/PID/pagemap then returns the written ranges and protects them again in one
call (Linux 6.7 and later). No fault ever reaches anyone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from snapbox.platform.stub import SYS_USERFAULTFD, Stub, StubError

UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA
UFFD_EVENT_PAGEFAULT = 0x12
UFFDIO_REGISTER_MODE_MISSING = 1
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_WRITEPROTECT_MODE_WP = 1
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12  # write-protection of shmem (memfd) mappings
UFFD_FEATURE_WP_ASYNC = 1 << 15
WP_FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM

# _IOWR/_IOR(0xAA, nr, size) of <linux/userfaultfd.h>.
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_WAKE = 0x8010AA02
UFFDIO_ZEROPAGE = 0xC020AA04
UFFDIO_WRITEPROTECT = 0xC018AA06
# _IOWR('f', 16, struct pm_scan_arg) of <linux/fs.h>, and its flags and page categories.
PAGEMAP_SCAN = 0xC0606610
PM_SCAN_WP_MATCHING = 1
PAGE_IS_WRITTEN = 1 << 1
_SCAN_ARG = struct.Struct("<12Q")
_REGION = struct.Struct("<3Q")
_REGIONS = 512  # page_region entries read per ioctl

MSG_SIZE = 32  # struct uffd_msg
_PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def open_for(stub: Stub, features: int = 0) -> int:
    """A non-blocking, close-on-exec userfaultfd for `stub`'s address space, held by this
    process only (the stub's own descriptor is closed again), with `features` (UFFD_FEATURE_*)
    asked for in the handshake."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY
    theirs = stub.syscall(SYS_USERFAULTFD, flags)
    if theirs < 0:
        raise StubError(f"stub {stub.pid} could not make a userfaultfd: {os.strerror(-theirs)}")
    ours = stub.take_fd(theirs)
    try:
        _handshake(ours, features)
    except OSError as e:
        os.close(ours)
        raise StubError(f"userfaultfd handshake failed: {e.strerror}") from None
    return ours


def open_own(features: int) -> int:
    """A userfaultfd for this process's own address space (OSError if the host has none)."""
    fd = _libc.syscall(ctypes.c_long(SYS_USERFAULTFD), ctypes.c_long(os.O_CLOEXEC | os.O_NONBLOCK))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    try:
        _handshake(fd, features)
    except OSError:
        os.close(fd)
        raise
    return fd


def _handshake(fd: int, features: int) -> None:
    arg = bytearray(struct.pack("<QQQ", UFFD_API, features, 0))
    fcntl.ioctl(fd, UFFDIO_API, arg)
    if struct.unpack_from("<Q", arg, 8)[0] & features != features:
        raise OSError(errno.EINVAL, "userfaultfd lacks the features asked for")


def register(fd: int, start: int, length: int) -> None:
    """Catch first touches of missing pages in [start, start+length) (mapped, page-aligned)."""
    fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("<QQQQ", start, length, UFFDIO_REGISTER_MODE_MISSING, 0)))


def register_writes(fd: int, start: int, length: int) -> None:
    """Have `fd` (made with WP_FEATURES) track writes to [start, start+length) (mapped,
    page-aligned). Pages not protected yet count as written."""
    fcntl.ioctl(fd, UFFDIO_REGISTER, bytearray(struct.pack("<QQQQ", start, length, UFFDIO_REGISTER_MODE_WP, 0)))


def protect(fd: int, start: int, length: int) -> None:
    """Write-protect every page of a range registered with register_writes."""
    fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, bytearray(struct.pack("<QQQ", start, length, UFFDIO_WRITEPROTECT_MODE_WP)))


def written(pagemap_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The (start, end) address ranges of [start, end) written since they were last
    protected, by the process whose /proc/PID/pagemap `pagemap_fd` is; protected again in
    the same call. Mappings not tracked are skipped."""
    vec = ctypes.create_string_buffer(_REGION.size * _REGIONS)
    out: list[tuple[int, int]] = []
    while start < end:
        arg = bytearray(_SCAN_ARG.pack(_SCAN_ARG.size, PM_SCAN_WP_MATCHING, start, end, 0, ctypes.addressof(vec),
                                       _REGIONS, 0, 0, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN))
        n = fcntl.ioctl(pagemap_fd, PAGEMAP_SCAN, arg)
        for i in range(n):
            lo, hi, _ = _REGION.unpack_from(vec, i * _REGION.size)
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        walk_end = _SCAN_ARG.unpack(arg)[4]
        if walk_end <= start:
            break
        start = walk_end
    return out


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
