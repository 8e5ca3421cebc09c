"""Waiting: epoll, with eventfd and timerfd as what it waits on, against native runs."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["events", "events-glibc"])
def test_eventfd_timerfd_and_epoll_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert want == "eventfd=5 timer>=3:1 pipe=2\n"
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ev").stdout, want)


@pytest.mark.parametrize("bundle", ["epolls", "epolls-glibc"])
def test_edge_triggered_and_nested_epoll_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "ET again, no new data: 0" in want and "ET after a second write, unread data: 1" in want
    assert "outer, inner ready: 1 (data 9)" in want and "chain down, level 4: ok" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ep").stdout, want)


def test_a_wait_on_a_nested_epoll_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "epolls", "done", lazy=False)
    assert got == ["holding", "outer woke: 1 (data 9), inner has 1", "done"]
