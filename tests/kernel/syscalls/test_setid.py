"""execve of set-user-ID and set-group-ID programs: ids, capabilities, AT_SECURE and the
auxiliary vector's ids, and where the bits are ignored; against native runs."""

from __future__ import annotations

import pytest

from tests.conftest import native_fixture, same_output


@pytest.mark.parametrize("bundle", ["setid", "setid-glibc"])
def test_set_user_and_group_id_execs_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "uids 1000 0 0, gids 1000 1000 1000, AT_SECURE 1" in want
    assert "uids 1000 1000 1000, gids 1000 4321 4321, AT_SECURE 1" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "sid").stdout, want)
