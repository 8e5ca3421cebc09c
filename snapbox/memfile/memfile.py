"""The MemoryFile: a memfd, the sentry's own map of it, and a savable first-fit page allocator.

Offsets handed out by the allocator are stable across save and restore: the memory
section records data by offset, so a restored MemoryFile has the same layout and every
saved reference into it (a VMA, a tmpfs page) stays valid.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from snapbox.state import ImageError, SnapboxError, nosave, savable

PAGE_SIZE = 4096
# The memfd's size. It is sparse: only pages that hold data take memory.
FILE_SIZE = 1 << 38
# One memory-section chunk covers at most this many bytes of the file.
RUN_LIMIT = 4 << 20

_CHUNK_HEAD = struct.Struct("<QIB")
CODEC_NONE = 0
CODEC_ZSTD = 1
_ZERO_PAGE = bytes(PAGE_SIZE)


def page_align(n: int) -> int:
    """Round up to a page boundary."""
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def page_round_down(n: int) -> int:
    return n & ~(PAGE_SIZE - 1)


class OutOfMemory(SnapboxError):
    """The MemoryFile has no room left for an allocation."""


@savable
@dataclass(eq=False)
class MemoryFile:
    """All application memory: a memfd of FILE_SIZE bytes and the allocator over it."""

    high: int = 0  # offsets at or past `high` have never been handed out
    free: list = field(default_factory=list)  # sorted, disjoint [offset, length] holes below `high`
    allocated: int = 0  # bytes currently handed out
    fd: int = nosave(default=-1)  # the host memfd; stubs inherit it as STUB_MEMFD
    map: mmap.mmap = nosave(default=None)  # the sentry's own MAP_SHARED view of the memfd
    view: memoryview = nosave(default=None)

    def __post_init__(self) -> None:
        if self.fd < 0:
            self._open()

    def after_load(self, ctx) -> None:
        self._open()

    def _open(self) -> None:
        self.fd = os.memfd_create("snapbox-memory", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, FILE_SIZE)
        self.map = mmap.mmap(self.fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)

    def close(self) -> None:
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- allocation -------------------------------------------------------------------

    def alloc(self, length: int) -> int:
        """Hand out `length` bytes (rounded up to pages) of zeroed memory; returns the offset."""
        length = page_align(length)
        for i, (off, n) in enumerate(self.free):
            if n >= length:
                if n == length:
                    del self.free[i]
                else:
                    self.free[i] = [off + length, n - length]
                self.allocated += length
                return off
        if self.high + length > FILE_SIZE:
            raise OutOfMemory(f"memory file is full ({self.allocated} bytes in use)")
        off = self.high
        self.high += length
        self.allocated += length
        return off

    def release(self, offset: int, length: int) -> None:
        """Give back a range: its pages are dropped from the memfd and it reads as zeros."""
        length = page_align(length)
        if length == 0:
            return
        self.punch(offset, length)
        self.allocated -= length
        i = bisect.bisect_left(self.free, [offset, 0])
        self.free.insert(i, [offset, length])
        # Merge with the neighbours so the free list stays short.
        if i + 1 < len(self.free) and offset + length == self.free[i + 1][0]:
            self.free[i][1] += self.free[i + 1][1]
            del self.free[i + 1]
        if i > 0 and self.free[i - 1][0] + self.free[i - 1][1] == offset:
            self.free[i - 1][1] += self.free[i][1]
            del self.free[i]
        if self.free and self.free[-1][0] + self.free[-1][1] == self.high:
            self.high = self.free.pop()[0]

    def punch(self, offset: int, length: int) -> None:
        """Drop the pages of a range (it stays allocated and reads as zeros)."""
        self.map.madvise(mmap.MADV_REMOVE, offset, length)

    # -- access -------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.view[offset : offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.view[offset : offset + len(data)] = data

    def copy(self, dst: int, src: int, length: int) -> None:
        self.map.move(dst, src, length)

    # -- save and load --------------------------------------------------------------------

    def data_runs(self) -> Iterator[tuple[int, int]]:
        """Yield (offset, length) runs that hold data: holes and all-zero pages left out."""
        pos = 0
        while pos < self.high:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                return  # ENXIO: no data past pos
            if start >= self.high:
                return
            end = min(os.lseek(self.fd, start, os.SEEK_HOLE), self.high)
            yield from self._nonzero_runs(start, end)
            pos = end

    def _nonzero_runs(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        view = self.view
        run = -1
        for off in range(start, end, PAGE_SIZE):
            zero = view[off : off + PAGE_SIZE] == _ZERO_PAGE
            if zero:
                if run >= 0:
                    yield run, off - run
                    run = -1
            else:
                if run < 0:
                    run = off
                elif off - run >= RUN_LIMIT:
                    yield run, off - run
                    run = off
        if run >= 0:
            yield run, end - run

    def save_chunks(self, compress: bool) -> Iterator[bytes]:
        """The memory section's chunks: each is a header (offset, length, codec) and data."""
        cctx = zstandard.ZstdCompressor(level=1) if compress else None
        for off, n in self.data_runs():
            raw = self.view[off : off + n]
            if cctx is not None:
                yield _CHUNK_HEAD.pack(off, n, CODEC_ZSTD) + cctx.compress(raw)
            else:
                yield _CHUNK_HEAD.pack(off, n, CODEC_NONE) + bytes(raw)

    def load_chunks(self, chunks: Iterable[bytes]) -> int:
        """Fill the memfd from memory-section chunks; returns the bytes restored."""
        dctx = zstandard.ZstdDecompressor()
        total = 0
        for chunk in chunks:
            if len(chunk) < _CHUNK_HEAD.size:
                raise ImageError("image memory section holds a malformed chunk")
            off, n, codec = _CHUNK_HEAD.unpack_from(chunk)
            if off % PAGE_SIZE or off + n > self.high or n > RUN_LIMIT:
                raise ImageError("image memory section holds a chunk outside the memory file")
            body = memoryview(chunk)[_CHUNK_HEAD.size :]
            if codec == CODEC_ZSTD:
                try:
                    data = dctx.decompress(body, max_output_size=n)
                except zstandard.ZstdError as e:
                    raise ImageError(f"image memory section is corrupt ({e})") from None
            elif codec == CODEC_NONE:
                data = body
            else:
                raise ImageError(f"image memory section uses an unknown codec {codec}")
            if len(data) != n:
                raise ImageError("image memory section holds a chunk of the wrong size")
            self.view[off : off + n] = data
            total += n
        return total
