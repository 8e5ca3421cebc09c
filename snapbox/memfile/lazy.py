"""Lazy restore: memory-section chunks that stay in the image until something needs them.

A LazyLoader holds the index of an image's memory chunks (where each lies in the image, and
which MemoryFile range it fills). A chunk is read, checked (CRC-32, size), decompressed and
written into the memfd the first time anything needs a page of it: the sentry reading or
writing application memory, a stub touching it (see snapbox.platform.uffd), a range being
freed or copied, a checkpoint. Meanwhile background threads, one per CPU and at idle
priority, load the chunks in order: on an idle machine the whole image is in about as soon
as an eager restore would have it, but the program runs from the start and comes first.

Every chunk is loaded once: a chunk is PENDING, LOADING (one thread reads it; others that
need it wait) or DONE. A program cannot write a page before its chunk is DONE (its first
touch waits for the load), so a load never overwrites what the program wrote.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import os
import threading
import zlib
from collections.abc import Callable

from snapbox.state import ImageError

PENDING, LOADING, DONE, FAILED = range(4)


class MemoryLost(ImageError):
    """Memory a lazy restore left in the image could not be read back (the sandbox is
    started by then, or about to be: it ends)."""


class Chunk:
    """One memory chunk still in the image."""

    __slots__ = ("offset", "length", "codec", "pos", "size", "crc", "skip")

    def __init__(self, offset: int, length: int, codec: int, pos: int, size: int, crc: int, skip: int) -> None:
        self.offset = offset  # the MemoryFile range it fills: [offset, offset + length)
        self.length = length
        self.codec = codec
        self.pos = pos  # where the whole chunk (header, padding, data) lies in the image
        self.size = size
        self.crc = crc  # CRC-32 of those `size` bytes
        self.skip = skip  # bytes of header and padding before the data


class LazyLoader:
    """Fills the memfd `memfd` from the chunks of the image open as `image_fd` (owned)."""

    def __init__(self, memfd: int, image_fd: int, chunks: list[Chunk], on_done: Callable[[], None],
                 decode: Callable[[memoryview, int, int], bytes | memoryview]) -> None:
        self.memfd = memfd
        self.image_fd = image_fd
        self.chunks = chunks
        self.starts = [c.offset for c in chunks]
        self.state = bytearray(len(chunks))
        self.owner = [0] * len(chunks)  # the background thread loading each chunk (0: none)
        self.left = len(chunks)
        self.error: MemoryLost | None = None
        self.on_done = on_done  # called once, from any thread, when no chunk is left or one failed
        self.decode = decode  # (data, codec, length) -> the chunk's bytes; ImageError if corrupt
        self.cond = threading.Condition()
        self.cursor = 0  # the background threads' next chunk to claim
        self.stopping = False
        # One thread per CPU this one may run on (they inherit that).
        workers = min(len(os.sched_getaffinity(0)), len(chunks))
        self.threads = [threading.Thread(target=self._work, name=f"lazy-load-{i}", daemon=True)
                        for i in range(workers)]
        if not chunks:
            on_done()
        for t in self.threads:
            t.start()

    # -- what the sentry calls ------------------------------------------------------------------

    def ensure(self, offset: int, length: int) -> None:
        """Make sure every chunk overlapping [offset, offset+length) is in the memfd; ImageError
        if one of them could not be read back."""
        state = self.state
        for i in self._overlapping(offset, length):
            if state[i] != DONE:
                self._get(i)

    def discard(self, offset: int, length: int) -> None:
        """The range's data is about to be dropped: chunks wholly inside it are never loaded
        (waiting for one being loaded now); chunks only partly inside are loaded first."""
        end = offset + length
        for i in self._overlapping(offset, length):
            c = self.chunks[i]
            if c.offset >= offset and c.offset + c.length <= end:
                with self.cond:
                    self._wait_for(i)
                    if self.state[i] == PENDING:
                        self._finished(i, DONE)
            elif self.state[i] != DONE:
                self._get(i)

    def prefetch(self, runs: list[tuple[int, int]]) -> int:
        """Load now, on a thread per CPU, every chunk that overlaps the (offset, length)
        runs: a working set an earlier restore recorded. Returns the bytes those chunks
        fill; ImageError if one of them could not be read back."""
        wanted = sorted({i for off, n in runs for i in self._overlapping(off, n)})
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(len(self.threads), 1)) as pool:
            list(pool.map(self._get, wanted))
        return sum(self.chunks[i].length for i in wanted)

    def pending(self, offset: int, length: int) -> bool:
        """Whether part of the range still waits for its chunk."""
        return any(self.state[i] != DONE for i in self._overlapping(offset, length))

    def finish(self) -> None:
        """Load everything left (here and on the background threads) and stop the threads;
        ImageError if a chunk could not be read back."""
        for i in range(len(self.chunks)):
            if self.state[i] != DONE:
                self._get(i)
        self.close()

    def close(self) -> None:
        """Stop the background threads (each ends after its current chunk) and let go of the image."""
        with self.cond:
            self.stopping = True
        for t in self.threads:
            t.join()
        self.threads = []
        if self.image_fd >= 0:
            os.close(self.image_fd)
            self.image_fd = -1

    # -- loading ---------------------------------------------------------------------------------

    def _overlapping(self, offset: int, length: int) -> range:
        starts = self.starts
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0 or self.chunks[i].offset + self.chunks[i].length <= offset:
            i += 1
        j = bisect.bisect_left(starts, offset + length, lo=max(i, 0))
        return range(i, j)

    def _get(self, i: int) -> None:
        with self.cond:
            self._wait_for(i)
            if self.state[i] == DONE:
                return
            if self.state[i] == FAILED or self.error is not None:
                raise self.error
            self.state[i] = LOADING
        self._load(i)
        if self.state[i] == FAILED:
            raise self.error

    def _wait_for(self, i: int) -> None:
        """Wait (self.cond held) while chunk i is being loaded by a background thread, which
        runs at normal priority until it is done: at idle priority, it could be kept waiting
        as long as the CPUs are busy, and us with it."""
        while self.state[i] == LOADING:
            # OSError: the thread is gone, or leaving idle priority is not allowed (no
            # CAP_SYS_NICE): then just wait.
            if self.owner[i]:
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(self.owner[i], os.SCHED_OTHER, os.sched_param(0))
            self.cond.wait()

    def _load(self, i: int) -> None:
        """Load chunk i (claimed: LOADING) into the memfd; DONE or FAILED after."""
        c = self.chunks[i]
        try:
            raw = os.pread(self.image_fd, c.size, c.pos)
            if len(raw) != c.size:
                raise ImageError("the image restored from is truncated (in its memory section)")
            if zlib.crc32(raw) != c.crc:
                raise ImageError("the image restored from is corrupt (checksum mismatch in its memory section)")
            data = self.decode(memoryview(raw)[c.skip:], c.codec, c.length)
            view = memoryview(data)
            done = 0
            while done < c.length:
                done += os.pwrite(self.memfd, view[done:], c.offset + done)
        except (OSError, ImageError) as e:
            err = MemoryLost(str(e) if isinstance(e, ImageError) else
                             f"cannot read the image restored from ({e.strerror})")
            with self.cond:
                if self.error is None:
                    self.error = err
                self._finished(i, FAILED)
            return
        with self.cond:
            self._finished(i, DONE)

    def _finished(self, i: int, state: int) -> None:
        """Record chunk i's end (self.cond held) and wake whoever waits for it."""
        self.state[i] = state
        self.cond.notify_all()
        if state == FAILED:
            if self.left:
                self.left = 0
                self.on_done()
            return
        self.left -= 1
        if self.left == 0:
            self.on_done()

    def _work(self) -> None:
        # Idle priority: the program and the sentry come first. A chunk they wait for has
        # its loader raised to normal priority (see _wait_for), until its next chunk.
        tid = threading.get_native_id()
        n = len(self.chunks)
        while True:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            with self.cond:
                while self.cursor < n and self.state[self.cursor] != PENDING:
                    self.cursor += 1
                if self.stopping or self.cursor >= n or self.error is not None:
                    return
                i = self.cursor
                self.state[i] = LOADING
                self.owner[i] = tid
            self._load(i)
