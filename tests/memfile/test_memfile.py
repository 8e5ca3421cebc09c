"""MemoryFile: allocation, release, and the memory section's save/load."""

from __future__ import annotations

import os
import zlib

import pytest

from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.state import ImageError


@pytest.fixture
def mf():
    m = MemoryFile()
    yield m
    m.close()


def test_alloc_is_page_aligned_and_zeroed(mf):
    a = mf.alloc(10)
    b = mf.alloc(3 * PAGE_SIZE)
    assert a % PAGE_SIZE == 0 and b == a + PAGE_SIZE
    assert mf.read(b, 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
    assert mf.allocated == 4 * PAGE_SIZE


def test_release_frees_memory_and_reuses_the_range(mf):
    a = mf.alloc(4 * PAGE_SIZE)
    mf.alloc(PAGE_SIZE)
    mf.write(a, b"x" * (4 * PAGE_SIZE))
    mf.release(a, 4 * PAGE_SIZE)
    assert mf.read(a, 4) == bytes(4)  # the pages were dropped from the memfd
    assert mf.alloc(2 * PAGE_SIZE) == a
    assert mf.alloc(2 * PAGE_SIZE) == a + 2 * PAGE_SIZE


def test_release_merges_neighbours(mf):
    a = mf.alloc(PAGE_SIZE)
    b = mf.alloc(PAGE_SIZE)
    c = mf.alloc(PAGE_SIZE)
    mf.alloc(PAGE_SIZE)
    mf.release(a, PAGE_SIZE)
    mf.release(c, PAGE_SIZE)
    mf.release(b, PAGE_SIZE)
    assert mf.free == [[a, 3 * PAGE_SIZE]]


def test_memfd_is_sparse(mf):
    a = mf.alloc(1 << 30)
    mf.write(a + (1 << 29), b"y")
    blocks = os.fstat(mf.fd).st_blocks * 512
    assert blocks <= 2 * PAGE_SIZE


@pytest.mark.parametrize("compress", [True, False])
def test_save_skips_holes_and_zero_pages_and_loads_back(mf, compress):
    a = mf.alloc(64 * PAGE_SIZE)
    mf.write(a + 3 * PAGE_SIZE, b"three")
    mf.write(a + 10 * PAGE_SIZE, bytes(PAGE_SIZE))  # a written page that holds only zeros
    mf.write(a + 40 * PAGE_SIZE, os.urandom(2 * PAGE_SIZE))
    chunks = [chunk for chunk, crc in mf.save_chunks(compress) if crc == zlib.crc32(chunk)]
    assert [r for r in mf.data_runs()] == [(a + 3 * PAGE_SIZE, PAGE_SIZE), (a + 40 * PAGE_SIZE, 2 * PAGE_SIZE)]
    other = MemoryFile(high=mf.high, free=list(mf.free), allocated=mf.allocated)
    try:
        assert other.load_chunks(chunks) == 3 * PAGE_SIZE
        assert other.read(a, 64 * PAGE_SIZE) == mf.read(a, 64 * PAGE_SIZE)
    finally:
        other.close()


def test_load_refuses_chunks_outside_the_file(mf):
    a = mf.alloc(PAGE_SIZE)
    mf.write(a, b"z")
    ((chunk, _),) = mf.save_chunks(False)
    small = MemoryFile()
    try:
        with pytest.raises(ImageError, match="outside the memory file"):
            small.load_chunks([chunk])
    finally:
        small.close()
