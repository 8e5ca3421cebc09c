"""futex(2) against a native run: priority-inheritance locks, robust mutexes whose owner
dies, the plain operations' corner cases; and a PI lock waited for across a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["futex", "futex-glibc"])
def test_futex_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "PI mutex, 4 threads x 5000: 20000" in want and "word: owner+waiters+died" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "futex").stdout, want)


def test_a_pi_lock_waiter_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "futex", "done", lazy=False)
    assert got == ["LOCK_PI: 0", "holding", "word before unlock: owner+waiters", "thread LOCK_PI: 0",
                   "UNLOCK_PI: 0", "word after the thread exited: other+waiters", "done"]


@pytest.mark.parametrize("bundle", ["requeuepi", "requeuepi-glibc"])
def test_requeue_pi_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "the lock held: CMP_REQUEUE_PI moved 2, the lock free at the end: yes" in want
    assert want.count("a waiter returned: ok, owning the lock: yes") == 5
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "rq").stdout, want)


def test_a_waiter_moved_onto_a_pi_lock_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "requeuepi", "done", lazy=False)
    assert got == ["moved 1", "holding", "a waiter returned: ok, owning the lock: yes", "done"]
