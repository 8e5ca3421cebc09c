"""Linux AIO against a native run, and a completion reaped after a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["aio", "aio-glibc"])
def test_linux_aio_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "ring: magic 0xa10a10a1 header 32" in want and "the waiting thread got 1: data 17 res 1" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "aio").stdout, want)


def test_a_completion_in_the_ring_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "aio", "done", lazy=False)
    assert got == ["holding", "reaped after the checkpoint: 1 [data 41 iocb 0 res 4 res2 0]",
                   "and a read: 1 [data 42 iocb 0 res 4 res2 0]", 'read "kept"', "done"]
