"""/proc against a native run: status in Linux's order, a thread's own files, io counts,
memory figures that follow what the process maps and touches, oom_score_adj, /proc/stat,
mountinfo, zombies; and through a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["procfs", "procfs-glibc"])
def test_proc_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "touching 16 MB: VmRSS grew by 16-17 MB 1, RssAnon holds it 1" in want and "zombie stat state: Z" in want
    assert "auxv: whole pairs 1, AT_PAGESZ right 1, ends with AT_NULL 1" in want and "/proc/mounts: 1" in want
    assert "mem: pwrite to read-only memory 1, reads back X" in want and "mem: pread of the hole -1 EIO" in want
    assert "io: 10 writes counted 1, their 100 bytes 1" in want and "children: the child 1" in want
    assert "task/ opened while it ran, listed once it is reaped: No such file or directory" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "procfs").stdout, want)


def test_what_proc_shows_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "procfs", "done", lazy=False)
    assert got == ["oom_score_adj <- 300: ok", "holding",
                   "after: oom_score_adj 300, the child a zombie 1, VmPeak kept 1", "done"]
