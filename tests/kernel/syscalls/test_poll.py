"""Waiting: epoll, with eventfd and timerfd as what it waits on, against native runs."""

from __future__ import annotations

import pytest

from tests.conftest import native_fixture, same_output


@pytest.mark.parametrize("bundle", ["events", "events-glibc"])
def test_eventfd_timerfd_and_epoll_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert want == "eventfd=5 timer>=3:1 pipe=2\n"
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ev").stdout, want)
