"""Keyrings: keyctl(2)'s session keyrings, checked against the host's, and kept in images."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["keys", "keys-glibc"])
def test_session_keyrings_match_native(snapbox, images, bundle):
    """The default session keyring, anonymous and named ones joined per thread and handed
    on by clone and fork, permission masks set and enforced, and keyctl's errors."""
    want = native_fixture(images, bundle)
    assert "another thread joins the searchable one by name: the same" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "k").stdout, want)


def test_a_session_keyring_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "keys", "done", lazy=False)
    assert got == ["holding", "after: the same keyring yes, its name kept, perm kept yes",
                   "a new process joins it by name: already in it", "done"]
