"""Memory syscalls: brk, mmap (anonymous and private file mappings), munmap, mprotect, mremap,
madvise, msync, mlock, mincore."""

from __future__ import annotations

import errno
import logging

from snapbox.kernel.creds import CAP_IPC_LOCK, capable
from snapbox.kernel.devices import DeviceFile
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.mm import MAX_MAP_COUNT
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import iovecs
from snapbox.kernel.task import RLIM_INFINITY, RLIMIT_DEFAULTS
from snapbox.kernel.vfs import F_SEAL_FUTURE_WRITE, F_SEAL_WRITE, LowerNode, MemRegular, RegularFile
from snapbox.memfile import PAGE_SIZE, page_align
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
MAP_LOCKED = 0x2000
RLIMIT_MEMLOCK = 8
MAP_STACK = 0x20000
MAP_POPULATE = 0x8000
MAP_32BIT = 0x40
RLIMIT_DATA, RLIMIT_AS = 2, 9


@syscall(NR.brk, stopped=True)
def brk(t, addr):
    mm = t.mm
    grows = page_align(addr) - page_align(mm.brk) if addr > mm.brk else 0
    if addr > mm.brk and (addr - mm.brk_start > _limit(t, RLIMIT_DATA) or not _may_grow(t, grows)):
        return mm.brk  # growing, as check_data_rlimit and may_expand_vm refuse it: the break stays
    return mm.set_brk(addr)


def _limit(t, resource: int) -> int:
    return t.tg.rlimits.get(resource, RLIMIT_DEFAULTS[resource])[0]


def _may_grow(t, length: int, replaced: int = 0, data: bool = False) -> bool:
    """Whether the address space may take `length` more bytes (`replaced` of them already
    mapped) under RLIMIT_AS, and, for private writable memory (`data`), RLIMIT_DATA: as
    Linux's may_expand_vm (whose soft limit of 0 gives way to the hard one, for Valgrind)."""
    more = length - replaced
    if t.mm.size() + more > _limit(t, RLIMIT_AS):
        return False
    soft, hard = t.tg.rlimits.get(RLIMIT_DATA, RLIMIT_DEFAULTS[RLIMIT_DATA])
    if not data or soft == RLIM_INFINITY:
        return True
    return t.mm.data_size() + more <= (soft or hard)


@syscall(NR.mmap, stopped=True)
def mmap(t, addr, length, prot, flags, fd, offset):
    flags = i32(flags)
    if flags & MAP_LOCKED:
        _may_lock(t, length, errno.EAGAIN)
    addr = _map(t, addr, length, prot, flags, fd, offset)
    if flags & MAP_LOCKED or t.mm.lock_future:
        t.mm.lock(addr, length, True)
    return addr


def _may_lock(t, length: int, over: int) -> None:
    """Whether `length` more bytes may be locked (RLIMIT_MEMLOCK, which CAP_IPC_LOCK lifts):
    EPERM if the limit is 0, else `over` if the process would pass it."""
    if capable(t.tg, CAP_IPC_LOCK):
        return
    limit = t.tg.rlimits.get(RLIMIT_MEMLOCK, RLIMIT_DEFAULTS[RLIMIT_MEMLOCK])[0]
    if limit == 0:
        raise SyscallError(errno.EPERM)
    if t.mm.locked_bytes() + length > limit:
        raise SyscallError(over)


def _map(t, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    kind = flags & MAP_SHARED_VALIDATE
    if kind == 0 or length == 0 or offset % PAGE_SIZE:
        raise SyscallError(errno.EINVAL)
    source = None
    if flags & MAP_ANONYMOUS and kind == MAP_SHARED_VALIDATE:
        raise SyscallError(errno.EINVAL)  # anonymous memory is shared or private, as do_mmap says
    if not flags & MAP_ANONYMOUS:
        source = t.fds.get_open(i32(fd))
        if kind != MAP_PRIVATE and prot & PROT_WRITE and not source.writable():
            raise SyscallError(errno.EACCES)  # do_mmap's order: access first, then whether it maps
        if not source.readable():
            raise SyscallError(errno.EACCES)
        if isinstance(source, DeviceFile) and source.node.name == "zero":
            source = None  # a mapping of /dev/zero is anonymous memory
        elif not isinstance(source, RegularFile):
            raise SyscallError(errno.ENODEV)
        elif offset + (length + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE >= 1 << 63:
            raise SyscallError(errno.EOVERFLOW)  # a negative offset, or past the largest file position
    fixed = bool(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE))
    if length > 1 << 46 or len(t.mm.vmas) > MAX_MAP_COUNT:
        raise SyscallError(errno.ENOMEM)  # (do_mmap: past vm.max_map_count mappings)
    if flags & MAP_FIXED_NOREPLACE and t.mm.mapped_between(addr, addr + page_align(length)):
        raise SyscallError(errno.EEXIST)  # any part of the range mapped already
    if flags & MAP_32BIT and not fixed:
        addr, fixed = t.mm.low_gap(addr, page_align(length)), True  # free: placed there exactly
    replaced = t.mm.mapped_between(addr, addr + page_align(length)) if fixed else 0
    if not _may_grow(t, page_align(length), replaced, kind == MAP_PRIVATE and prot & PROT_WRITE
                     and not flags & MAP_GROWSDOWN):
        raise SyscallError(errno.ENOMEM)  # RLIMIT_AS or RLIMIT_DATA
    if source is None:
        if kind != MAP_PRIVATE:
            return t.mm.map_shared_anonymous(addr, length, prot & 7, fixed)
        return t.mm.map_anonymous(addr, length, prot & 7, fixed, "stack" if flags & MAP_GROWSDOWN else "anon")
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
            addr = t.mm.map_shared_pages(addr, length, prot & 7, fixed, pages, source.name, offset)
            t.mm.backs(addr, length, node)
            return addr
    node = source.node
    if kind == MAP_PRIVATE and not prot & PROT_WRITE and isinstance(node, LowerNode) and t.mm.cache is not None:
        # Read-only and private: the file's cached pages, shared with every such mapping.
        pages = t.mm.cache.get(node)
        if pages is not None:
            try:
                addr = t.mm.map_file(addr, length, prot & 7, fixed, pages, offset, source.name or "anon")
            finally:
                t.mm.cache.forget_unused(pages)
            t.mm.backs(addr, length, node)
            return addr
    # A private (or read-only shared) file mapping: the file's pages copied into fresh
    # memory; the bytes of its last page past the end of the file read as zeros, the pages
    # after it are not there (SIGBUS), until the file grows to them (but for a file of a
    # read-write bind mount, whose pages past its end read as zeros).
    data = source.read(t, min(length, max(0, source.node.size() - offset)), offset)
    addr = t.mm.map_anonymous(addr, length, prot & 7, fixed, source.name or "anon")
    t.mm.poke(addr, data)
    t.mm.find(addr).file_offset = offset
    if not source._on_host():  # (a host file's size is the host's to change: not followed)
        t.mm.backs(addr, length, node)
    return addr


MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4


@syscall(NR.mremap, stopped=True)
def mremap(t, old_addr, old_size, new_size, flags, new_addr):
    may_move, fixed, dontunmap = flags & MREMAP_MAYMOVE, flags & MREMAP_FIXED, flags & MREMAP_DONTUNMAP
    if flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) or ((fixed or dontunmap) and not may_move):
        raise SyscallError(errno.EINVAL)
    if dontunmap and old_size != new_size:
        raise SyscallError(errno.EINVAL)  # mremap(2): MREMAP_DONTUNMAP moves, never resizes
    vma = t.mm.find(old_addr)
    grows = page_align(new_size) - page_align(old_size)
    if vma is not None and grows > 0 and not _may_grow(t, grows, data=bool(vma.prot & PROT_WRITE) and not vma.shared):
        raise SyscallError(errno.ENOMEM)  # RLIMIT_AS or RLIMIT_DATA
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
        if flags & MS_INVALIDATE and vma.locked:
            raise SyscallError(errno.EBUSY)
        pos = vma.end
    return 0  # private mappings have nothing to write back


@syscall(NR.mlock)
def mlock(t, addr, length):
    """Lock a range (VM_LOCKED: see Vma.locked) within RLIMIT_MEMLOCK."""
    _may_lock(t, length, errno.ENOMEM)
    t.mm.lock(addr, length, True)
    return 0


@syscall(NR.munlock)
def munlock(t, addr, length):
    t.mm.lock(addr, length, False)
    return 0


MLOCK_ONFAULT = 1


@syscall(NR.mlock2)
def mlock2(t, addr, length, flags):
    if flags & ~MLOCK_ONFAULT:
        raise SyscallError(errno.EINVAL)
    return mlock(t, addr, length)


MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_PREFERRED_MANY = 0, 1, 2, 3, 4, 5
MPOL_F_NODE, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED = 1, 2, 4
MPOL_MODE_FLAGS = 0xC000  # MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES
MAX_NUMNODES = 1024  # the kernel's node mask size; the sandbox has node 0 only


def _nodemask(t, nmask: int, maxnode: int) -> int:
    """The node mask argument: node bits below `maxnode - 1`, as Linux reads it (nodes the
    sandbox does not have make the call fail with EINVAL)."""
    bits = maxnode - 1 if maxnode else 0
    if bits > MAX_NUMNODES * 8 or bits < 0:
        raise SyscallError(errno.EINVAL)
    if not nmask or not bits:
        return 0
    raw = int.from_bytes(t.mm.read(nmask, (bits + 63) // 64 * 8), "little") & ((1 << bits) - 1)
    return raw


def _policy(mode: int, mask: int) -> tuple[int, int]:
    base = mode & ~MPOL_MODE_FLAGS
    if base > MPOL_PREFERRED_MANY or mode < 0:
        raise SyscallError(errno.EINVAL)
    if base in (MPOL_DEFAULT, MPOL_LOCAL):
        if mask:
            raise SyscallError(errno.EINVAL)
    elif mask & ~1 or (not mask and base != MPOL_PREFERRED):
        raise SyscallError(errno.EINVAL)  # node 0 is the only one there is
    return base, mask


@syscall(NR.set_mempolicy)
def set_mempolicy(t, mode, nmask, maxnode):
    """Kept and reported; the sandbox has one memory node, so any policy places alike."""
    t.mempolicy = _policy(i32(mode), _nodemask(t, nmask, maxnode))
    return 0


@syscall(NR.get_mempolicy)
def get_mempolicy(t, mode, nmask, maxnode, addr, flags):
    if flags & ~(MPOL_F_NODE | MPOL_F_ADDR | MPOL_F_MEMS_ALLOWED):
        raise SyscallError(errno.EINVAL)
    if flags & MPOL_F_MEMS_ALLOWED and flags & (MPOL_F_NODE | MPOL_F_ADDR):
        raise SyscallError(errno.EINVAL)
    if flags & MPOL_F_ADDR and t.mm.find(addr) is None:
        raise SyscallError(errno.EFAULT)
    policy, mask = t.mempolicy
    if flags & MPOL_F_MEMS_ALLOWED:
        policy, mask = 0, 1
    elif flags & MPOL_F_NODE:
        policy = 0  # the node the page (or the next allocation) is on: there is one
    if nmask:
        if maxnode - 1 < 1:
            raise SyscallError(errno.EINVAL)
        if policy in (MPOL_DEFAULT, MPOL_LOCAL) and not flags & MPOL_F_MEMS_ALLOWED:
            mask = 0
        t.mm.write(nmask, mask.to_bytes((maxnode - 1 + 63) // 64 * 8, "little"))
    if mode:
        t.mm.write(mode, policy.to_bytes(4, "little"))
    return 0


MPOL_MF_STRICT, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL = 1, 2, 4


@syscall(NR.mbind)
def mbind(t, addr, length, mode, nmask, maxnode, flags):
    """A policy for a range: checked like set_mempolicy's, over mapped memory (EFAULT for
    holes); with one node, nothing moves."""
    if addr % PAGE_SIZE or flags & ~(MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL):
        raise SyscallError(errno.EINVAL)
    _policy(i32(mode), _nodemask(t, nmask, maxnode))
    end = addr + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    pos = addr
    while pos < end:
        vma = t.mm.find(pos)
        if vma is None:
            raise SyscallError(errno.EFAULT)
        pos = vma.end
    return 0


def _peer_mm(t, pid: int):
    task = t.kernel.tasks.pidns.tasks.get(i32(pid)) if i32(pid) > 0 else None
    if task is None or task.tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    return task.tg.mm


def _vm_copy(src, src_vecs, dst, dst_vecs) -> int:
    """Bytes copied from `src`'s iovecs to `dst`'s, in order, a page at most at a time:
    stops at the first range either side cannot reach (EFAULT if that is the first)."""
    done = 0
    out = [(a, n) for a, n in dst_vecs if n]
    oi, opos = 0, 0
    for addr, n in src_vecs:
        pos, end = addr, addr + n
        while pos < end and oi < len(out):
            step = min(end - pos, PAGE_SIZE - pos % PAGE_SIZE, out[oi][1] - opos)
            try:
                dst.write(out[oi][0] + opos, src.read(pos, step))
            except SyscallError:
                if done:
                    return done
                raise SyscallError(errno.EFAULT) from None
            pos += step
            opos += step
            done += step
            if opos == out[oi][1]:
                oi, opos = oi + 1, 0
    return done


@syscall(NR.process_vm_readv)
def process_vm_readv(t, pid, local_iov, liovcnt, remote_iov, riovcnt, flags):
    """Copy from another process's memory (of the sandbox) into the caller's."""
    if flags:
        raise SyscallError(errno.EINVAL)
    local, remote = iovecs(t, local_iov, liovcnt), iovecs(t, remote_iov, riovcnt)
    return _vm_copy(_peer_mm(t, pid), remote, t.mm, local)


@syscall(NR.process_vm_writev)
def process_vm_writev(t, pid, local_iov, liovcnt, remote_iov, riovcnt, flags):
    """Copy from the caller's memory into another process's (of the sandbox)."""
    if flags:
        raise SyscallError(errno.EINVAL)
    local, remote = iovecs(t, local_iov, liovcnt), iovecs(t, remote_iov, riovcnt)
    return _vm_copy(t.mm, local, _peer_mm(t, pid), remote)


MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


@syscall(NR.mlockall)
def mlockall(t, flags):
    """Lock every mapping (MCL_CURRENT) and, with MCL_FUTURE, every one made later."""
    if not flags or flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) or flags == MCL_ONFAULT:
        raise SyscallError(errno.EINVAL)
    if flags & MCL_CURRENT:
        _may_lock(t, t.mm.size() - t.mm.locked_bytes(), errno.ENOMEM)
        for vma in list(t.mm.vmas):
            t.mm.lock(vma.start, vma.end - vma.start, True)
    else:
        _may_lock(t, 0, errno.ENOMEM)
    t.mm.lock_future = bool(flags & MCL_FUTURE)
    return 0


@syscall(NR.munlockall)
def munlockall(t):
    for vma in list(t.mm.vmas):
        vma.locked = False
    t.mm.lock_future = False
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
    # anonymous memory, what Linux guarantees for DONTNEED); not of locked memory. Other
    # advice is a hint only.
    if advice in (4, 8, 9):
        pos, end = addr, addr + length
        while pos < end and (vma := t.mm.find(pos)) is not None:
            if vma.locked:
                raise SyscallError(errno.EINVAL)
            pos = vma.end
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
