"""System V IPC (message queues, semaphore sets, shared memory), POSIX shared memory,
semaphores and message queues against a native run in a fresh IPC namespace, and tasks
blocked in msgrcv, semop and mq_receive carried through a checkpoint."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import held_through_a_restore, same_output


def native_in_own_ipc_namespace(images, bundle: str, tmp_path) -> str:
    """The fixture run natively with no other IPC objects around (ids and keys as in the
    sandbox, whose namespace is its own)."""
    binary = images / bundle / "rootfs" / bundle
    return subprocess.run(["unshare", "--ipc", str(binary)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=True).stdout


@pytest.mark.parametrize("bundle", ["ipc", "ipc-glibc"])
def test_system_v_ipc_matches_native(snapbox, images, tmp_path, bundle):
    want = native_in_own_ipc_namespace(images, bundle, tmp_path)
    assert "waiter of a removed set got EIDRM: yes" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ipc").stdout, want)


@pytest.mark.parametrize("lazy", [False, True])
def test_tasks_blocked_in_msgrcv_semop_and_mq_receive_survive_a_checkpoint(snapbox, images, tmp_path, lazy):
    got = held_through_a_restore(snapbox, images, tmp_path, "ipc", "done", lazy)
    assert "reader got: sent after" in got
    assert "waiter: ok" in got
    assert 'msgrcv still queued: type 2 "queued before" (13)' in got
    assert "segment: kept in the segment, sem after the waiter's undo: 1" in got
    assert "mq reader got: sent after (7)" in got
