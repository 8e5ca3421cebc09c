"""Memory syscalls (mmap, munmap, mremap, mprotect, msync, madvise), against native runs;
the pages of a file mapping past its file's end."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["mapping", "mapping-glibc"])
def test_memory_mappings_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    got = snapbox("run", "--bundle", str(images / bundle), "map").stdout
    assert same_output(got, want)
    assert "after fork: shared=42 private=1 map=kid!" in got
    assert "mmap at offset -4096: EOVERFLOW" in want
    assert "MAP_32BIT: mapped, in [1 GiB, 2 GiB) 1" in want and "with 64 MiB left under it: " in want
    assert "RLIMIT_DATA 4096: brk grows 0; a writable private mapping: " in want


@pytest.mark.parametrize("bundle", ["memlock", "memlock-glibc"])
def test_memory_locks_match_native(snapbox, images, bundle):
    """mlock, munlock, mlockall and MAP_LOCKED: VmLck, EBUSY and EINVAL where locked memory
    refuses msync(MS_INVALIDATE) and MADV_DONTNEED, fork's child unlocked, RLIMIT_MEMLOCK."""
    want = native_fixture(images, bundle)
    assert "locked: pages 0-4: 0 1 1 1 0" in want and "child: VmLck 0 kB, locked 0" in want and "done" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ml").stdout, want)


@pytest.mark.parametrize("bundle", ["bigmap", "bigmap-glibc"])
def test_a_large_shared_file_mapping_and_mremap_shrinking_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "lines of /proc/self/maps for it: 1" in want and "first page still reads one" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "big").stdout, want)


@pytest.mark.parametrize("bundle", ["pastend", "pastend-glibc"])
def test_a_file_mappings_pages_past_its_file_match_native(snapbox, images, bundle):
    """SIGBUS past a mapped file's end, EFAULT for calls given memory there, and the pages
    coming and going as the file grows and shrinks."""
    want = native_fixture(images, bundle)
    assert "shared: second page read SIGBUS code 2 at the address 1" in want
    assert "private: after a write grew the file: second page ok, its bytes 'grown'" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "pe").stdout, want)


def test_a_file_mappings_end_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "pastend", "done", lazy=False)
    assert got == ["holding", "after: first page ok 'held', second SIGBUS code 2 at the address 1",
                   "after, grown: second page ok, third SIGBUS code 2 at the address 1", "done"]
