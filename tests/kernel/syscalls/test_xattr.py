"""Extended attributes against a native run on a tmpfs, and through a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["xattr", "xattr-glibc"])
def test_extended_attributes_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "list (42): user.z user.m user.long user.empty user.a" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "xattr").stdout, want)


def test_extended_attributes_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "xattr", "done", lazy=False)
    assert got == ["holding", 'after the checkpoint: 10 "checkpoint"', 'the directory\'s: 1 "d"', "done"]
