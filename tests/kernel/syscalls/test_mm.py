"""Memory syscalls (mmap, munmap, mremap, mprotect, msync, madvise), against native runs."""

from __future__ import annotations

import pytest

from tests.conftest import native_fixture, same_output


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
