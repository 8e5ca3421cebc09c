"""Host files' pages, read once into the MemoryFile and shared by every read-only mapping.

A MAP_PRIVATE mapping of a file of the read-only rootfs that is not writable (a library's
text, an executable's read-only segments) maps the file's cached pages instead of a copy:
every process and every fork that maps libc maps the same MemoryFile range. Only the parts
of a file that some mapping covers are read. The pages are the file's as long as no mapping
may write them; a mapping made writable gets its own copy (see MemoryManager.protect).

An image stores such pages as a reference: the file's path, size, mtime, the ranges read and
a SHA-256 of their content. Restoring reads those ranges again and refuses the file, naming
it, if its size or that content differs (an mtime alone may differ: a copy of the same
file on another host restores). `store=True` at save time puts the pages in the image
instead, for restoring where the files are not the same.

A clone of a pool (runtime.clones) reads none of this: its base memory holds the files'
pages too, read once by the pool's refiller (`read_reference`), and its stubs map them from
there like the rest of the image's memory, so every clone shares one copy of libc and
libpython. A FilePages is then `in_base` until something needs it in the clone's own
MemoryFile (a new mapping of the file, a checkpoint of the clone): `own` copies it there.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
from stat import S_ISREG as stat_is_regular
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.vfs import Filesystem, LowerNode
from snapbox.memfile import MemoryFile, page_align
from snapbox.memfile.memfile import OutOfMemory
from snapbox.state import SnapboxError, nosave, savable


class ChangedFileError(SnapboxError):
    """A file whose pages an image references is not the file that was checkpointed."""


@savable
@dataclass(eq=False)
class FilePages:
    """One host file's pages in the MemoryFile: a range of page_align(size) bytes at
    `offset`, of which only the parts some mapping asked for (`filled`) are read."""

    layer: int  # the Filesystem layer (0: the rootfs, then each bind mount) holding the file
    path: str  # the file's path beneath its layer
    size: int
    mtime: int  # ns, as seen when the file was first mapped
    offset: int
    filled: list = field(default_factory=list)  # sorted, disjoint [start, end) file ranges read
    users: int = 0  # VMAs mapping these pages
    digest: bytes = b""  # SHA-256 of the filled ranges' content, computed at save
    stored: bool = False  # the image holds the pages themselves (saved with store=True)
    fd: int = nosave(default=-1)  # the host file, open while the pages are in use
    # A clone's pages still in its base memory only (the MemoryFile range is a hole): every
    # VMA of them is based; `FileCache.own` ends it.
    in_base: bool = nosave(default=False)

    @property
    def length(self) -> int:
        return page_align(self.size)

    def filled_bytes(self) -> int:
        return sum(end - start for start, end in self.filled)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) not read yet."""
        out = []
        for f_start, f_end in self.filled:
            if f_end <= start:
                continue
            if f_start >= end:
                break
            if f_start > start:
                out.append((start, f_start))
            start = max(start, f_end)
        if start < end:
            out.append((start, end))
        return out

    def add_filled(self, start: int, end: int) -> None:
        ranges = sorted([*self.filled, [start, end]])
        merged: list = []
        for r_start, r_end in ranges:
            if merged and r_start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], r_end)
            else:
                merged.append([r_start, r_end])
        self.filled = merged


@savable
@dataclass(eq=False)
class FileCache:
    """The cached files of one sandbox, looked up by (layer, path)."""

    memfile: MemoryFile
    fs: Filesystem
    files: list = field(default_factory=list)  # FilePages in use
    index: dict = nosave(dict)  # (layer, path) -> FilePages

    def __post_init__(self) -> None:
        self.index = {(p.layer, p.path): p for p in self.files}

    def after_load(self, ctx) -> None:
        self.__post_init__()

    def get(self, node: LowerNode) -> FilePages | None:
        """The cache entry of a file (made now, empty, if there is none), or None for a file
        that cannot be cached: empty, or in a read-write bind mount (host state). The
        caller maps some of it, or hands it to forget_unused."""
        if node.length == 0 or node.layer in self.fs.rw_layers:
            return None
        key = (node.layer, node.path)
        pages = self.index.get(key)
        if pages is not None and pages.size == node.length and pages.mtime == node.mtime:
            return pages
        try:
            offset = self.memfile.alloc(node.length, charge=False)  # charged as pages are read
        except OutOfMemory:
            raise SyscallError(errno.ENOMEM, "sandbox memory limit") from None
        pages = FilePages(layer=node.layer, path=node.path, size=node.length, mtime=node.mtime, offset=offset)
        self.files.append(pages)
        self.index[key] = pages  # a stale entry of the same path stays until its users go
        return pages

    def fill(self, pages: FilePages, start: int, end: int) -> None:
        """Make sure the file's pages in [start, end) (page-aligned) hold its content, in
        the MemoryFile (a mapping of them is about to be made)."""
        self.own(pages)
        end = min(end, pages.length)
        for m_start, m_end in pages.missing(start, end):
            try:
                self.memfile.charge(m_end - m_start)
            except OutOfMemory:
                raise SyscallError(errno.ENOMEM, "sandbox memory limit") from None
            try:
                self._read(pages, m_start, m_end)
            except BaseException:
                self.memfile.uncharge(m_end - m_start)
                raise
            pages.add_filled(m_start, m_end)
            pages.digest = b""

    def _read(self, pages: FilePages, start: int, end: int) -> None:
        if pages.fd < 0:
            self._open(pages)
        end = min(end, pages.size)
        try:
            self.memfile.fill_from(pages.fd, start, pages.offset + start, end - start)
        except EOFError:
            raise SyscallError(errno.EIO, "file shrank while being read") from None

    def unref(self, pages: FilePages) -> None:
        pages.users -= 1
        self.forget_unused(pages)

    def forget_unused(self, pages: FilePages) -> None:
        """Free the pages if no mapping uses them."""
        if pages.users > 0:
            return
        self.files.remove(pages)
        if self.index.get((pages.layer, pages.path)) is pages:
            del self.index[(pages.layer, pages.path)]
        if pages.fd >= 0:
            os.close(pages.fd)
            pages.fd = -1
        self.memfile.uncharge(pages.filled_bytes())
        self.memfile.release(pages.offset, pages.length, charged=False)

    # -- a clone's base memory ----------------------------------------------------------------

    def take_from_base(self, files: dict) -> list[tuple[int, int]]:
        """In a clone: mark the files whose pages its base memory holds, and return their
        MemoryFile runs (left out of the clone's own copy). The base holds the pages an
        image stored, and those of each file its refiller read (`files`: offset -> the
        entry `read_reference` made) if that is the very file this sandbox would read: the
        same content digest, device, inode, size and mtime."""
        runs = []
        for pages in self.files:
            if not pages.stored:
                entry = files.get(pages.offset)
                if entry is None or entry["digest"] != pages.digest:
                    continue
                try:
                    st = os.fstat(pages.fd if pages.fd >= 0 else self._open(pages))
                except SyscallError:
                    continue  # restore() names the file
                if [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] != entry["identity"]:
                    continue
            pages.in_base = True
            runs += [(pages.offset + start, end - start) for start, end in pages.filled]
        return runs

    def own(self, pages: FilePages) -> None:
        """Copy a clone's file pages from its base memory into its MemoryFile (the VMAs
        that map them from the base may go on doing so: the content is the same)."""
        if not pages.in_base:
            return
        for start, end in pages.filled:
            self.memfile.copy_in_from_base(pages.offset + start, end - start)
        pages.in_base = False

    def own_all(self) -> None:
        for pages in self.files:
            self.own(pages)

    # -- save and restore ---------------------------------------------------------------------

    def references(self) -> list[dict]:
        """The files an image references, for whoever reads them without the sandbox (a
        pool's refiller, `read_reference`): host path, MemoryFile offset, size, the ranges
        read and their digest (computed by before_image)."""
        return [{"file": os.path.join(self.fs.host(p.layer).path, p.path), "offset": p.offset, "size": p.size,
                 "filled": p.filled, "digest": p.digest} for p in self.files if not p.stored]

    def _digest(self, pages: FilePages) -> bytes:
        h = hashlib.sha256()
        for start, end in pages.filled:
            h.update(self.memfile.view[pages.offset + start : pages.offset + min(end, pages.size)])
        return h.digest()

    def before_image(self, store: bool) -> list[tuple[int, int]]:
        """Ready the references for an image; returns the sorted MemoryFile ranges the
        memory section leaves out (none if `store`)."""
        for pages in self.files:
            if not pages.digest:
                pages.digest = self._digest(pages)
            pages.stored = store
        if store:
            return []
        return sorted((p.offset + start, end - start) for p in self.files for start, end in p.filled)

    def referenced_bytes(self) -> int:
        return sum(p.filled_bytes() for p in self.files if not p.stored)

    def unread_bytes(self) -> int:
        """Bytes of the cache's MemoryFile ranges that hold nothing (parts of files not mapped)."""
        return sum(p.length - p.filled_bytes() for p in self.files)

    def restore(self) -> None:
        """Read every referenced file's pages back into the MemoryFile, checking it is the
        same file; files are read and hashed on a thread per CPU. Raises ChangedFileError
        naming the first one (in cache order) that is not."""
        refs = [pages for pages in self.files if not pages.stored and not pages.in_base]
        if not refs:
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(refs), os.cpu_count() or 1)) as pool:
            problems = list(pool.map(self._restore_one, refs))
        for problem in problems:
            if problem:
                raise ChangedFileError(problem)

    def _restore_one(self, pages: FilePages) -> str | None:
        """Read one file's pages back; what is wrong with the file, if anything."""
        where = os.path.join(self.fs.host(pages.layer).path, pages.path)
        hint = "; checkpoint with --store-file-pages to keep its pages in the image"
        try:
            size = os.fstat(pages.fd if pages.fd >= 0 else self._open(pages)).st_size
        except SyscallError as e:
            return f"{where}, mapped by the checkpointed sandbox, cannot be opened ({os.strerror(e.errno)}){hint}"
        if size != pages.size:
            return f"{where} changed since the checkpoint (size {size}, was {pages.size}){hint}"
        for start, end in pages.filled:
            self._read(pages, start, end)
        if self._digest(pages) != pages.digest:
            return f"{where} changed since the checkpoint (its content differs){hint}"
        return None

    def _open(self, pages: FilePages) -> int:
        pages.fd = self.fs.host(pages.layer).open(pages.path, os.O_RDONLY)
        return pages.fd


def read_reference(memfile: MemoryFile, ref: dict) -> dict | None:
    """Read a file an image references (an entry of FileCache.references) into `memfile`
    at its offset, as the sandbox would have: a clone's base memory. Returns what a clone
    checks before it maps the pages from there (FileCache.take_from_base), or None, and
    nothing written, if the file is not a regular file of that size and content. The path
    comes from the image, so the content is written only once it matches the image's
    digest, and a clone takes the pages only if its own lookup beneath its rootfs finds
    the same file."""
    try:
        fd = os.open(ref["file"], os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, TypeError, ValueError, KeyError):
        return None
    try:
        st = os.fstat(fd)
        offset, size, filled = int(ref["offset"]), int(ref["size"]), ref["filled"]
        if not stat_is_regular(st.st_mode) or st.st_size != size:
            return None
        h = hashlib.sha256()
        parts = []
        for start, end in filled:
            data = bytearray(min(end, size) - start)
            _read_into(fd, memoryview(data), start)
            h.update(data)
            parts.append((offset + start, data))
        if h.digest() != ref["digest"]:
            return None
        for at, data in parts:  # pwrite: the refiller itself maps none of the base
            done = 0
            while done < len(data):
                done += os.pwrite(memfile.fd, memoryview(data)[done:], at + done)
        return {"digest": ref["digest"], "identity": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]}
    except (OSError, SyscallError, TypeError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise SyscallError(errno.EIO, "file shrank while being read")
        done += n
