"""inotify against a native run, and events queued across a checkpoint."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["inotify", "inotify-glibc"])
def test_inotify_events_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert 'rename: [1 MOVED_FROM cookie "b" len 16] [1 MOVED_TO cookie=previous "c" len 16]' in want
    assert want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "inotify").stdout, want)


def test_inotify_watches_and_queued_events_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "inotify", "done", lazy=False)
    assert got == ["holding", 'after the checkpoint: [1 CREATE "kept" len 16] [1 OPEN "kept" len 16] '
                   '[1 CLOSE_WRITE "kept" len 16] [1 OPEN "kept" len 16] [1 MODIFY "kept" len 16] '
                   '[1 CLOSE_WRITE "kept" len 16]', "done"]
