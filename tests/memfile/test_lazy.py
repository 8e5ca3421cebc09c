"""Lazy restore of the memory section: chunks left in a real image file, loaded on demand and
by background threads into a real memfd."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.memfile.memfile import CHUNK_HEAD_SIZE, RUN_LIMIT
from snapbox.state import ImageError
from snapbox.state.image import ImageReader, ImageWriter

PIECES = 6  # RUN_LIMIT-sized pieces of data, so several chunks


def _saved(tmp_path: Path, compress: bool) -> tuple[Path, MemoryFile, int]:
    """An image holding a MemoryFile's memory section: distinct data in each page of six
    RUN_LIMIT pieces, and a hole in the middle. Returns the image, the original and its
    base offset."""
    src = MemoryFile()
    base = src.alloc(PIECES * RUN_LIMIT)
    for page in range(0, PIECES * RUN_LIMIT, PAGE_SIZE):
        if base + page < base + 2 * RUN_LIMIT or base + page >= base + 3 * RUN_LIMIT:
            src.write(base + page, page.to_bytes(8, "little") * 8)
    path = tmp_path / "m.img"
    with open(path, "wb") as f:
        w = ImageWriter(f, {})
        with w.section("memory") as s:
            for chunk, crc in src.save_chunks(compress, lambda: w.pos):
                s.write_chunk(chunk, crc)
        w.finish()
    return path, src, base


def _index(path: Path) -> list[tuple[int, int, int, bytes]]:
    """The image's memory chunks, as ImageReader.section_index gives them."""
    with open(path, "rb") as f:
        return list(ImageReader(f).section_index("memory", CHUNK_HEAD_SIZE))


@contextlib.contextmanager
def _lazy(path: Path, src: MemoryFile, truncate: int = 0) -> Iterator[tuple[MemoryFile, threading.Event]]:
    """A MemoryFile restored lazily from the image, and an event set once loading ends; with
    `truncate`, the image is cut to that size once its index is read (it changes under the
    restore). Both MemoryFiles are closed after."""
    dst = MemoryFile(high=src.high, allocated=src.allocated)
    done = threading.Event()
    try:
        with open(path, "rb") as f:
            r = ImageReader(f)
            index = list(r.section_index("memory", CHUNK_HEAD_SIZE))
            r.finish()
            if truncate:
                os.truncate(path, truncate)
            dst.load_lazily(os.dup(f.fileno()), index, done.set)
        yield dst, done
    finally:
        dst.close()
        src.close()


@pytest.mark.parametrize("compress", [True, False])
def test_lazy_load_gives_back_every_byte(tmp_path, compress):
    path, src, base = _saved(tmp_path, compress)
    with _lazy(path, src) as (dst, done):
        # What the sentry reads is there at once, whatever the background threads have done.
        page = base + 5 * RUN_LIMIT + 7 * PAGE_SIZE
        assert dst.read(page, 8) == (page - base).to_bytes(8, "little")
        assert done.wait(30)
        dst.finish_loading()
        assert dst.lazy is None
        n = PIECES * RUN_LIMIT
        assert dst.read(base, n) == src.read(base, n)


def test_a_range_freed_before_its_chunk_is_loaded_stays_zero(tmp_path):
    path, src, base = _saved(tmp_path, compress=True)
    with _lazy(path, src) as (dst, done):
        # The background threads start at the first chunk: these are most likely still waiting.
        dst.release(base + 4 * RUN_LIMIT, RUN_LIMIT)  # a whole chunk: never loaded
        dst.punch(base + 5 * RUN_LIMIT, PAGE_SIZE)  # part of one: loaded, then the page dropped
        assert done.wait(30)
        dst.finish_loading()
        assert dst.read(base + 5 * RUN_LIMIT + PAGE_SIZE, 8) == (5 * RUN_LIMIT + PAGE_SIZE).to_bytes(8, "little")
        assert dst.read(base + 5 * RUN_LIMIT, PAGE_SIZE) == bytes(PAGE_SIZE)
        assert dst.read(base + 4 * RUN_LIMIT, RUN_LIMIT) == bytes(RUN_LIMIT)


def test_a_chunk_is_loaded_only_once(tmp_path):
    path, src, base = _saved(tmp_path, compress=True)
    with _lazy(path, src) as (dst, done):
        assert done.wait(30)
        # A chunk already in is not read again over what was written since.
        dst.write(base, b"mine")
        dst.lazy.ensure(base, RUN_LIMIT)
        assert dst.read(base, 4) == b"mine"
        dst.finish_loading()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_corrupt_chunk_is_found_when_it_is_loaded(tmp_path, damage):
    path, src, _ = _saved(tmp_path, compress=True)
    data = bytearray(path.read_bytes())
    index = _index(path)
    pos, size, _, head = index[3]
    offset = int.from_bytes(head[:8], "little")  # the chunk's place in the memory file
    if damage == "flip":
        data[pos + size // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with _lazy(path, src, truncate=pos + size // 2 if damage == "truncate" else 0) as (dst, done):
        assert done.wait(30)
        with pytest.raises(ImageError, match="memory section"):
            dst.read(offset, 8)
        with pytest.raises(ImageError):
            dst.finish_loading()


def test_an_index_out_of_order_is_refused(tmp_path):
    path, src, base = _saved(tmp_path, compress=False)
    index = _index(path)
    dst = MemoryFile(high=src.high)
    try:
        with pytest.raises(ImageError, match="out of order"):
            dst.load_lazily(os.open(path, os.O_RDONLY), reversed(index), lambda: None)
        assert dst.lazy is None
    finally:
        dst.close()
        src.close()
