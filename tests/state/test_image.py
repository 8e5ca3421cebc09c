"""The image container format: sections, checksums, truncation, versions."""

from __future__ import annotations

import io
import struct

import pytest

from snapbox.state import ImageError
from snapbox.state.image import FORMAT_VERSION, MAGIC, ImageReader, ImageWriter


def make_image() -> bytes:
    f = io.BytesIO()
    w = ImageWriter(f, {"snapbox": "test"})
    with w.section("one") as s:
        s.write_chunk(b"alpha")
        s.write_chunk(b"beta" * 1000)
    with w.section("two") as s:
        s.write_chunk(b"gamma")
    w.finish({"extra": 1})
    return f.getvalue()


def read_all(data: bytes) -> tuple[dict, list, bytes, dict]:
    r = ImageReader(io.BytesIO(data))
    one = list(r.section("one"))
    two = r.read_section("two")
    return r.meta, one, two, r.finish()


def test_round_trip():
    meta, one, two, summary = read_all(make_image())
    assert meta == {"snapbox": "test"}
    assert one == [b"alpha", b"beta" * 1000]
    assert two == b"gamma"
    assert summary["extra"] == 1
    assert summary["sections"][0] == {"name": "one", "chunks": 2, "bytes": 4005}


def test_every_truncation_is_refused():
    data = make_image()
    for n in range(len(data)):
        with pytest.raises(ImageError):
            read_all(data[:n])


def test_every_single_bit_flip_is_caught():
    data = make_image()
    for pos in range(0, len(data), 7):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(ImageError):
            read_all(bytes(bad))


def test_wrong_magic_and_newer_version():
    data = make_image()
    with pytest.raises(ImageError, match="image is not a snapbox image"):
        read_all(b"NOTANIMG" + data[8:])
    newer = MAGIC + struct.pack("<H", FORMAT_VERSION + 1) + data[10:]
    with pytest.raises(ImageError, match=f"version {FORMAT_VERSION + 1} is newer"):
        read_all(newer)


def test_absurd_lengths_are_refused_without_allocating():
    data = bytearray(make_image())
    # The first chunk's length field follows the header and the section name.
    pos = data.index(b"SECT") + 4 + 1 + 3
    data[pos : pos + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(ImageError, match="claims a chunk"):
        read_all(bytes(data))


def test_sections_must_come_in_order():
    r = ImageReader(io.BytesIO(make_image()))
    with pytest.raises(ImageError, match="expected the two section"):
        list(r.section("two"))
