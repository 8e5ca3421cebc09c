"""Host files' cached pages: shared by read-only private mappings across address spaces and
fork, copied when a mapping is made writable, freed with the last mapping."""

from __future__ import annotations

import os
import time

from snapbox.kernel.filepages import FileCache
from snapbox.kernel.kernel import Kernel
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.vfs import Filesystem
from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.platform.stub import PROT_EXEC, PROT_READ, PROT_WRITE

CONTENT = bytes(range(256)) * (3 * PAGE_SIZE // 256) + b"tail"  # three pages and a bit


def cache_over(tmp_path) -> tuple[MemoryFile, Filesystem, FileCache]:
    (tmp_path / "lib.so").write_bytes(CONTENT)
    memfile = MemoryFile()
    fs = Filesystem(rootfs=str(tmp_path), memfile=memfile)
    return memfile, fs, FileCache(memfile, fs)


def test_read_only_mappings_share_the_files_pages_and_a_writable_one_gets_a_copy(tmp_path):
    memfile, fs, cache = cache_over(tmp_path)
    node = fs.lookup(fs.root, "lib.so")
    a = MemoryManager(memfile=memfile, cache=cache)
    b = MemoryManager(memfile=memfile, cache=cache)
    size = 5 * PAGE_SIZE  # past the file's last page: zeroed memory, as an ELF's bss
    for mm in (a, b):
        assert mm.map_file(0x100000, size, PROT_READ | PROT_EXEC, True, cache.get(node), 0, "/lib.so") == 0x100000
    assert a.find(0x100000).offset == b.find(0x100000).offset
    assert a.read(0x100000, len(CONTENT)) == CONTENT
    assert a.read(0x100000 + len(CONTENT), size - len(CONTENT)) == bytes(size - len(CONTENT))
    assert len(cache.files) == 1 and cache.files[0].users == 2
    assert cache.files[0].filled == [[0, 4 * PAGE_SIZE]]

    # Made writable, the middle page becomes a's own: b still reads the file.
    a.protect(0x100000 + PAGE_SIZE, PAGE_SIZE, PROT_READ | PROT_WRITE)
    a.write(0x100000 + PAGE_SIZE, b"mine")
    assert a.read(0x100000 + PAGE_SIZE, 4) == b"mine"
    assert b.read(0x100000 + PAGE_SIZE, 4) == CONTENT[PAGE_SIZE : PAGE_SIZE + 4]
    assert a.read(0x100000 + 2 * PAGE_SIZE, 8) == CONTENT[2 * PAGE_SIZE : 2 * PAGE_SIZE + 8]

    # A fork shares the pages too; the last unmap frees them and their charge.
    c = a.fork()
    assert c.find(0x100000).offset == a.find(0x100000).offset
    assert c.read(0x100000 + PAGE_SIZE, 4) == b"mine"
    assert cache.files[0].users == 5  # a's and c's two cached pieces, and b's one
    for mm in (a, b, c):
        mm.release_all()
    assert cache.files == [] and memfile.charged == 0 and memfile.allocated == 0


def test_discarding_cached_pages_keeps_the_files_content(tmp_path):
    memfile, fs, cache = cache_over(tmp_path)
    mm = MemoryManager(memfile=memfile, cache=cache)
    mm.map_file(0x100000, PAGE_SIZE, PROT_READ, True, cache.get(fs.lookup(fs.root, "lib.so")), PAGE_SIZE, "/lib.so")
    mm.discard(0x100000, PAGE_SIZE)  # madvise(MADV_DONTNEED) reads the file again on Linux
    assert mm.read(0x100000, PAGE_SIZE) == CONTENT[PAGE_SIZE : 2 * PAGE_SIZE]


def test_processes_of_a_dynamic_shell_share_one_copy_of_libc():
    k = Kernel.boot("/", [b"/bin/sh", b"-c", b"/bin/sleep 5 & /bin/sleep 5"], [b"PATH=/bin"])
    k.start()

    def address_spaces() -> list:
        """Those of the processes (a vfork child shares its parent's until it execs)."""
        return list({id(tg.mm): tg.mm for tg in k.tasks.pidns.groups.values()}.values())

    def libc_text() -> dict[int, set[int]]:
        """address space -> MemoryFile offsets of the libc text it maps."""
        return {id(mm): {v.offset for v in mm.vmas
                         if v.pages is not None and v.pages.path.endswith("libc.so.6") and v.prot & PROT_EXEC}
                for mm in address_spaces()}

    deadline = time.monotonic() + 30
    try:
        while not (len(text := libc_text()) == 3 and all(text.values())):
            assert time.monotonic() < deadline, f"processes never all mapped libc: {text}"
            k.step(0.05)
        libc = [p for p in k.file_cache.files if p.path.endswith("libc.so.6")]
        assert len(libc) == 1
        assert len(set.union(*text.values())) == len(next(iter(text.values())))  # the same pages everywhere
        assert libc[0].users == sum(v.pages is libc[0] for mm in address_spaces() for v in mm.vmas)
        assert os.path.samefile(os.path.join("/", libc[0].path), "/lib/x86_64-linux-gnu/libc.so.6")
    finally:
        k.shutdown()
