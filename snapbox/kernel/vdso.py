"""The sandbox's vDSO: clock_gettime, gettimeofday and time without a trip to the sentry.

Programs read the clock often (CPython's start-up: about a thousand times) and expect it to
cost nanoseconds, as Linux's vDSO makes it. A stub has no host vDSO (its mappings are the
application's), and a syscall answered by the sentry costs microseconds. So every process
gets snapbox's own vDSO (platform/vdso.c, built with the package) at VDSO_ADDR, named by
AT_SYSINFO_EHDR, and the vvar page just below it. The vDSO reads the host's clock with a
host syscall the stubs' seccomp filter lets through (stub.VDSO_TAG) and adds the sandbox's
offsets (time.Timekeeper), which the sentry publishes in the vvar page whenever they change:
at every start or restore, and when the program sets the realtime clock.

The vvar page is one page of the MemoryFile, mapped shared and read-only into every process
(mprotect cannot make it writable, madvise cannot drop it: as on Linux); each process has
its own copy of the vDSO's code, private like Linux's. Both are saved in images like any
memory: a restored process goes on with the vDSO it had, reading offsets published anew.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass

from snapbox.kernel.mm import MMAP_TOP, VVAR, MemoryManager
from snapbox.kernel.time import Timekeeper
from snapbox.memfile import PAGE_SIZE, MemoryFile, page_align
from snapbox.platform.stub import PROT_EXEC, PROT_READ
from snapbox.state import savable

log = logging.getLogger("snapbox.vdso")

VVAR_ADDR = MMAP_TOP  # in the gap between the mmap area and the stack, above everything mmap places
VDSO_ADDR = VVAR_ADDR + PAGE_SIZE
VDSO = "[vdso]"  # the code's mapping's name in /proc/PID/maps (the page's: mm.VVAR)
IMAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "platform", "vdso.so")

# The vvar page (platform/vdso.c): a sequence number, then two slots of (monotonic offset,
# realtime offset) in ns; the number's lowest bit says which slot holds the offsets.
_SEQ = struct.Struct("<Q")
_SLOT = struct.Struct("<qq")


def _image() -> bytes | None:
    """The vDSO the package was built with, if it was (setup.py needs a C compiler)."""
    try:
        with open(IMAGE, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


@savable
@dataclass(eq=False)
class Vdso:
    """The vvar page and the vDSO's code in one sandbox's MemoryFile."""

    offset: int  # MemoryFile offset of the vvar page
    code: bytes  # the vDSO image, copied into each process that execs
    seq: int = 0  # the vvar page's sequence number, last published

    @classmethod
    def create(cls, memfile: MemoryFile) -> Vdso | None:
        """A vDSO for a new sandbox; None where the package has none."""
        code = _image()
        if code is None:
            log.info("no vDSO built (%s): clock reads are syscalls", IMAGE)
            return None
        return cls(offset=memfile.alloc(PAGE_SIZE, charge=False), code=code)

    def map_into(self, mm: MemoryManager) -> int:
        """Map the vvar page and a copy of the code into a new address space; returns the
        vDSO's address (AT_SYSINFO_EHDR)."""
        mm.map_shm(VVAR_ADDR, PAGE_SIZE, PROT_READ, self.offset, VVAR)
        mm.map_anonymous(VDSO_ADDR, page_align(len(self.code)), PROT_READ | PROT_EXEC, fixed=True, kind=VDSO)
        mm.poke(VDSO_ADDR, self.code)
        return VDSO_ADDR

    def publish(self, memfile: MemoryFile, timekeeper: Timekeeper) -> None:
        """Write the timekeeper's offsets in the slot the next sequence number names, then
        the number: a reader never sees half of them. Images leave the page out (`unsaved`):
        the restore's resume of time writes it anew, with a number no reader saw before."""
        self.seq += 1
        memfile.write(self.offset + _SEQ.size + (self.seq & 1) * _SLOT.size,
                      _SLOT.pack(timekeeper.offset, timekeeper.realtime_offset))
        memfile.write(self.offset, _SEQ.pack(self.seq))

    def unsaved(self) -> tuple[int, int]:
        """The MemoryFile range an image leaves out: the vvar page."""
        return self.offset, PAGE_SIZE
