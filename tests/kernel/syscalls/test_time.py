"""Clocks and CPUs: CPU-time clocks of threads and processes by id, the clocks that cannot be set,
against native runs; and the sandbox's own realtime clock, set inside without touching
the host's."""

from __future__ import annotations

import sys
import time

import pytest

from tests.conftest import native_fixture, same_output


@pytest.mark.parametrize("bundle", ["clocks", "clocks-glibc"])
def test_cpu_clocks_and_settime_errors_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "the spinning thread used more CPU than I did: yes" in want
    assert "its thread clock from here: Invalid argument" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "clk").stdout, want)


def test_the_sandboxs_realtime_clock_is_its_own(snapbox):
    """clock_settime moves the sandbox's clock a day ahead: time() and gettimeofday there
    follow it, a child sees it too, the host's clock does not move."""
    script = ("import ctypes, os, time\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "class ts(ctypes.Structure): _fields_ = [('s', ctypes.c_long), ('ns', ctypes.c_long)]\n"
              "now = time.time()\n"
              "print(libc.clock_settime(0, ctypes.byref(ts(int(now) + 86400, 0))))\n"
              "print(round((time.time() - now) / 3600))\n"
              "os.system('python3 -c \"import time; print(round(time.time()))\"')\n")
    before = time.time()
    out = snapbox("do", "--", sys.executable, "-c", script).stdout.split()
    assert out[:2] == ["0", "24"]
    assert abs(int(out[2]) - (before + 86400)) < 60
    assert abs(time.time() - before) < 60  # the host's clock is where it was


@pytest.mark.parametrize("bundle", ["affinity", "affinity-glibc"])
def test_cpu_affinity_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "a child: only the last CPU" in want and "another user's process: Operation not permitted" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "aff").stdout, want)
