"""Which pages of the MemoryFile were written since the last look: what an incremental
checkpoint (each round of a live migration) has to save.

Every write into application memory goes through a mapping of the memfd: a stub's (the
program's own stores) or the sentry's (system calls filling buffers, signal frames, the
copies fork and mremap make). Both are tracked with userfaultfd write-protection in async
mode (see snapbox.platform.uffd): the host kernel notes each first write to a protected page
and nothing stops; `collect()` scans the tracked mappings with PAGEMAP_SCAN, which returns
the written ranges and protects them again.

Only the file's data extents are ever protected or scanned. A tracked page never protected
counts as written, and protecting it costs a page table entry: protecting holes would give
a program's large reservations (a runtime's gigabytes of PROT_NONE) page tables they never
had. A hole that gets data is new in the extents, which the caller compares with the last
look's (Checkpointing.memory_delta), so nothing is missed: a write to a page the scans did
not cover stays noted until one does.

A stub mapping made while tracking is registered as it is made (Stub.on_map); one taken
away (munmap, MAP_FIXED over it, exec, exit) is scanned first, so that what was written
through it is not forgotten.

Where the host lacks the feature (before Linux 6.7, or userfaultfd(2) filtered out, as by
Docker's default seccomp profile), `start` raises OSError and the caller falls back to
comparing page digests.
"""

from __future__ import annotations

import bisect
import ctypes
import os
from dataclasses import dataclass, field

from snapbox.memfile import MemoryFile
from snapbox.memfile.memfile import merge_runs
from snapbox.platform import uffd
from snapbox.platform.stub import APP_TOP, StubError

METHOD = "write-protection (userfaultfd in async mode, PAGEMAP_SCAN)"


@dataclass(eq=False)
class _Followed:
    fd: int  # the stub's userfaultfd, registered in write-protect mode
    pagemap: int  # the stub's /proc/PID/pagemap
    mm: object  # the MemoryManager it runs now (an exec gives it a new one)


@dataclass(eq=False)
class WrittenPages:
    """Write tracking over the sentry's map of `memfile` and every followed stub."""

    memfile: MemoryFile
    own: int = -1  # userfaultfd over the sentry's own map of the memfd
    own_pagemap: int = -1
    base: int = 0  # where the sentry's map starts
    stubs: dict = field(default_factory=dict)  # stub pid -> _Followed
    carry: list = field(default_factory=list)  # (offset, length) runs written, from scans done early

    @classmethod
    def start(cls, memfile: MemoryFile, mms) -> WrittenPages:
        """Protect the data of `memfile` in the sentry's map and in the stubs of `mms`;
        from here on, writes are noted. OSError if this host cannot track them."""
        self = cls(memfile)
        try:
            self.own = uffd.open_own(uffd.WP_FEATURES)
            self.own_pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            anchor = (ctypes.c_char * 1).from_buffer(memfile.map)
            self.base = ctypes.addressof(anchor)
            del anchor
            uffd.register_writes(self.own, self.base, len(memfile.map))
            extents = memfile.extents()
            for off, n in extents:
                uffd.protect(self.own, self.base + off, n)
            for mm in mms:
                if mm.stub is not None:
                    self.follow(mm, extents)
        except (OSError, StubError) as e:
            self.close()
            raise OSError(getattr(e, "errno", None), str(e)) from None
        memfile.written = self
        return self

    def follow(self, mm, extents: list[tuple[int, int]] | None = None) -> None:
        """Track the stub of `mm`: with `extents` (its VMAs are mapped), protect their
        data now; each mapping the stub makes from here on is tracked as it is made. A
        stub followed already (an exec) just runs `mm` now."""
        stub = mm.stub
        known = self.stubs.get(stub.pid)
        if known is not None:
            known.mm = mm
            return
        fd = uffd.open_for(stub, uffd.WP_FEATURES)
        try:
            pagemap = os.open(f"/proc/{stub.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        self.stubs[stub.pid] = _Followed(fd, pagemap, mm)
        for vma in mm.vmas if extents is not None else ():
            uffd.register_writes(fd, vma.start, vma.end - vma.start)
            for addr, n in _data_of(vma, extents):
                uffd.protect(fd, addr, n)

        def on_map(addr: int, length: int, offset: int) -> None:
            uffd.register_writes(fd, addr, length)
            for off, n in self.memfile.extents(start=offset, end=offset + length):
                uffd.protect(fd, addr + (off - offset), n)
        stub.on_map = on_map

    def forget(self, mm, start: int = 0, end: int = APP_TOP) -> None:
        """[start, end) of `mm`'s stub is about to be unmapped: keep what was written there."""
        followed = self.stubs.get(mm.stub.pid) if mm.stub is not None else None
        if followed is None or followed.mm is not mm:
            return
        spans = [(v.offset, v.offset + v.end - v.start) for v in mm.vmas if v.start < end and v.end > start]
        if spans:
            extents = self.memfile.extents(start=min(a for a, _ in spans), end=max(b for _, b in spans))
            self.carry += self._scan(followed, extents, start, end)

    def retire(self, mm) -> None:
        """`mm`'s stub is about to end: keep what it wrote, and let it go."""
        if mm.stub is None or mm.stub.pid not in self.stubs:
            return
        self.forget(mm)
        followed = self.stubs.pop(mm.stub.pid)
        mm.stub.on_map = None
        os.close(followed.fd)
        os.close(followed.pagemap)

    def collect(self) -> list[tuple[int, int]]:
        """The (offset, length) runs of the MemoryFile written since the last collect (or
        start), sorted and merged; each is protected again."""
        runs, self.carry = self.carry, []
        extents = self.memfile.extents()
        for followed in list(self.stubs.values()):
            runs += self._scan(followed, extents)
        for off, n in extents:
            for lo, hi in uffd.written(self.own_pagemap, self.base + off, self.base + off + n):
                runs.append((lo - self.base, hi - lo))
        return merge_runs(runs)

    def give_back(self, runs: list[tuple[int, int]]) -> None:
        """Runs collected for a save that failed: the next collect returns them again."""
        self.carry += runs

    def _scan(self, followed: _Followed, extents: list[tuple[int, int]], start: int = 0,
              end: int = APP_TOP) -> list[tuple[int, int]]:
        """The written pages of a stub's VMAs in [start, end) that hold data (`extents`),
        as MemoryFile runs."""
        mm = followed.mm
        out = []
        i = max(bisect.bisect_right(mm.starts, start) - 1, 0)
        try:
            while i < len(mm.vmas) and mm.vmas[i].start < end:
                v = mm.vmas[i]
                i += 1
                for addr, n in _data_of(v, extents):
                    a, b = max(addr, start), min(addr + n, end)
                    for lo, hi in uffd.written(followed.pagemap, a, b) if a < b else ():
                        out.append((v.offset + (lo - v.start), hi - lo))
        except OSError:
            # The stub is gone (killed from outside): count all it shared as written (its
            # own memory is freed, which the extents show).
            out += [(v.offset, v.end - v.start) for v in mm.vmas if v.shared and v.start < end and v.end > start]
        return out

    def close(self) -> None:
        """Stop tracking (pages stay as they are; the protection goes with the fds)."""
        for followed in self.stubs.values():
            os.close(followed.fd)
            os.close(followed.pagemap)
            if followed.mm.stub is not None:
                followed.mm.stub.on_map = None
        self.stubs.clear()
        for fd in (self.own, self.own_pagemap):
            if fd >= 0:
                os.close(fd)
        self.own = self.own_pagemap = -1
        if self.memfile.written is self:
            self.memfile.written = None


def _data_of(vma, extents: list[tuple[int, int]]):
    """The (address, length) parts of `vma` whose MemoryFile pages are in `extents`
    (sorted, disjoint runs)."""
    first, last = vma.offset, vma.offset + (vma.end - vma.start)
    i = max(bisect.bisect_right(extents, (first, 1 << 62)) - 1, 0)
    while i < len(extents) and extents[i][0] < last:
        off, n = extents[i]
        a, b = max(off, first), min(off + n, last)
        if a < b:
            yield vma.start + (a - first), b - a
        i += 1
