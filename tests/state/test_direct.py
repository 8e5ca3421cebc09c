"""DirectWriter: a stream written around the page cache, byte for byte."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapbox.state.direct import ALIGN, BUFFER, DirectWriter


def _open(path, direct: bool) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o600)


@pytest.mark.parametrize("direct", [True, False])
def test_pieces_of_every_size_arrive_in_order(tmp_path, direct):
    sizes = [1, ALIGN - 1, ALIGN, 3, BUFFER - 5, BUFFER, 2 * BUFFER + 17, 0, 12345]
    pieces = [os.urandom(n) for n in sizes]
    path = tmp_path / "image"
    fd = _open(path, direct)
    try:
        with DirectWriter(fd) as w:
            for p in pieces:
                assert w.write(memoryview(p) if len(p) % 2 else p) == len(p)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3 * ALIGN), max_size=40))
def test_any_sequence_of_writes(tmp_path_factory, sizes):
    path = tmp_path_factory.mktemp("direct") / "image"
    data = os.urandom(sum(sizes))
    fd = _open(path, True)
    try:
        with DirectWriter(fd) as w:
            pos = 0
            for n in sizes:
                w.write(data[pos : pos + n])
                pos += n
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_write_error_reaches_the_caller():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        w = DirectWriter(fd)
        w.write(os.urandom(BUFFER))  # handed to the writer thread
        with pytest.raises(OSError) as e:
            w.write(os.urandom(BUFFER + 1))
            w.close()
        assert e.value.errno == 28  # ENOSPC
        w.close()
    finally:
        os.close(fd)
