"""Signals and job control, against native runs."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import same_output


@pytest.mark.parametrize("bundle", ["signals", "signals-glibc"])
def test_signals_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / f"/{bundle}".lstrip("/")
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    got = snapbox("run", "--bundle", str(images / bundle), "sig").stdout

    def normal(text: str) -> str:
        return re.sub(r"pid=\d+", "pid=N", text)

    assert normal(got) == normal(want)
    assert "segv at 0x1234" in got and "read after restart n=1 c=x" in got


@pytest.mark.parametrize("bundle", ["jobs", "jobs-glibc"])
def test_job_control_stop_and_continue_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    assert "stopped=1 sig=19" in want and "continued=1" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "jobs").stdout, want)
