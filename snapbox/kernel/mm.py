"""Address spaces: VMAs backed by MemoryFile ranges, mapped into the task's stub.

Every VMA, whatever its kind, is a range of the MemoryFile mapped MAP_SHARED|MAP_FIXED
into the stub. The sentry reads and writes application memory through its own map of the
same memfd, so no /proc/pid/mem and no ptrace peeks are needed.

Except in a clone (runtime.clones): there, the private mappings restored from the image are
"based": the stub maps the range of the clone's base memory (MemoryFile.base) MAP_PRIVATE,
so that the host kernel shares its pages between clones and gives a clone its own copy of a
page when it writes it, and the sentry reaches them through the stub (/proc/PID/mem). What
cannot stay so (a checkpoint, written-page tracking, madvise(MADV_DONTNEED), which must
read as zeros) makes the range the MemoryFile's again (unshare).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.filepages import FileCache, FilePages
from snapbox.kernel.vfs import MemRegular
from snapbox.memfile import PAGE_SIZE, MemoryFile, page_align
from snapbox.kernel.host import memory_and_swap
from snapbox.memfile.memfile import OutOfMemory
from snapbox.platform.atomic import cmpxchg32
from snapbox.platform.stub import APP_TOP, PROT_EXEC, PROT_READ, PROT_WRITE, Stub
from snapbox.state import nosave, savable

MMAP_MIN_ADDR = 0x10000
STACK_SIZE = 8 << 20  # the main thread's stack (RLIMIT_STACK's usual 8 MiB), mapped whole
MAX_MAP_COUNT = 65530  # vm.max_map_count: the most mappings an address space may have (ENOMEM past it)
STACK_TOP = APP_TOP - PAGE_SIZE  # a guard page between the stack and the stub
MMAP_TOP = STACK_TOP - STACK_SIZE - (1 << 30)  # mmap grows down from here, below a stack gap
VVAR = "[vvar]"  # the kind of the vDSO's data page (kernel/vdso.py): never made writable, never dropped


@savable
@dataclass(eq=False)
class Vma:
    """A mapped range [start, end) of one address space."""

    start: int
    end: int
    prot: int  # PROT_* bits the application asked for
    offset: int  # MemoryFile offset backing `start`; the range is contiguous in the file
    kind: str = "anon"  # anon, heap, stack, or the path of the file it maps
    file_offset: int = 0  # for file mappings: offset in that file (shown in /proc/pid/maps)
    # MAP_SHARED: the MemoryFile range is not this address space's own (a file's pages, or
    # memory shared with other processes): fork shares it and munmap does not free it.
    shared: bool = False
    # Counted against the memory limit: every own mapping but PROT_NONE reservations.
    charged: bool = True
    # A read-only private file mapping: the range lies in the file's cached pages, shared
    # with every other such mapping of the file (fork shares it, munmap drops a user).
    pages: FilePages | None = None
    # A clone's private mapping still mapped from its base memory (see the module's doc):
    # its data is what the stub sees, not the MemoryFile's range, which stays a hole.
    based: bool = nosave(default=False)
    # mlock(2)ed (VM_LOCKED): shown in /proc, refused by msync(MS_INVALIDATE) and
    # madvise(MADV_DONTNEED); not kept by fork. (The pages are not pinned on the host.)
    locked: bool = False
    # The file an mmap(2) of a file maps (an Inode): its pages past the file's last one are
    # not there (SIGBUS; EFAULT for the sentry's accesses), as Linux has it.
    node: object = None
    # Of a private copy of a file's pages: the file offset up to which it holds the file's
    # content (what lies past was past the file's end, and is read when the file grows).
    copied: int = 0
    # Where the stub's protection of such a mapping turns to none, the file's end when it
    # was last looked at (0: nowhere). A touch there faults, and the sentry looks again.
    guard: int = nosave(default=0)

    def split(self, at: int) -> Vma:
        """Cut this VMA at `at`; it keeps [start, at) and returns [at, end)."""
        tail = Vma(at, self.end, self.prot, self.offset + (at - self.start), self.kind,
                   self.file_offset + (at - self.start) if self.kind.startswith("/") or self.node is not None else 0,
                   self.shared,
                   self.charged, self.pages, self.based, self.locked, self.node, self.copied)
        if self.guard:
            tail.guard = max(self.guard, at)
            self.guard = self.guard if self.guard < at else 0
        hold(self)
        self.end = at
        return tail


@savable
@dataclass(eq=False)
class SharedMemory:
    """What a MAP_SHARED|MAP_ANONYMOUS mapping maps, as Linux's shmem file of the mapping's
    length: MemoryFile range [offset, offset+length), which mremap may map again elsewhere
    (never past its end: that is SIGBUS), given back when the last VMA of it goes."""

    offset: int
    length: int
    charged: bool = True  # counted against the memory limit (not a PROT_NONE reservation)
    users: int = 0  # VMAs mapping it, in every address space

    def size(self) -> int:
        return self.length


def hold(vma: Vma) -> None:
    """One more VMA maps what `vma` maps (a split, a fork's copy)."""
    if vma.pages is not None:
        vma.pages.users += 1
    if isinstance(vma.node, SharedMemory):
        vma.node.users += 1


@savable
@dataclass(eq=False)
class MemoryManager:
    """One address space: its VMAs, program break, and the stub that runs it."""

    memfile: MemoryFile
    cache: FileCache | None = None  # the sandbox's cached file pages (None: every mapping copies)
    vmas: list = field(default_factory=list)  # disjoint Vmas sorted by start
    brk_start: int = 0  # where the heap begins (page-aligned end of the loaded program)
    brk: int = 0  # the current program break; [brk_start, page_align(brk)) is the heap VMA
    exe: str = ""  # the path of the program mapped (its mappings count as VmExe, not VmLib)
    peak_size: int = 0  # VmPeak: the most bytes mapped at once
    peak_rss: int = 0  # VmHWM: the highest resident size seen
    lock_future: bool = False  # mlockall(MCL_FUTURE): mappings made from now on are locked
    env_area: tuple = (0, 0)  # where execve put the environment strings (/proc/PID/environ)
    auxv: bytes = b""  # the auxiliary vector execve gave the program (/proc/PID/auxv)
    # /proc/PID/coredump_filter: which mappings a core dump would hold (Linux's default; the
    # sandbox writes no core files, so it is only kept, inherited by fork and execve).
    coredump_filter: int = 0x33
    stub: Stub | None = nosave(default=None)  # host process running this address space
    stale: bool = nosave(default=False)  # a file mapping's end is to be guarded again (resync)
    starts: list = nosave(list)  # vma.start of each Vma, for bisect; kept in step with vmas
    mapped: int = nosave(default=0)  # bytes the VMAs cover (VmSize); kept in step with vmas

    def __post_init__(self) -> None:
        self.starts = [v.start for v in self.vmas]
        self.mapped = sum(v.end - v.start for v in self.vmas)

    def after_load(self, ctx) -> None:
        self.__post_init__()

    # -- lookup ---------------------------------------------------------------------------

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def _insert(self, vma: Vma) -> None:
        i = bisect.bisect_left(self.starts, vma.start)
        self.vmas.insert(i, vma)
        self.starts.insert(i, vma.start)

    def _free_gap(self, length: int) -> int:
        """Highest address below MMAP_TOP with `length` bytes unmapped (top-down, like Linux)."""
        top = MMAP_TOP
        for vma in reversed(self.vmas):
            if vma.start >= top:
                continue
            if vma.end <= top - length:
                return top - length
            top = min(top, vma.start)
        if top - length >= MMAP_MIN_ADDR:
            return top - length
        raise SyscallError(errno.ENOMEM, "no room in the address space")

    def low_gap(self, hint: int, length: int) -> int:
        """Where a MAP_32BIT mapping goes, as x86-64 Linux places it: in [1 GiB, 2 GiB), the
        hint if it is free there, else the lowest gap there; ENOMEM if none."""
        low, high = 1 << 30, 1 << 31
        if hint and hint % PAGE_SIZE == 0 and low <= hint and hint + length <= high \
                and not self.overlaps(hint, hint + length):
            return hint
        start = low
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        for vma in self.vmas[i:]:
            if vma.start >= start + length:
                break
            start = max(start, vma.end)
        if start + length > high:
            raise SyscallError(errno.ENOMEM, "no room below 2 GiB")
        return start

    def mapped_between(self, start: int, end: int) -> int:
        """Bytes of [start, end) that VMAs cover."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        return sum(min(v.end, end) - max(v.start, start) for v in self.vmas[i:] if v.start < end and v.end > start)

    def data_size(self) -> int:
        """Bytes of private writable mappings other than stacks: what RLIMIT_DATA limits
        (Linux's data_vm)."""
        return sum(v.end - v.start for v in self.vmas if v.prot & PROT_WRITE and not v.shared and v.kind != "stack")

    # -- mapping ----------------------------------------------------------------------------

    def _place(self, addr: int, length: int, fixed: bool) -> int:
        """Where a new mapping of `length` (page-aligned, not 0) bytes goes: `addr` itself
        if fixed (anything there is unmapped first: from the stub by the new mapping itself,
        see `_replacing`), else the hint if free, else a gap."""
        if fixed:
            self.check_fixed(addr, length)
            self.unmap(addr, length, host=False)
            return addr
        if addr and addr % PAGE_SIZE == 0 and addr >= MMAP_MIN_ADDR and addr + length <= APP_TOP \
                and not self.overlaps(addr, addr + length):
            return addr  # the hint is free: Linux honours it
        return self._free_gap(length)

    @contextlib.contextmanager
    def _replacing(self, addr: int, length: int, fixed: bool) -> Iterator[None]:
        """Around the making of a mapping that `_place` put at [addr, addr+length), which
        maps the whole range into the stub as its last step: the stub's mappings there (a
        fixed placement's) go with the new one's MAP_FIXED, one host call instead of two;
        if making it fails first, they are unmapped here."""
        try:
            yield
        except BaseException:
            if fixed and self.stub is not None:
                self.stub.unmap(addr, length)
            raise

    @staticmethod
    def check_fixed(addr: int, length: int) -> None:
        """Whether a mapping may be placed exactly at [addr, addr+length): EINVAL unaligned,
        ENOMEM past the top of the address space, EPERM below mmap_min_addr (the sandbox's
        processes never hold CAP_SYS_RAWIO: no NULL page, whatever the host lets a root stub do)."""
        if addr % PAGE_SIZE:
            raise SyscallError(errno.EINVAL)
        if addr + length > APP_TOP:
            raise SyscallError(errno.ENOMEM)
        if addr < MMAP_MIN_ADDR:
            raise SyscallError(errno.EPERM, "below mmap_min_addr")

    def map_anonymous(self, addr: int, length: int, prot: int, fixed: bool, kind: str = "anon") -> int:
        """Map zeroed memory; returns the address chosen. Maps into the stub at once."""
        length = page_align(length)
        if length == 0:
            raise SyscallError(errno.EINVAL)
        addr = self._place(addr, length, fixed)
        with self._replacing(addr, length, fixed):
            offset = self._alloc(length, prot)
            self.map_range(addr, length, prot, offset, kind).charged = prot != 0
        return addr

    def map_shared_anonymous(self, addr: int, length: int, prot: int, fixed: bool) -> int:
        """MAP_SHARED|MAP_ANONYMOUS: zeroed memory of its own (a SharedMemory) that fork
        shares rather than copies. Returns the address."""
        length = page_align(length)
        if length == 0:
            raise SyscallError(errno.EINVAL)
        addr = self._place(addr, length, fixed)
        with self._replacing(addr, length, fixed):
            shm = SharedMemory(self._alloc(length, prot), length, charged=prot != 0, users=1)
            vma = self.map_range(addr, length, prot, shm.offset, "anon", shared=True)
            vma.node, vma.charged = shm, prot != 0
        return addr

    def map_file(self, addr: int, length: int, prot: int, fixed: bool, pages: FilePages, file_offset: int,
                 kind: str) -> int:
        """A read-only private mapping of a cached file from `file_offset` (page-aligned):
        the file's pages themselves; past the file's last page, zeroed memory. Returns the
        address."""
        length = page_align(length)
        if length == 0 or prot & PROT_WRITE or file_offset % PAGE_SIZE:
            raise SyscallError(errno.EINVAL)
        addr = self._place(addr, length, fixed)
        cached = min(length, max(0, pages.length - file_offset))
        with self._replacing(addr, length, fixed):
            if cached:
                self.cache.fill(pages, file_offset, file_offset + cached)
            tail_offset = self._alloc(length - cached, prot) if cached < length else -1
            if cached:
                vma = self.map_range(addr, cached, prot, pages.offset + file_offset, kind)
                vma.file_offset, vma.pages, vma.charged = file_offset, pages, False
                pages.users += 1
            if tail_offset >= 0:
                tail = self.map_range(addr + cached, length - cached, prot, tail_offset, kind)
                tail.file_offset, tail.charged = file_offset + cached, prot != 0
        return addr

    def _alloc(self, length: int, prot: int) -> int:
        if prot and length > memory_and_swap():
            # vm.overcommit_memory 0 (__vm_enough_memory's heuristic): more than memory and
            # swap together could ever hold is refused at once.
            raise SyscallError(errno.ENOMEM, "more than the host's memory and swap")
        try:
            return self.memfile.alloc(length, charge=prot != 0)
        except OutOfMemory:
            raise SyscallError(errno.ENOMEM, "sandbox memory limit") from None

    def map_shared_pages(self, addr: int, length: int, prot: int, fixed: bool, offsets: list[int],
                         kind: str, file_offset: int) -> int:
        """A MAP_SHARED mapping of pages that live elsewhere in the MemoryFile (a file's
        pages, in any order): one VMA per run of pages that lie one after another there.
        Returns the address."""
        length = page_align(length)
        addr = self._place(addr, length, fixed)
        with self._replacing(addr, length, fixed):
            self._map_runs(addr, prot, offsets, kind, file_offset)
        return addr

    def _map_runs(self, addr: int, prot: int, offsets: list[int], kind: str, file_offset: int) -> list[Vma]:
        """Shared VMAs at `addr` (free) for pages at MemoryFile `offsets`, one per run of
        them that lie one after another, the first at `file_offset` of what they map."""
        out, start = [], 0
        for i in range(1, len(offsets) + 1):
            if i < len(offsets) and offsets[i] == offsets[i - 1] + PAGE_SIZE:
                continue
            vma = self.map_range(addr + start * PAGE_SIZE, (i - start) * PAGE_SIZE, prot, offsets[start], kind,
                                 shared=True)
            vma.file_offset = file_offset + start * PAGE_SIZE
            out.append(vma)
            start = i
        return out

    def map_shm(self, addr: int, length: int, prot: int, offset: int, kind: str) -> int:
        """Attach a System V shared memory segment, MemoryFile range [offset, offset+length),
        at `addr` (replacing what is there) or, if 0, where there is room. Returns the address."""
        addr = self._place(addr, page_align(length), bool(addr))
        with self._replacing(addr, page_align(length), bool(addr)):
            self.map_range(addr, page_align(length), prot, offset, kind, shared=True).charged = False
        return addr

    def unmap_within(self, addr: int, length: int, offset: int) -> None:
        """Unmap the shared VMAs in [addr, addr+length) that map MemoryFile range
        [offset, offset+length): a segment's attachment (shmdt), leaving others alone."""
        for vma in [v for v in self.vmas if addr <= v.start < addr + length]:
            if vma.shared and offset <= vma.offset < offset + length:
                self.unmap(vma.start, vma.end - vma.start)

    def map_range(self, addr: int, length: int, prot: int, offset: int, kind: str,
                  shared: bool = False) -> Vma:
        """Map MemoryFile range [offset, offset+length) at `addr` (already free)."""
        vma = Vma(addr, addr + length, prot, offset, kind, shared=shared)
        self._insert(vma)
        self.mapped += length
        self.peak_size = max(self.peak_size, self.mapped)
        if self.stub is not None:
            self.memfile.ensure_loaded(offset, length)
            self.stub.map(addr, length, prot, offset)
        return vma

    def remap(self, old: int, old_size: int, new_size: int, may_move: bool, fixed_to: int | None,
              keep_old: bool = False) -> int:
        """mremap(2): resize (and perhaps move) the mapping at `old`; returns its address.
        `keep_old` (MREMAP_DONTUNMAP): the source stays mapped, its pages dropped. Every
        argument is checked before anything changes, so a failed call has no effect."""
        old_size, new_size = page_align(old_size), page_align(new_size)
        if old % PAGE_SIZE or new_size == 0:
            raise SyscallError(errno.EINVAL)
        if fixed_to is not None:
            if fixed_to % PAGE_SIZE or fixed_to + new_size > APP_TOP:
                raise SyscallError(errno.EINVAL)
            if old < fixed_to + new_size and fixed_to < old + old_size:
                raise SyscallError(errno.EINVAL)  # the ranges may not overlap
        if self.find(old) is None:
            raise SyscallError(errno.EFAULT)
        if old_size == 0 and not self.find(old).shared:
            raise SyscallError(errno.EINVAL)  # only a shared mapping is mapped again by an old size of 0
        if fixed_to is None and new_size <= old_size and not keep_old and old_size:
            if new_size < old_size:  # the tail is unmapped, whatever it holds, as Linux
                self.unmap(old + new_size, old_size - new_size)
            return old
        self._rejoin(old, old + old_size)
        vma = self.find(old)
        if vma is None or old + old_size > vma.end:
            raise SyscallError(errno.EFAULT)
        if fixed_to is not None:
            self.check_fixed(fixed_to, new_size)
        if vma.shared and (keep_old or vma.node is None):
            # A System V segment's attachment, or a vfork child's view of its parent's memory.
            raise SyscallError(errno.EINVAL, "mremap that grows or moves this shared mapping is not supported")
        if fixed_to is not None:
            target = fixed_to
        elif not keep_old and old_size and not self.overlaps(old + old_size, old + new_size) \
                and old + new_size <= MMAP_TOP:
            target = old  # grows in place
        elif may_move:
            target = self._free_gap(new_size)
        else:
            raise SyscallError(errno.ENOMEM)
        prot, kind = vma.prot, vma.kind
        file_offset = vma.file_offset + (old - vma.start)
        if vma.shared:
            return self._remap_shared(vma, old, old_size, new_size, target, file_offset)
        offset = self._alloc(new_size, prot)  # the last check: ENOMEM at the memory limit
        self._copy(vma, old, min(old_size, new_size), offset)
        if keep_old:
            self.discard(old, old_size)
        else:  # grown in place, the new mapping replaces the old one in the stub
            self.unmap(old, old_size, host=target != old)
        if target != old:
            self.unmap(target, new_size, host=False)
        node, copied = vma.node, min(vma.copied, file_offset + old_size)
        moved = self.map_range(target, new_size, prot, offset, kind)
        moved.file_offset = file_offset
        moved.charged = prot != 0
        if node is not None:  # a file's mapping grown: its file's pages there, then none
            moved.node, moved.copied = node, copied
            self.sync_guard(moved)
        return target

    def _remap_shared(self, vma: Vma, old: int, old_size: int, new_size: int, target: int, file_offset: int) -> int:
        """mremap of a shared mapping (of a file, or of SharedMemory): the same pages at
        `target`, as many as the object has from `file_offset` on; past its end (which a
        SharedMemory never moves), none (SIGBUS). An old size of 0 leaves the old mapping
        where it is: two mappings of the same pages."""
        node, prot, kind = vma.node, vma.prot, vma.kind
        offsets = []
        for i in range(new_size // PAGE_SIZE):
            at = file_offset + i * PAGE_SIZE
            if isinstance(node, SharedMemory):
                # Past the end: the stub's protection there is none; the range mapped is any.
                offsets.append(node.offset + at if at < node.length else node.offset + at - node.length)
            else:
                offsets.append(node.page(at // PAGE_SIZE))
        if isinstance(node, SharedMemory):
            node.users += 1  # kept while the old mapping goes
        if old_size:
            self.unmap(old, old_size, host=target != old)
        if target != old:
            self.unmap(target, new_size, host=False)
        for piece in self._map_runs(target, prot, offsets, kind, file_offset):
            piece.node, piece.charged = node, False
            hold(piece)
            self.sync_guard(piece)
        if isinstance(node, SharedMemory):
            node.users -= 1
        return target

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.starts, end) - 1
        return i >= 0 and self.vmas[i].end > start

    def _isolate(self, start: int, end: int) -> list[Vma]:
        """Split VMAs so [start, end) is covered by whole VMAs; return those VMAs."""
        out = []
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.vmas) and self.vmas[i].start < end:
            vma = self.vmas[i]
            if vma.end <= start:
                i += 1
                continue
            if vma.start < start:
                tail = vma.split(start)
                self._insert(tail)
                i += 1
                continue
            if vma.end > end:
                tail = vma.split(end)
                self._insert(tail)
            out.append(vma)
            i += 1
        return out

    def unmap(self, addr: int, length: int, host: bool = True) -> None:
        """munmap(2). Not `host`: the stub keeps its mappings there, for the caller to map
        over at once (see `_replacing`)."""
        length = page_align(length)
        if addr % PAGE_SIZE or length == 0 or addr + length > APP_TOP:
            raise SyscallError(errno.EINVAL)
        end = addr + length
        doomed = self._isolate(addr, end)
        if not doomed:
            return
        if self.memfile.written is not None:
            self.memfile.written.forget(self, addr, end)
        for vma in doomed:
            i = self.vmas.index(vma)
            del self.vmas[i]
            del self.starts[i]
            self.mapped -= vma.end - vma.start
            self._release(vma)
        if self.stub is not None and host:
            self.stub.unmap(addr, length)

    def _release(self, vma: Vma) -> None:
        """Give back what a VMA being unmapped holds of the MemoryFile."""
        if vma.pages is not None:
            self.cache.unref(vma.pages)
        elif isinstance(vma.node, SharedMemory):
            vma.node.users -= 1
            if vma.node.users == 0:
                self.memfile.release(vma.node.offset, vma.node.length, vma.node.charged)
        elif not vma.shared:
            self.memfile.release(vma.offset, vma.end - vma.start, vma.charged)

    def _own_copy(self, vma: Vma, prot: int) -> None:
        """Give a VMA of cached file pages its own copy of them (it is being made writable)."""
        length = vma.end - vma.start
        offset = self._alloc(length, prot)
        self._copy(vma, vma.start, length, offset)
        pages, vma.pages, vma.offset, vma.charged, vma.based = vma.pages, None, offset, True, False
        self.cache.unref(pages)
        if self.stub is not None:
            self.stub.map(vma.start, length, prot, offset)
            self._resync(vma.start, vma.end)

    def protect(self, addr: int, length: int, prot: int) -> None:
        length = page_align(length)
        if addr % PAGE_SIZE or prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise SyscallError(errno.EINVAL)
        end = addr + length
        # mprotect(2): ENOMEM if part of the range is not mapped.
        pos = addr
        for vma in self._isolate(addr, end):
            if vma.start != pos:
                raise SyscallError(errno.ENOMEM)
            if vma.kind == VVAR and prot & PROT_WRITE:
                raise SyscallError(errno.EACCES)  # as Linux's vvar, which may never be written
            pos = vma.end
        if pos < end:
            raise SyscallError(errno.ENOMEM)
        for vma in self._isolate(addr, end):
            if vma.pages is not None:
                if prot & PROT_WRITE:
                    self._own_copy(vma, prot)
            elif not vma.shared and vma.charged != (prot != 0):
                # A reservation made usable is charged now (as Linux accounts at mprotect).
                if prot:
                    try:
                        self.memfile.charge(vma.end - vma.start)
                    except OutOfMemory:
                        raise SyscallError(errno.ENOMEM, "sandbox memory limit") from None
                else:
                    self.memfile.uncharge(vma.end - vma.start)
                vma.charged = prot != 0
            vma.prot = prot
        self._merge(addr, end)
        if self.stub is not None and length:
            self.stub.protect(addr, length, prot)
            self._resync(addr, end)

    def lock(self, addr: int, length: int, on: bool) -> None:
        """mlock or munlock [addr, addr+length), widened to whole pages: ENOMEM if part of
        it is not mapped."""
        end = page_align(addr + length)
        addr -= addr % PAGE_SIZE
        pos = addr
        for vma in self._isolate(addr, end):
            if vma.start != pos:
                raise SyscallError(errno.ENOMEM)
            pos = vma.end
        if pos < end:
            raise SyscallError(errno.ENOMEM)
        for vma in self._isolate(addr, end):
            vma.locked = on
        self._merge(addr, end)

    def locked_bytes(self) -> int:
        """VmLck: the bytes of locked mappings."""
        return sum(v.end - v.start for v in self.vmas if v.locked)

    def _rejoin(self, start: int, end: int) -> None:
        """A clone's mapping that a madvise cut into based and own pieces is one mapping to
        the program (mremap takes it whole): the based pieces become own, and all one VMA."""
        pieces = []
        vma = self.find(start)
        while vma is not None and vma.start < end:
            pieces.append(vma)
            vma = self.find(vma.end)
        if len({v.based for v in pieces}) > 1:
            for v in pieces:
                if v.based:
                    self._unbase(v)
            self._merge(start, end)

    def _merge(self, start: int, end: int) -> None:
        """Join VMAs in and around [start, end) that go on from each other (as Linux does:
        a range made read-only and writable again is one mapping, which mremap takes whole)."""
        i = max(bisect.bisect_right(self.starts, start) - 2, 0)
        while i + 1 < len(self.vmas) and self.vmas[i].start <= end:
            a, b = self.vmas[i], self.vmas[i + 1]
            if (a.end == b.start and b.offset == a.offset + (a.end - a.start) and a.prot == b.prot
                    and a.kind == b.kind and a.shared == b.shared and a.charged == b.charged
                    and a.based == b.based and a.locked == b.locked and a.pages is None and b.pages is None
                    and a.node is b.node and a.copied == b.copied
                    and (not a.kind.startswith("/") and a.node is None
                         or b.file_offset == a.file_offset + (a.end - a.start))):
                a.end = b.end
                a.guard = a.guard or b.guard
                if isinstance(b.node, SharedMemory):
                    b.node.users -= 1  # one VMA of it fewer
                del self.vmas[i + 1]
                del self.starts[i + 1]
            else:
                i += 1

    def discard(self, addr: int, length: int) -> None:
        """Drop the pages of [addr, addr+length): they read as zeros from now on."""
        length = page_align(length)
        pos, end = addr, addr + length
        while pos < end:
            vma = self.find(pos)
            if vma is None:
                raise SyscallError(errno.ENOMEM)
            if vma.kind == VVAR:
                raise SyscallError(errno.EINVAL)  # as Linux's vvar (VM_PFNMAP): its pages stay
            n = min(end, vma.end) - pos
            # A file's cached pages (based or not) already read as the file does.
            if vma.based and vma.pages is None:  # dropped in the stub, they would read as the base's
                for piece in self._isolate(pos, pos + n):
                    self._unbase(piece, keep=False)
            elif vma.pages is None:
                self.memfile.punch(vma.offset + (pos - vma.start), n)
            pos += n

    def _unbase(self, vma: Vma, keep: bool = True) -> None:
        """Make a based VMA's data the MemoryFile's (its range there, a hole until now):
        with `keep` what the stub sees now, else zeros; the stub maps the range shared.
        A file's cached pages are the cache's to copy (FileCache.own)."""
        if vma.pages is not None:
            self.cache.own(vma.pages)
        elif keep:
            self._copy(vma, vma.start, vma.end - vma.start, vma.offset)
        else:
            self.memfile.punch(vma.offset, vma.end - vma.start)
        vma.based = False
        self.stub.map(vma.start, vma.end - vma.start, vma.prot, vma.offset)
        self._resync(vma.start, vma.end)

    def unshare(self) -> None:
        """No VMA mapped from the base any more: every page is the MemoryFile's."""
        for vma in self.vmas:
            if vma.based:
                self._unbase(vma)

    def _copy(self, vma: Vma, addr: int, length: int, dst: int) -> None:
        """Copy [addr, addr+length) of `vma` to the fresh (all-zero) MemoryFile range at
        `dst`: holes stay holes, and so do a based VMA's all-zero pages."""
        if not vma.based:
            self.memfile.copy(dst, vma.offset + (addr - vma.start), length)
            return
        zero = bytes(PAGE_SIZE)
        for pos in range(0, length, 1 << 20):
            chunk = memoryview(self.stub.peek(addr + pos, min(1 << 20, length - pos)))
            for page in range(0, len(chunk), PAGE_SIZE):
                if chunk[page : page + PAGE_SIZE] != zero:
                    self.memfile.write(dst + pos + page, chunk[page : page + PAGE_SIZE])

    def set_brk(self, new: int) -> int:
        """brk(2): move the break; returns the new break, or the old one on failure."""
        if new < self.brk_start:
            return self.brk
        old_end = page_align(self.brk)
        new_end = page_align(new)
        if new_end > old_end:
            if self.overlaps(old_end, new_end) or new_end > MMAP_TOP:
                return self.brk
            self.map_anonymous(old_end, new_end - old_end, PROT_READ | PROT_WRITE, fixed=True, kind="heap")
        elif new_end < old_end:
            self.unmap(new_end, old_end - new_end)
        self.brk = new
        return self.brk

    def fork(self) -> MemoryManager:
        """A private copy of this address space (fork(2)): every VMA's data copied to new
        MemoryFile ranges, holes left as holes. Not yet attached to a stub."""
        vmas = []
        for v in self.vmas:
            if v.shared or v.pages is not None:
                vmas.append(Vma(v.start, v.end, v.prot, v.offset, v.kind, v.file_offset, v.shared, v.charged,
                                v.pages, v.based, node=v.node, copied=v.copied))  # a clone's fork maps the file's pages from the base too
                hold(v)
                continue
            try:
                offset = self.memfile.alloc(v.end - v.start, charge=v.charged)
            except OutOfMemory:
                for done in vmas:
                    self._release(done)
                raise SyscallError(errno.ENOMEM, "sandbox memory limit") from None
            self._copy(v, v.start, v.end - v.start, offset)
            vmas.append(Vma(v.start, v.end, v.prot, offset, v.kind, v.file_offset, charged=v.charged, node=v.node,
                            copied=v.copied))
        return MemoryManager(memfile=self.memfile, cache=self.cache, vmas=vmas, brk_start=self.brk_start,
                             brk=self.brk, exe=self.exe, env_area=self.env_area, auxv=self.auxv,
                             coredump_filter=self.coredump_filter)

    def attach(self, stub: Stub, lazy: bool = False) -> None:
        """Give this address space a (fresh) stub and map every VMA into it. A stub only
        maps loaded memory (a lazy restore may not have loaded all yet), unless `lazy`: the
        caller then has the stub's first touches of memory not yet loaded caught."""
        self.stub = stub
        if self.memfile.written is not None:
            self.memfile.written.follow(self)
        for vma in self.vmas:
            if vma.based:
                stub.map_base(vma.start, vma.end - vma.start, vma.prot, vma.offset)
                continue
            if not lazy:
                self.memfile.ensure_loaded(vma.offset, vma.end - vma.start)
            stub.map(vma.start, vma.end - vma.start, vma.prot, vma.offset)
        self.stale = False
        self._resync(0, APP_TOP)

    # -- file mappings past their file's end ----------------------------------------------
    #
    # The stub's protection is none past a mapped file's last page, so that a touch there
    # faults (file_fault: SIGBUS, or the file has grown since). Only a stopped thread of the
    # stub can change it: a truncation that the call cannot guard at once (another
    # process's mappings, or a call on the fast path) leaves the address space `stale`, to
    # be guarded again at its next stop (resync).

    def backs(self, addr: int, length: int, node) -> None:
        """The VMAs of [addr, addr+length), just mapped by mmap(2), map file `node`: what
        lies past its last page is not there."""
        for vma in self._isolate(addr, addr + page_align(length)):
            vma.node = node
            vma.copied = page_align(node.size())
            self.sync_guard(vma)

    def _eof(self, vma: Vma) -> int:
        """The address in a file mapping from which its file has no pages (within it)."""
        return min(max(vma.start + page_align(vma.node.size()) - vma.file_offset, vma.start), vma.end)

    def sync_guard(self, vma: Vma) -> None:
        """Make the stub's protection of file mapping `vma` agree with its file's size now:
        none for the pages past its end, the mapping's own for the rest."""
        self._take(vma)
        if self.stub is None:
            return
        eof, now = self._eof(vma), vma.guard or vma.end
        if eof < now:
            self.stub.protect(eof, now - eof, 0)
        elif eof > now:
            self.stub.protect(now, eof - now, vma.prot)
        vma.guard = eof if eof < vma.end else 0

    def _take(self, vma: Vma) -> None:
        """A private copy of a file's pages takes the content of the pages the file has
        grown into since it was made (only a file of the writable layer changes size here)."""
        if vma.shared or vma.pages is not None or not isinstance(vma.node, MemRegular):
            return
        have = page_align(vma.node.size())
        if have > vma.copied:
            start = max(vma.start + vma.copied - vma.file_offset, vma.start)
            end = min(vma.start + have - vma.file_offset, vma.end)
            if start < end:
                data = vma.node.read(vma.file_offset + (start - vma.start), end - start)
                self._put(vma, start, data.ljust(end - start, b"\0"))
        vma.copied = have

    def truncated(self, node, size: int, now: bool) -> None:
        """File `node` is `size` bytes now, shorter: this address space's mappings of it
        end there. `now`: a thread of its stub is stopped, to guard them at once."""
        for vma in self.vmas:
            if vma.node is node:
                vma.copied = min(vma.copied, page_align(size))  # the copy's pages past it are gone
                if now:
                    self.sync_guard(vma)
                else:
                    self.stale = True

    def resync(self) -> None:
        """Guard every file mapping's end where its file ends now (a thread of the stub is
        stopped)."""
        self.stale = False
        for vma in self.vmas:
            if vma.node is not None:
                self.sync_guard(vma)

    def _resync(self, start: int, end: int) -> None:
        """The stub has mapped or protected [start, end) afresh: guard its files' ends again."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.vmas) and self.vmas[i].start < end:
            vma = self.vmas[i]
            if vma.node is not None and vma.end > start:
                vma.guard = 0
                self.sync_guard(vma)
            i += 1

    def file_fault(self, addr: int) -> bool | None:
        """A touch of `addr` the stub refused (a thread of it is stopped): None if not at a
        file mapping's guarded end; True if the page is past its file's end (SIGBUS); False
        if the file has grown to it since (the stub may touch it now)."""
        vma = self.find(addr)
        guarded = vma is not None and vma.node is not None and vma.guard and addr >= vma.guard
        if self.stale:
            self.resync()
        elif guarded:
            self.sync_guard(vma)
        if not guarded:
            return None
        return vma.guard != 0 and addr >= vma.guard

    def past_eof(self, vma: Vma, addr: int, length: int) -> bool:
        """Whether [addr, addr+length) of file mapping `vma` reaches past its file's pages
        (a private copy first takes what the file has grown into)."""
        if addr + length > self._eof(vma):
            return True
        self._take(vma)
        return False

    # -- access ------------------------------------------------------------------------------

    def _spans(self, addr: int, length: int, need: int):
        """Yield (vma, address, length) pieces of [addr, addr+length); EFAULT if any part is
        unmapped or lacks the `need` protection."""
        end = addr + length
        while addr < end:
            vma = self.find(addr)
            if vma is None or vma.prot & need != need:
                raise SyscallError(errno.EFAULT)
            n = min(end, vma.end) - addr
            if vma.node is not None and self.past_eof(vma, addr, n):
                raise SyscallError(errno.EFAULT)
            yield vma, addr, n
            addr += n

    def _get(self, vma: Vma, addr: int, n: int) -> bytes:
        if vma.based:
            return self.stub.peek(addr, n)
        return self.memfile.read(vma.offset + (addr - vma.start), n)

    def _put(self, vma: Vma, addr: int, data: bytes | bytearray | memoryview) -> None:
        if vma.based:
            self.stub.poke(addr, data)
        else:
            self.memfile.write(vma.offset + (addr - vma.start), data)

    def can_put(self, addr: int, length: int) -> None:
        """EFAULT unless the first byte of [addr, addr+length) may be written (if any is to
        be): what a read checks before it takes data from a pipe or socket, so that a read
        into memory it cannot write leaves the data for the next one, as Linux's copy does."""
        if not length:
            return
        vma = self.find(addr)
        if vma is None or not vma.prot & PROT_WRITE or vma.node is not None and self.past_eof(vma, addr, 1):
            raise SyscallError(errno.EFAULT)

    def read(self, addr: int, length: int) -> bytes:
        if length == 0:
            return b""
        vma = self.find(addr)
        if vma is not None and addr + length <= vma.end and vma.prot & PROT_READ and vma.node is None:
            return self._get(vma, addr, length)
        return b"".join(self._get(v, a, n) for v, a, n in self._spans(addr, length, PROT_READ))

    def read_some(self, addr: int, length: int) -> bytes:
        """The bytes of [addr, addr+length) up to the first that cannot be read: what a
        write(2) from a buffer that faults part-way writes, as Linux's copy stops there.
        EFAULT if not even the first can be read."""
        with contextlib.suppress(SyscallError):
            return self.read(addr, length)
        out, pos, end = [], addr, addr + length
        while pos < end:
            vma = self.find(pos)
            if vma is None or not vma.prot & PROT_READ:
                break
            n = min(end, vma.end) - pos
            if vma.node is not None:
                n = min(n, self._eof(vma) - pos)
                if n <= 0:
                    break
                self._take(vma)
            out.append(self._get(vma, pos, n))
            pos += n
        if not out:
            raise SyscallError(errno.EFAULT)
        return b"".join(out)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        if length == 0:
            return
        vma = self.find(addr)
        if vma is not None and addr + length <= vma.end and vma.prot & PROT_WRITE and vma.node is None:
            self._put(vma, addr, data)
            return
        spans = list(self._spans(addr, length, PROT_WRITE))  # check all before writing any
        view = memoryview(data)
        for v, a, n in spans:
            self._put(v, a, view[:n])
            view = view[n:]

    def debug_read(self, addr: int, length: int) -> bytes:
        """Read as a debugger does (/proc/PID/mem): whatever the protection, up to the first
        unmapped byte."""
        out = bytearray()
        end = addr + length
        while addr < end and (vma := self.find(addr)) is not None:
            n = min(end, vma.end) - addr
            out += self._get(vma, addr, n)
            addr += n
        return bytes(out)

    def debug_write(self, addr: int, data: bytes) -> int:
        """Write as a debugger does, into the process's own memory whatever its protection,
        up to the first byte that is unmapped or not its own to change (a file's cached
        pages, a shared mapping it may not write); returns the bytes written."""
        done = 0
        while done < len(data) and (vma := self.find(addr + done)) is not None:
            if vma.pages is not None or (vma.shared and not vma.prot & PROT_WRITE):
                break
            n = min(len(data) - done, vma.end - (addr + done))
            self._put(vma, addr + done, memoryview(data)[done:done + n])
            done += n
        return done

    def cmpxchg32(self, addr: int, expected: int, desired: int) -> int:
        """Atomically store `desired` in the aligned word at `addr` if it holds `expected`
        (other threads may be updating it at this moment); return what it held. EFAULT
        unless the word is readable and writable."""
        vma = self.find(addr)
        if vma is None or addr % 4 or not vma.prot & PROT_READ or not vma.prot & PROT_WRITE:
            raise SyscallError(errno.EFAULT)
        if vma.based:  # the clone's base, private to this process: only the stub reaches it
            old = int.from_bytes(self.stub.peek(addr, 4), "little")
            if old == expected:
                self.stub.poke(addr, desired.to_bytes(4, "little"))
            return old
        offset = vma.offset + (addr - vma.start)
        self.memfile.ensure_loaded(offset, 4)
        return cmpxchg32(self.memfile.map, offset, expected, desired)

    def poke(self, addr: int, data: bytes) -> None:
        """Write regardless of protection (the loader filling read-only segments)."""
        view = memoryview(data)
        for v, a, n in self._spans(addr, len(data), 0):
            self._put(v, a, view[:n])
            view = view[n:]

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string; ENAMETOOLONG past `limit` bytes, EFAULT if unreadable."""
        out = bytearray()
        while len(out) < limit:
            vma = self.find(addr)
            if vma is None or not vma.prot & PROT_READ:
                raise SyscallError(errno.EFAULT)
            n = min(vma.end - addr, limit - len(out), PAGE_SIZE - addr % PAGE_SIZE)
            chunk = self._get(vma, addr, n)
            nul = chunk.find(b"\0")
            if nul >= 0:
                out += chunk[:nul]
                return bytes(out)
            out += chunk
            addr += n
        raise SyscallError(errno.ENAMETOOLONG)

    def release_all(self) -> None:
        """Free every VMA's own memory (the address space is gone)."""
        for vma in self.vmas:
            self._release(vma)
        self.vmas.clear()
        self.starts.clear()
        self.mapped = 0

    # -- accounting (/proc) -------------------------------------------------------------------

    def size(self) -> int:
        """Bytes mapped (VmSize)."""
        return self.mapped

    def resident(self, vma: Vma) -> int:
        """Bytes of `vma` that hold data, what Linux counts as resident: of its MemoryFile
        range (a based one: of the base) those not holes, of a file's cached pages those
        read in."""
        length = vma.end - vma.start
        if vma.pages is not None:
            lo, hi = vma.file_offset, vma.file_offset + length
            return sum(max(0, min(end, hi) - max(start, lo)) for start, end in vma.pages.filled)
        return self.memfile.data_bytes(vma.offset, length, in_base=vma.based)

    def usage(self) -> dict[str, int]:
        """What /proc/PID/status says of this address space, in bytes: VmSize, VmRSS and
        its RssAnon, RssFile and RssShmem parts, VmData, VmStk, VmExe, VmLib; the peaks
        VmPeak and VmHWM as highest seen (a mapping, or a look at the RSS)."""
        out = dict.fromkeys(("RssAnon", "RssFile", "RssShmem", "VmData", "VmStk", "VmExe", "VmLib"), 0)
        for v in self.vmas:
            length, rss = v.end - v.start, self.resident(v)
            file = v.kind.startswith("/")
            out["RssShmem" if v.shared and not file else "RssFile" if file else "RssAnon"] += rss
            if v.kind == "stack":
                out["VmStk"] += length
            elif file and v.prot & PROT_EXEC:
                out["VmExe" if v.kind == self.exe else "VmLib"] += length
            elif v.prot & PROT_WRITE and not v.shared:
                out["VmData"] += length
        out["VmSize"] = self.size()
        out["VmLck"] = self.locked_bytes()
        out["VmRSS"] = out["RssAnon"] + out["RssFile"] + out["RssShmem"]
        self.peak_size = max(self.peak_size, out["VmSize"])
        self.peak_rss = max(self.peak_rss, out["VmRSS"])
        out["VmPeak"], out["VmHWM"] = self.peak_size, self.peak_rss
        return out
