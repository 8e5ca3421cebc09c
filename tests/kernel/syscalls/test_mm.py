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
