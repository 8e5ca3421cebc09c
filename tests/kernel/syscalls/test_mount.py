"""mount(2) and umount2(2) inside the sandbox: tmpfs and bind mounts, stacked and taken
away, /proc/mounts, MS_NOEXEC, the errors; against native runs (natively in a mount
namespace of the program's own)."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["mounts", "mounts-glibc"])
def test_mount_and_umount_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "the file beneath again: covered" in want and "exec on a noexec mount: Permission denied" in want
    assert "bind a directory: ok, seen there: from src" in want and want.endswith("cleaned up: ok\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "mnt").stdout, want)


def test_a_tmpfs_mounted_inside_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "mounts", "done", lazy=False)
    assert got == ["holding", "after: in the tmpfs, listed yes", "done"]
