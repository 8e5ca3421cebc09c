"""Starting and limiting processes against a native run: vfork and clone(CLONE_VM|CLONE_VFORK)
(the parent waits, memory is shared, signals wait too), posix_spawn, RLIMIT_CPU, getrusage of
children, SO_SNDTIMEO, execveat; and a parent waiting in vfork across a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["spawn", "spawn-glibc"])
def test_spawn_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "vfork: the parent resumed after the child exited, shared=1" in want
    assert "RLIMIT_CPU: ended by Killed" in want and "part of it 1, after the timeout 1" in want
    assert "of a child that touched 32 MiB: about that 1, children's too 1" in want
    assert "kill of a zombie: 0; its status still 3; once reaped: ESRCH" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "spawn").stdout, want)


def test_a_parent_waiting_in_vfork_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "spawn", "done", lazy=False)
    assert got == ["holding", "parent resumed after the child: shared=1", "done"]


@pytest.mark.parametrize("bundle", ["execat", "execat-glibc"])
def test_execveat_matches_native(snapbox, images, bundle):
    """execveat: by a path relative to a directory fd, by the program's own fd or an O_PATH
    one (fexecve), from a memfd copy (exe then names the memfd), and its errors."""
    want = native_fixture(images, bundle)
    assert "exe ends /memfd:copy (deleted)" in want and "nofollow: " in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ea").stdout, want)
