"""Memory syscalls: brk, mmap (anonymous and private file mappings), munmap, mprotect, mremap,
madvise, msync, mlock, mincore."""

from __future__ import annotations

import errno
import logging

from snapbox.kernel.devices import DeviceFile
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.vfs import F_SEAL_FUTURE_WRITE, F_SEAL_WRITE, LowerNode, MemRegular, RegularFile
from snapbox.memfile import PAGE_SIZE
from snapbox.platform.stub import PROT_WRITE

log = logging.getLogger("snapbox.kernel")

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


@syscall(NR.brk, stopped=True)
def brk(t, addr):
    return t.mm.set_brk(addr)


@syscall(NR.mmap, stopped=True)
def mmap(t, addr, length, prot, flags, fd, offset):
    flags = i32(flags)
    kind = flags & MAP_SHARED_VALIDATE
    if kind == 0 or length == 0 or offset % PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    source = None
    if not flags & MAP_ANONYMOUS:
        source = t.fds.get(i32(fd))
        if isinstance(source, DeviceFile) and source.node.name == "zero":
            source = None  # a mapping of /dev/zero is anonymous memory
        elif not isinstance(source, RegularFile):
            raise SyscallError(errno.ENODEV)
        elif not source.readable():
            raise SyscallError(errno.EACCES)
        elif kind != MAP_PRIVATE and prot & PROT_WRITE and not source.writable():
            raise SyscallError(errno.EACCES)
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if flags & MAP_FIXED_NOREPLACE and t.mm.find(addr) is not None:
        raise SyscallError(errno.EEXIST)
    if length > 1 << 46:
        raise SyscallError(errno.ENOMEM)
    if source is None:
        addr = t.mm.map_anonymous(addr, length, prot & 7, fixed, "stack" if flags & MAP_GROWSDOWN else "anon")
        if kind != MAP_PRIVATE:
            t.mm.find(addr).shared = True  # fork shares it instead of copying
        return addr
    if kind != MAP_PRIVATE:
        node = source.node
        if isinstance(node, LowerNode):
            node = t.kernel.fs.copy_up_node(node)
        if isinstance(node, MemRegular):
            if prot & PROT_WRITE and node.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
                raise SyscallError(errno.EPERM)  # memfd_create(2): a write-sealed file
            # The file's own pages, mapped page by page: writes reach the file and every
            # other mapping of it, as with a shared mapping on Linux.
            first = offset // PAGE_SIZE
            pages = [node.page(first + i) for i in range((length + PAGE_SIZE - 1) // PAGE_SIZE)]
            return t.mm.map_shared_pages(addr, length, prot & 7, fixed, pages, source.name, offset)
    node = source.node
    if kind == MAP_PRIVATE and not prot & PROT_WRITE and isinstance(node, LowerNode) and t.mm.cache is not None:
        # Read-only and private: the file's cached pages, shared with every such mapping.
        pages = t.mm.cache.get(node)
        if pages is not None:
            try:
                return t.mm.map_file(addr, length, prot & 7, fixed, pages, offset, source.name or "anon")
            finally:
                t.mm.cache.forget_unused(pages)
    # A private (or read-only shared) file mapping: the file's pages copied into fresh
    # memory; bytes past the end of the file read as zeros.
    data = source.read(t, min(length, max(0, source.node.size() - offset)), offset)
    addr = t.mm.map_anonymous(addr, length, prot & 7, fixed, source.name or "anon")
    t.mm.poke(addr, data)
    t.mm.find(addr).file_offset = offset
    return addr


MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4


@syscall(NR.mremap, stopped=True)
def mremap(t, old_addr, old_size, new_size, flags, new_addr):
    may_move, fixed, dontunmap = flags & MREMAP_MAYMOVE, flags & MREMAP_FIXED, flags & MREMAP_DONTUNMAP
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) or ((fixed or dontunmap) and not may_move):
        raise SyscallError(errno.EINVAL)
    if dontunmap and old_size != new_size:
        raise SyscallError(errno.EINVAL)  # mremap(2): MREMAP_DONTUNMAP moves, never resizes
    return t.mm.remap(old_addr, old_size, new_size, bool(may_move), new_addr if fixed else None, bool(dontunmap))


MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4


@syscall(NR.msync)
def msync(t, addr, length, flags):
    if addr % PAGE_SIZE or flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC) or \
            (flags & MS_ASYNC and flags & MS_SYNC):
        raise SyscallError(errno.EINVAL)
    end = addr + length
    pos = addr
    while pos < end:
        vma = t.mm.find(pos)
        if vma is None:
            raise SyscallError(errno.ENOMEM)
        pos = vma.end
    return 0  # private mappings have nothing to write back


@syscall(NR.mlock, NR.munlock)
def mlock(t, addr, length):
    return 0  # memory is never swapped out of the MemoryFile's memfd by snapbox


@syscall(NR.mlockall)
def mlockall(t, flags):
    return 0


@syscall(NR.munlockall)
def munlockall(t):
    return 0


@syscall(NR.munmap, stopped=True)
def munmap(t, addr, length):
    t.mm.unmap(addr, length)
    return 0


@syscall(NR.mprotect, stopped=True)
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


@syscall(NR.mincore)
def mincore(t, addr, length, vec):
    """Which pages of a mapped range are in memory: those the MemoryFile holds."""
    if addr % PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    end = addr + (length + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    out = bytearray()
    pos = addr
    while pos < end:
        vma = t.mm.find(pos)
        if vma is None:
            raise SyscallError(errno.ENOMEM)
        n = min(end, vma.end) - pos
        out += t.kernel.memfile.resident(vma.offset + (pos - vma.start), n)
        pos += n
    t.mm.write(vec, out)
    return 0
