"""Memory syscalls (mmap, munmap, mremap, mprotect, msync, madvise), against native runs."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import same_output


@pytest.mark.parametrize("bundle", ["mapping", "mapping-glibc"])
def test_memory_mappings_match_native(snapbox, images, tmp_path, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    got = snapbox("run", "--bundle", str(images / bundle), "map").stdout
    assert same_output(got, want)
    assert "after fork: shared=42 private=1 map=kid!" in got
