"""Waiting: epoll, with eventfd and timerfd as what it waits on, against native runs."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import same_output


@pytest.mark.parametrize("bundle", ["events", "events-glibc"])
def test_eventfd_timerfd_and_epoll_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    assert want == "eventfd=5 timer>=3:1 pipe=2\n"
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ev").stdout, want)
