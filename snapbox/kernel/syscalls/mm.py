"""Memory syscalls: brk, mmap, munmap, mprotect (anonymous memory)."""

from __future__ import annotations

import errno

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.memfile import PAGE_SIZE

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000
MAP_GROWSDOWN = 0x100
MAP_STACK = 0x20000
MAP_POPULATE = 0x8000


@syscall(NR.brk)
def brk(t, addr):
    return t.mm.set_brk(addr)


@syscall(NR.mmap)
def mmap(t, addr, length, prot, flags, fd, offset):
    flags = i32(flags)
    kind = flags & MAP_SHARED_VALIDATE
    if kind == 0 or length == 0 or offset % PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    if not flags & MAP_ANONYMOUS:
        t.fds.get(i32(fd))
        raise SyscallError(errno.ENODEV, "file mappings are not supported yet")
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if flags & MAP_FIXED_NOREPLACE and t.mm.find(addr) is not None:
        raise SyscallError(errno.EEXIST)
    if length > 1 << 46:
        raise SyscallError(errno.ENOMEM)
    return t.mm.map_anonymous(addr, length, prot & 7, fixed, "stack" if flags & MAP_GROWSDOWN else "anon")


@syscall(NR.munmap)
def munmap(t, addr, length):
    t.mm.unmap(addr, length)
    return 0


@syscall(NR.mprotect)
def mprotect(t, addr, length, prot):
    t.mm.protect(addr, length, prot)
    return 0


@syscall(NR.madvise)
def madvise(t, addr, length, advice):
    if addr % PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    # MADV_DONTNEED, MADV_FREE, MADV_REMOVE: the pages read as zeros afterwards (for private
    # anonymous memory, what Linux guarantees for DONTNEED). Other advice is a hint only.
    if advice in (4, 8, 9):
        t.mm.discard(addr, length)
    return 0
