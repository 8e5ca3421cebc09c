"""splice, tee and vmsplice against a native run, and a splice blocked across a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["splice", "splice-glibc"])
def test_splice_tee_and_vmsplice_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert 'file: "heABC worldtail"' in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "splice").stdout, want)


def test_a_splice_waiting_on_an_empty_pipe_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "splice", "done", lazy=False)
    assert got == ["holding", "the child spliced 17", 'the file: "after the restore"', "done"]
