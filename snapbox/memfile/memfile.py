"""The MemoryFile: a memfd, the sentry's own map of it, and a savable first-fit page allocator.

Offsets handed out by the allocator are stable across save and restore: the memory
section records data by offset, so a restored MemoryFile has the same layout and every
saved reference into it (a VMA, a tmpfs page) stays valid.
"""

from __future__ import annotations

import bisect
import collections
import concurrent.futures
import hashlib
import mmap
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import zstandard

from snapbox.memfile.lazy import Chunk, LazyLoader
from snapbox.state import ImageError, SnapboxError, nosave, savable
from snapbox.state.image import CHUNK_HEADER_SIZE

PAGE_SIZE = 4096
# The memfd's size. It is sparse: only pages that hold data take memory.
FILE_SIZE = 1 << 38
# One memory-section chunk covers at most this many bytes of the file.
RUN_LIMIT = 4 << 20

_CHUNK_HEAD = struct.Struct("<QIBH")  # file offset, length, codec, padding before the data
CHUNK_HEAD_SIZE = _CHUNK_HEAD.size
CODEC_NONE = 0
CODEC_ZSTD = 1
_ZERO_PAGE = bytes(PAGE_SIZE)


def _data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The (offset, length) runs of file `fd` in [start, end) that are not holes."""
    pos = start
    extents = []
    while pos < end:
        try:
            first = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break  # ENXIO: no data past pos
        if first >= end:
            break
        stop = min(os.lseek(fd, first, os.SEEK_HOLE), end)
        extents.append((first, stop - first))
        pos = stop
    return extents


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
    limit: int = 0  # the sandbox's memory limit in bytes (0: none); charged may not pass it
    charged: int = 0  # bytes counted against the limit (allocations minus PROT_NONE reservations)
    fd: int = nosave(default=-1)  # the host memfd; stubs inherit it as STUB_MEMFD
    map: mmap.mmap = nosave(default=None)  # the sentry's own MAP_SHARED view of the memfd
    view: memoryview = nosave(default=None)
    saved_bytes: int = nosave(default=0)  # data bytes the last save_chunks wrote (before compression)
    lazy: LazyLoader | None = nosave(default=None)  # chunks of the image restored from, still to load
    # Tracking of written pages, while incremental checkpoints are made (snapbox.kernel.written).
    written: object = nosave(default=None)
    closer: weakref.finalize | None = nosave(default=None)  # closes fd, once, when called or collected
    # A clone's base memory (runtime.clones): a read-only file laid out as this memory file
    # was in the image; the processes' private mappings are mapped from it, private, by
    # their stubs, and so share its pages with every other clone until they write them.
    base: int = nosave(default=-1)
    base_closer: weakref.finalize | None = nosave(default=None)
    # The memfd opened again, once per thread that writes through it (`fill_from`): a file
    # description, and so a file position, of that thread's own.
    writers: threading.local = nosave(threading.local)
    writer_fds: list = nosave(list)

    def __post_init__(self) -> None:
        if self.fd < 0:
            self._open()

    def after_load(self, ctx) -> None:
        self._open(getattr(ctx, "memory", None))
        base = getattr(ctx, "base", None)
        if base is not None:
            try:
                self.base = os.open(base, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SnapboxError(f"cannot open the base memory {base} ({e.strerror})") from None
            self.base_closer = weakref.finalize(self, os.close, self.base)

    def copy_from_base(self, skip: list[tuple[int, int]]) -> None:
        """Copy what the base holds outside `skip` (sorted, disjoint runs: the private
        mappings, which stay in the base) into this memory file, at the same offsets."""
        for off, n in _without(_data_extents(self.base, 0, self.high), skip):
            self.copy_in_from_base(off, n)

    def copy_in_from_base(self, off: int, n: int) -> None:
        """Copy the base's [off, off+n) into this memory file, at the same offsets."""
        done = 0
        while done < n:
            got = os.preadv(self.base, [self.view[off + done : off + n]], off + done)
            if got <= 0:
                raise SnapboxError(f"the base memory ends before offset {off + done:#x}")
            done += got

    def drop_base(self) -> None:
        """Nothing is mapped from the base any more (this clone's memory is all its own)."""
        if self.base >= 0:
            self.base_closer()
            self.base = -1

    def _open(self, adopt: str | None = None) -> None:
        """A new memfd, or with `adopt` the memory file at that path (/proc/PID/fd/N of
        another process's MemoryFile: memory loaded before the restore began)."""
        if adopt is None:
            self.fd = os.memfd_create("snapbox-memory", os.MFD_CLOEXEC)
        else:
            try:
                self.fd = os.open(adopt, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise SnapboxError(f"cannot open the memory loaded for the restore ({e.strerror})") from None
        # A MemoryFile dropped without close() (an image refused half way through its
        # decoding) still gives its fd back.
        self.closer = weakref.finalize(self, os.close, self.fd)
        os.ftruncate(self.fd, FILE_SIZE)
        self.map = mmap.mmap(self.fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)

    def close(self) -> None:
        self.drop_base()
        self.stop_loading()
        for fd in self.writer_fds:
            os.close(fd)
        self.writer_fds.clear()
        self.writers = threading.local()
        if self.written is not None:
            self.written.close()
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            self.closer()
            self.fd = -1

    # -- allocation -------------------------------------------------------------------

    def charge(self, length: int) -> None:
        """Count `length` bytes against the limit; OutOfMemory if they do not fit."""
        if self.limit and self.charged + length > self.limit:
            raise OutOfMemory(f"memory limit of {self.limit} bytes reached")
        self.charged += length

    def uncharge(self, length: int) -> None:
        self.charged -= length

    def alloc(self, length: int, charge: bool = True) -> int:
        """Hand out `length` bytes (rounded up to pages) of zeroed memory; returns the offset.
        Unless `charge` is false (a reservation), the bytes count against the limit."""
        length = page_align(length)
        if charge:
            self.charge(length)
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

    def release(self, offset: int, length: int, charged: bool = True) -> None:
        """Give back a range: its pages are dropped from the memfd and it reads as zeros."""
        length = page_align(length)
        if length == 0:
            return
        if charged:
            self.uncharge(length)
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
        if self.lazy is not None:
            self.lazy.discard(offset, length)
        self.map.madvise(mmap.MADV_REMOVE, offset, length)

    # -- access -------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        if self.lazy is not None:
            self.lazy.ensure(offset, length)
        return bytes(self.view[offset : offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.lazy is not None:
            self.lazy.ensure(offset, len(data))
        self.view[offset : offset + len(data)] = data

    def fill_from(self, fd: int, file_offset: int, offset: int, length: int) -> None:
        """Copy `length` bytes of file `fd` from `file_offset` into the fresh range at
        `offset`, in the host kernel (sendfile: no page of it faulted in here). A file that
        ends sooner is EOFError."""
        writer = getattr(self.writers, "fd", -1)
        if writer < 0:
            writer = self.writers.fd = os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC)
            self.writer_fds.append(writer)
        os.lseek(writer, offset, os.SEEK_SET)
        done = 0
        while done < length:
            n = os.sendfile(writer, fd, file_offset + done, length - done)
            if n == 0:
                raise EOFError(f"the file ended {length - done} bytes early")
            done += n

    def copy(self, dst: int, src: int, length: int) -> None:
        """Copy a range's data to another (fresh, all-zero) range; holes stay holes."""
        self.ensure_loaded(src, length)
        for start, n in self.extents(start=src, end=src + length):
            self.map.move(dst + (start - src), start, n)

    # -- save and load --------------------------------------------------------------------

    def data_runs(self, skip: list[tuple[int, int]] = ()) -> Iterator[tuple[int, int]]:
        """Yield (offset, length) runs that hold data: holes, all-zero pages and the sorted,
        disjoint, page-aligned (offset, length) ranges of `skip` left out."""
        for off, n in self._extents(skip):
            yield from self._nonzero_runs(off, off + n)

    def resident(self, offset: int, length: int) -> bytearray:
        """One byte per page of [offset, offset+length) (page-aligned): 1 where the memfd
        holds the page, 0 for a hole (never written, dropped, or still in a lazy image)."""
        out = bytearray(length // PAGE_SIZE)
        for start, n in self.extents(start=offset, end=offset + length):
            first, last = (start - offset) // PAGE_SIZE, (start + n - offset + PAGE_SIZE - 1) // PAGE_SIZE
            out[first:last] = b"\1" * (last - first)
        return out

    def data_bytes(self, offset: int, length: int, in_base: bool = False) -> int:
        """How much of [offset, offset+length) holds data (is not a hole): of this memory
        file, or with `in_base` of the clone's base."""
        fd = self.base if in_base else self.fd
        if fd < 0:
            return 0
        return sum(n for _, n in _data_extents(fd, offset, offset + length))

    def extents(self, skip: list[tuple[int, int]] = (), start: int = 0,
                end: int | None = None) -> list[tuple[int, int]]:
        """The memfd's data extents (not holes) in [start, end) (default: below `high`),
        outside `skip`, as sorted (offset, length) runs. They may hold all-zero pages."""
        extents = _data_extents(self.fd, start, self.high if end is None else end)
        return list(_without(extents, skip)) if skip else extents

    def _extents(self, skip: list[tuple[int, int]] = ()) -> Iterator[tuple[int, int]]:
        """extents(skip) cut into pieces of at most RUN_LIMIT bytes."""
        return _pieces(self.extents(skip))

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

    def save_chunks(self, compress: bool, position: Callable[[], int] | None = None,
                    progress: Callable[[int], None] | None = None,
                    skip: list[tuple[int, int]] = ()) -> Iterator[tuple[bytes, int]]:
        """The memory section's chunks, as (chunk, CRC-32 of the chunk): each chunk is a
        header (offset, length, codec, padding), the padding, and the data.

        With compression, pieces of the file are scanned for zero pages, compressed and
        checksummed on a pool of threads (zstd and zlib release the GIL), one per core, and
        come out in order. Without, `position()` tells where the chunk will land in the
        image, and padding puts every run's data on a page boundary of the file, so a
        restore could map it instead of copying it. Ranges in `skip` are left out.
        """
        done = self.saved_bytes = 0
        if not compress:
            for off, n in self.data_runs(skip):
                pad = 0
                if position is not None:
                    pad = -(position() + CHUNK_HEADER_SIZE + _CHUNK_HEAD.size) % PAGE_SIZE
                chunk = _CHUNK_HEAD.pack(off, n, CODEC_NONE, pad) + bytes(pad) + self.view[off : off + n]
                yield chunk, zlib.crc32(chunk)
                done += n
                self.saved_bytes = done
                if progress is not None:
                    progress(done)
            return
        workers = os.cpu_count() or 1

        def compress_piece(piece: tuple[int, int]) -> tuple[list[tuple[bytes, int]], int]:
            return _chunks_of(self.view, 0, list(self._nonzero_runs(piece[0], piece[0] + piece[1])), True)

        for chunks, data in _in_order(compress_piece, self._extents(skip), workers):
            yield from chunks
            done = self.saved_bytes = done + data
            if progress is not None and data:
                progress(done)

    def save_changed(self, compress: bool, old: dict[int, bytes], digests: dict[int, bytes],
                     skip: list[tuple[int, int]] = (),
                     progress: Callable[[int], None] | None = None) -> Iterator[tuple[bytes, int]]:
        """An incremental image's memory chunks: the pages whose content differs from
        `old` (page offset -> digest, the parent's). Each piece of the file is copied once,
        and both digested and saved from that copy, so what is saved is what its digest
        says even while the program writes on (a page changed between a digest and a
        later read, then changed back, would be saved with content no digest knows).
        Fills `digests` with the BLAKE2b digest (128 bits) of every page that holds data
        now, outside `skip`. Pieces go on a thread per core and come out in order."""
        self.finish_loading()

        def piece_chunks(piece: tuple[int, int]) -> tuple[list[tuple[bytes, int]], int, dict[int, bytes]]:
            base, n = piece
            copy = memoryview(bytes(self.view[base : base + n]))
            mine: dict[int, bytes] = {}
            for rel in range(0, n, PAGE_SIZE):
                page = copy[rel : rel + PAGE_SIZE]
                if page != _ZERO_PAGE:
                    mine[base + rel] = hashlib.blake2b(page, digest_size=16).digest()
            runs = page_runs(off for off, d in mine.items() if old.get(off) != d)
            chunks, data = _chunks_of(copy, base, runs, compress)
            return chunks, data, mine

        done = self.saved_bytes = 0
        for chunks, data, mine in _in_order(piece_chunks, self._extents(skip), os.cpu_count() or 1):
            digests.update(mine)
            yield from chunks
            done = self.saved_bytes = done + data
            if progress is not None and data:
                progress(done)

    def save_runs(self, compress: bool, runs: list[tuple[int, int]], zeros: list[tuple[int, int]],
                  progress: Callable[[int], None] | None = None) -> Iterator[tuple[bytes, int]]:
        """The memory chunks of the pages in `runs` (sorted, page-aligned) that hold data;
        the all-zero ones are added to `zeros` as runs instead (an incremental image drops
        them). Each piece is copied once and saved from the copy. Pieces go on a thread
        per core and come out in order."""
        self.finish_loading()

        def batch_chunks(batch: list[tuple[int, int]]) -> tuple[list[tuple[bytes, int]], int, list[tuple[int, int]]]:
            chunks, size, empty = [], 0, []
            for base, n in batch:
                copy = memoryview(bytes(self.view[base : base + n]))
                data = []
                for rel in range(0, n, PAGE_SIZE):
                    (empty if copy[rel : rel + PAGE_SIZE] == _ZERO_PAGE else data).append(base + rel)
                more, got = _chunks_of(copy, base, page_runs(data), compress)
                chunks += more
                size += got
            return chunks, size, page_runs(empty)

        done = self.saved_bytes = 0
        for chunks, data, empty in _in_order(batch_chunks, _batches(runs), os.cpu_count() or 1):
            zeros.extend(empty)
            yield from chunks
            done = self.saved_bytes = done + data
            if progress is not None and data:
                progress(done)

    def load_chunks(self, chunks: Iterable[bytes], progress: Callable[[int], None] | None = None,
                    anywhere: bool = False) -> int:
        """Fill the memfd from memory-section chunks; returns the bytes restored.

        Chunks are checked here, in order, and decompressed and written into the memfd
        (pwrite: no page faults in this process) on a pool of threads, one per core. With
        `anywhere` (an older image of a chain), a chunk may lie past what this file has
        handed out: the newer image's list of dropped pages punches it out again."""
        workers = os.cpu_count() or 1

        def fill(batch: list[tuple[int, int, int, memoryview]]) -> int:
            for off, n, codec, body in batch:
                data = memoryview(decode_chunk(body, codec, n))
                done = 0
                while done < n:
                    done += os.pwrite(self.fd, data[done:], off + done)
            return sum(n for _, n, _, _ in batch)

        total = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            pending: collections.deque = collections.deque()

            def finish_one() -> None:
                nonlocal total
                total += pending.popleft().result()
                if progress is not None:
                    progress(total)

            try:
                # Chunks go to the threads in batches of about RUN_LIMIT bytes: many small
                # chunks (an incremental image's scattered pages) would cost more to hand
                # over one by one than to load.
                batch: list[tuple[int, int, int, memoryview]] = []
                size = 0
                for chunk in chunks:
                    limit = FILE_SIZE if anywhere else self.high
                    off, n, codec, pad = self._chunk_head(chunk, len(chunk), limit)
                    batch.append((off, n, codec, memoryview(chunk)[_CHUNK_HEAD.size + pad :]))
                    size += n
                    if size >= RUN_LIMIT or len(batch) >= 1024:
                        pending.append(pool.submit(fill, batch))
                        batch, size = [], 0
                        if len(pending) >= 2 * workers:  # bounds the chunks held in memory
                            finish_one()
                if batch:
                    pending.append(pool.submit(fill, batch))
                while pending:
                    finish_one()
            finally:
                for fut in pending:
                    fut.cancel()
        return total

    def load_lazily(self, image_fd: int, index: Iterable[tuple[int, int, int, bytes]],
                    on_done: Callable[[], None]) -> None:
        """Leave the memory chunks in the image (open as `image_fd`, which this takes over):
        each is loaded when first needed, and background threads (one per CPU this thread
        may run on) load them all meanwhile; `on_done()` is called, from any thread, once
        all are in or one failed. `index` holds each chunk's (position, size, CRC-32, first
        bytes), as ImageReader.section_index gives them."""
        chunks: list[Chunk] = []
        try:
            for pos, size, crc, head in index:
                off, n, codec, pad = self._chunk_head(head, size)
                if chunks and off < chunks[-1].offset + chunks[-1].length:
                    raise ImageError("image memory section holds chunks out of order")
                chunks.append(Chunk(off, n, codec, pos, size, crc, _CHUNK_HEAD.size + pad))
        except BaseException:
            os.close(image_fd)
            raise
        self.lazy = LazyLoader(self.fd, image_fd, chunks, on_done, decode_chunk)

    def ensure_loaded(self, offset: int, length: int) -> None:
        """Make sure a lazy restore has loaded the range; ImageError if it cannot."""
        if self.lazy is not None:
            self.lazy.ensure(offset, length)

    def finish_loading(self) -> None:
        """Load whatever a lazy restore has left in the image; ImageError if that fails."""
        if self.lazy is not None:
            self.lazy.finish()
            self.lazy = None

    def stop_loading(self) -> None:
        """Give up a lazy restore (the sandbox is going away)."""
        if self.lazy is not None:
            self.lazy.close()
            self.lazy = None

    def _chunk_head(self, head: bytes, size: int, limit: int | None = None) -> tuple[int, int, int, int]:
        """A chunk's (offset, length, codec, padding), checked against this file (below
        `limit`, by default what it has handed out); `head` is the start of a chunk of
        `size` bytes."""
        if len(head) < _CHUNK_HEAD.size:
            raise ImageError("image memory section holds a malformed chunk")
        off, n, codec, pad = _CHUNK_HEAD.unpack_from(head)
        if off % PAGE_SIZE or off + n > (self.high if limit is None else limit) or n > RUN_LIMIT:
            raise ImageError("image memory section holds a chunk outside the memory file")
        if codec not in (CODEC_ZSTD, CODEC_NONE):
            raise ImageError(f"image memory section uses an unknown codec {codec}")
        if _CHUNK_HEAD.size + pad > size or (codec == CODEC_NONE and size - _CHUNK_HEAD.size - pad != n):
            raise ImageError("image memory section holds a chunk of the wrong size")
        return off, n, codec, pad


_local = threading.local()


def decode_chunk(body: memoryview, codec: int, n: int) -> bytes | memoryview:
    """The `n` bytes of data a memory chunk's body holds; ImageError if it does not."""
    if codec == CODEC_ZSTD:
        dctx = getattr(_local, "dctx", None)
        if dctx is None:
            dctx = _local.dctx = zstandard.ZstdDecompressor()
        try:
            data = dctx.decompress(body, max_output_size=n)
        except zstandard.ZstdError as e:
            raise ImageError(f"image memory section is corrupt ({e})") from None
    else:
        data = body
    if len(data) != n:
        raise ImageError("image memory section holds a chunk of the wrong size")
    return data


def _chunks_of(copy: memoryview, base: int, runs: list[tuple[int, int]],
               compress: bool) -> tuple[list[tuple[bytes, int]], int]:
    """Memory chunks (with their CRC-32s) of `runs`, read from `copy` (the file's bytes
    from offset `base`), and the data bytes they hold."""
    chunks, data = [], 0
    for off, length in runs:
        body = copy[off - base : off - base + length]
        if compress:
            cctx = getattr(_local, "cctx", None)
            if cctx is None:
                cctx = _local.cctx = zstandard.ZstdCompressor(level=1)
            chunk = _CHUNK_HEAD.pack(off, length, CODEC_ZSTD, 0) + cctx.compress(body)
        else:
            chunk = _CHUNK_HEAD.pack(off, length, CODEC_NONE, 0) + body
        chunks.append((chunk, zlib.crc32(chunk)))
        data += length
    return chunks, data


def _pieces(runs: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Runs cut into pieces of at most RUN_LIMIT bytes."""
    for off, n in runs:
        for piece in range(off, off + n, RUN_LIMIT):
            yield piece, min(RUN_LIMIT, off + n - piece)


def _batches(runs: Iterable[tuple[int, int]], pages: int = 1024) -> Iterator[list[tuple[int, int]]]:
    """Runs (cut into pieces) in batches of about RUN_LIMIT bytes or `pages` runs, whichever
    comes first: work for one thread that is not dwarfed by handing it over."""
    batch: list[tuple[int, int]] = []
    size = 0
    for piece in _pieces(runs):
        batch.append(piece)
        size += piece[1]
        if size >= RUN_LIMIT or len(batch) >= pages:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _in_order(work: Callable, pieces: Iterable, workers: int) -> Iterator:
    """`work(piece)` of each piece on a pool of `workers` threads (zstd, zlib and hashlib
    release the GIL), the results in the pieces' order; at most two per thread are held
    at a time, which bounds the memory of results not yet taken."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for piece in pieces:
            pending.append(pool.submit(work, piece))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def page_runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted page offsets as (offset, length) runs of adjacent pages."""
    runs: list[list[int]] = []
    for off in sorted(offsets):
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1][1] += PAGE_SIZE
        else:
            runs.append([off, PAGE_SIZE])
    return [(off, n) for off, n in runs]


def merge_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, length) runs sorted, with overlapping and adjacent ones joined."""
    out: list[list[int]] = []
    for off, n in sorted(runs):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + n - out[-1][0])
        elif n:
            out.append([off, n])
    return [(off, n) for off, n in out]


def subtract_runs(runs: list[tuple[int, int]], other: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint `runs` outside sorted, disjoint `other`."""
    return list(_without(runs, other))


def intersect_runs(runs: list[tuple[int, int]], other: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint `runs` inside sorted, disjoint `other`."""
    return subtract_runs(runs, subtract_runs(runs, other))


def _without(runs: Iterable[tuple[int, int]], skip: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """The parts of sorted runs outside the sorted ranges of `skip`."""
    i = 0
    for off, n in runs:
        end = off + n
        while i < len(skip) and skip[i][0] + skip[i][1] <= off:
            i += 1
        j = i
        while off < end:
            if j >= len(skip) or skip[j][0] >= end:
                yield off, end - off
                break
            s_off, s_len = skip[j]
            if s_off > off:
                yield off, s_off - off
            off = max(off, s_off + s_len)
            j += 1
