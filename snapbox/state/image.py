"""The image file: a header, length-prefixed sections of checksummed chunks, and a trailer.

    header   "SNAPBOX\\0" | u16 format version | u32 n | CBOR metadata (n bytes) | u32 crc32
    section  "SECT" | u8 n | name (n bytes) | chunk* | u32 0 | u32 chunk count
    chunk    u32 length (1..MAX_CHUNK) | u32 crc32 | payload
    trailer  "TRLR" | u32 n | CBOR summary (n bytes) | u32 crc32; a file ends there

Every length comes before its bytes, so an image can be written to and read from a pipe.
Every chunk carries its own checksum, so corruption is found before anything is decoded.
write_image puts an image file in place whole or not at all.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import cbor2

from snapbox.state.direct import DirectWriter
from snapbox.state.errors import ImageError, ImageWriteError

MAGIC = b"SNAPBOX\0"
FORMAT_VERSION = 1
MAX_CHUNK = 64 << 20  # bounds the memory one chunk may take while reading
MAX_META = 1 << 20
MAX_SECTION = 256 << 20  # bounds a section read whole (cpuid, kernel); memory is streamed

T = TypeVar("T")
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")
CHUNK_HEADER_SIZE = _U32x2.size


def _read_exact(f: IO[bytes], n: int, what: str) -> bytes:
    parts = []
    left = n
    while left:
        b = f.read(left)
        if not b:
            raise ImageError(f"image is truncated (in {what})")
        parts.append(b)
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class SectionWriter:
    """Writes one section's chunks; obtained from ImageWriter.section()."""

    def __init__(self, writer: ImageWriter, name: str) -> None:
        self.writer = writer
        self.name = name
        self.chunks = 0
        self.bytes = 0

    def write_chunk(self, data: bytes | memoryview, crc: int | None = None) -> None:
        """Write one chunk; `crc` is its CRC-32 if the caller has it already."""
        n = len(data)
        if n == 0:
            return
        if n > MAX_CHUNK:
            view = memoryview(data)
            for off in range(0, n, MAX_CHUNK):
                self.write_chunk(view[off : off + MAX_CHUNK])
            return
        self.writer.write(_U32x2.pack(n, zlib.crc32(data) if crc is None else crc))
        self.writer.write(data)
        self.chunks += 1
        self.bytes += n

    def __enter__(self) -> SectionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.writer.write(_U32x2.pack(0, self.chunks))
            self.writer.summary.append({"name": self.name, "chunks": self.chunks, "bytes": self.bytes})


class ImageWriter:
    """Streams an image to a binary file object."""

    def __init__(self, f: IO[bytes], meta: dict[str, Any]) -> None:
        self.f = f
        self.pos = 0  # bytes written so far: where the next byte lands in the file
        self.summary: list[dict[str, Any]] = []
        blob = cbor2.dumps(meta)
        self.write(MAGIC + _U16.pack(FORMAT_VERSION) + _U32.pack(len(blob)) + blob + _U32.pack(zlib.crc32(blob)))

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.pos += len(data)

    def section(self, name: str) -> SectionWriter:
        raw = name.encode()
        self.write(b"SECT" + bytes([len(raw)]) + raw)
        return SectionWriter(self, name)

    def finish(self, extra: dict[str, Any] | None = None) -> None:
        summary = {"sections": self.summary}
        if extra:
            summary.update(extra)
        blob = cbor2.dumps(summary)
        self.write(b"TRLR" + _U32.pack(len(blob)) + blob + _U32.pack(zlib.crc32(blob)))


class ImageReader:
    """Reads an image from a binary file object, section by section, in order."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        magic = f.read(len(MAGIC))
        if len(magic) < len(MAGIC):
            if not magic:
                raise ImageError("image is empty")
            raise ImageError("image is truncated (in the header)")
        if magic != MAGIC:
            raise ImageError("image is not a snapbox image (wrong magic)")
        (version,) = _U16.unpack(_read_exact(f, 2, "the header"))
        if version > FORMAT_VERSION:
            raise ImageError(
                f"image format version {version} is newer than this snapbox supports ({FORMAT_VERSION})"
            )
        if version < 1:
            raise ImageError(f"image format version {version} is not a snapbox format")
        self.version = version
        self.meta = self._cbor_block("the header", MAX_META)
        if not isinstance(self.meta, dict):
            raise ImageError("image header is malformed")
        self.sections_read: list[dict[str, Any]] = []

    def _cbor_block(self, what: str, limit: int) -> Any:
        (n,) = _U32.unpack(_read_exact(self.f, 4, what))
        if n > limit:
            raise ImageError(f"image is corrupt ({what} claims {n} bytes)")
        blob = _read_exact(self.f, n, what)
        (crc,) = _U32.unpack(_read_exact(self.f, 4, what))
        if zlib.crc32(blob) != crc:
            raise ImageError(f"image is corrupt (checksum mismatch in {what})")
        try:
            return cbor2.loads(blob)
        except Exception as e:  # cbor2 raises several types on malformed input
            raise ImageError(f"image is corrupt ({what}: {e})") from None

    def section(self, name: str) -> Iterator[bytes]:
        """Yield the payload chunks of the next section, which must be called `name`."""
        what = f"the {name} section"
        tag = _read_exact(self.f, 4, what)
        if tag != b"SECT":
            raise ImageError(f"image is corrupt (expected {what})")
        (n,) = _read_exact(self.f, 1, what)
        got = _read_exact(self.f, n, what).decode("utf-8", "replace")
        if got != name:
            raise ImageError(f"image is corrupt (expected {what}, found {got!r})")
        return self._chunks(name, what)

    def _chunks(self, name: str, what: str) -> Iterator[bytes]:
        count = total = 0
        while True:
            n, crc = _U32x2.unpack(_read_exact(self.f, 8, what))
            if n == 0:
                if crc != count:
                    raise ImageError(f"image is corrupt ({what} ends after {count} chunks, expected {crc})")
                self.sections_read.append({"name": name, "chunks": count, "bytes": total})
                return
            if n > MAX_CHUNK:
                raise ImageError(f"image is corrupt ({what} claims a chunk of {n} bytes)")
            data = _read_exact(self.f, n, what)
            if zlib.crc32(data) != crc:
                raise ImageError(f"image is corrupt (checksum mismatch in {what})")
            count += 1
            total += n
            yield data

    def section_index(self, name: str, head: int) -> Iterator[tuple[int, int, int, bytes]]:
        """Yield (position, size, CRC-32, first `head` bytes) for each chunk of the next section,
        which must be called `name`, skipping the payloads (the file must be a seekable file
        with a descriptor). Payloads are neither read nor checked: whoever reads one later
        checks its CRC."""
        what = f"the {name} section"
        chunks = self.section(name)
        chunks.close()  # only its header was wanted
        count = total = 0
        fd = self.f.fileno()
        pos = self.f.tell()
        # One small pread per chunk: a buffered read after each seek would read a buffer's worth.
        while True:
            raw = os.pread(fd, _U32x2.size + head, pos)
            if len(raw) < _U32x2.size:
                raise ImageError(f"image is truncated (in {what})")
            n, crc = _U32x2.unpack_from(raw)
            pos += _U32x2.size
            if n == 0:
                if crc != count:
                    raise ImageError(f"image is corrupt ({what} ends after {count} chunks, expected {crc})")
                self.sections_read.append({"name": name, "chunks": count, "bytes": total})
                self.f.seek(pos)
                return
            if n > MAX_CHUNK:
                raise ImageError(f"image is corrupt ({what} claims a chunk of {n} bytes)")
            count += 1
            total += n
            yield pos, n, crc, raw[_U32x2.size : _U32x2.size + min(head, n)]
            pos += n

    def read_section(self, name: str, limit: int = MAX_SECTION) -> bytes:
        """A whole section's payload, refused if it is larger than `limit` bytes."""
        parts, size = [], 0
        for chunk in self.section(name):
            size += len(chunk)
            if size > limit:
                raise ImageError(f"image is corrupt (the {name} section exceeds {limit} bytes)")
            parts.append(chunk)
        return b"".join(parts)

    def finish(self) -> dict[str, Any]:
        """Read and check the trailer against what was read; returns its summary."""
        if _read_exact(self.f, 4, "the trailer") != b"TRLR":
            raise ImageError("image is corrupt (expected the trailer)")
        summary = self._cbor_block("the trailer", MAX_META)
        if not isinstance(summary, dict) or summary.get("sections") != self.sections_read:
            raise ImageError("image is corrupt (trailer does not match its sections)")
        if self._whole_file() and self.f.read(1):
            raise ImageError("image is corrupt (it goes on after its trailer)")
        return summary

    def _whole_file(self) -> bool:
        """Whether the image is all there is to read: a regular file or a buffer, not a pipe
        (through a pipe, what follows an image is the restored program's stdin)."""
        try:
            return stat.S_ISREG(os.fstat(self.f.fileno()).st_mode)
        except (OSError, ValueError):  # io.UnsupportedOperation: an in-memory buffer
            return True


# What writing an image may fail with that is the destination's doing, not snapbox's.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EPIPE})


def write_image(path: str, write: Callable[[IO[bytes]], T]) -> T:
    """Have `write(f)` write an image to `path` and return what it returns. The file is
    written unnamed around the page cache where the file system allows (see
    snapbox.state.direct), fsynced, then linked and renamed into place, so an interrupted
    or failed write never leaves a file under the target name. Only a regular file is
    ever replaced: a device, FIFO, socket, directory or symbolic link at `path` is refused
    (the check is made again just before the rename)."""
    _check_target(path)
    directory = os.path.dirname(path) or "."
    flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
    try:
        try:
            fd = os.open(directory, flags | os.O_DIRECT, 0o600)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            fd = os.open(directory, flags, 0o600)  # no O_DIRECT here (tmpfs)
    except OSError as e:
        raise ImageWriteError(f"cannot write image in {directory} ({e.strerror})") from None
    try:
        try:
            with DirectWriter(fd) as f:
                result = write(f)
            os.fsync(fd)
        except OSError as e:
            if e.errno not in WRITE_ERRORS:
                raise
            raise ImageWriteError(f"cannot write image {path} ({e.strerror})") from None
        _check_target(path)
        partial = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.partial")
        try:
            _link_fd(fd, partial)
            os.replace(partial, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ImageWriteError(f"cannot write image {path} ({e.strerror})") from None
    finally:
        os.close(fd)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return result


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _check_target(path: str) -> None:
    """ImageWriteError unless `path` is missing or a regular file (what an image replaces)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ImageWriteError(f"cannot write image {path} ({e.strerror})") from None
    for test, kind in _KINDS:
        if test(mode):
            raise ImageWriteError(f"cannot write image {path} (it is {kind}, not a regular file)")


def _link_fd(fd: int, path: str) -> None:
    """Give the unnamed (O_TMPFILE) file `fd` the name `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", AT_FDCWD, os.fsencode(path), AT_EMPTY_PATH) == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EPERM, errno.ENOENT):
        raise OSError(err, os.strerror(err))
    # Without CAP_DAC_READ_SEARCH, linkat through /proc is the unprivileged way.
    os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
