"""Clocks and CPUs: CPU-time clocks of threads and processes by id, the clocks that cannot be set,
against native runs; the sandbox's own realtime clock, set inside without touching
the host's; and the vDSO, whose clocks agree with the syscall's, through a restore too."""

from __future__ import annotations

import sys
import time

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


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


@pytest.mark.parametrize("bundle", ["vdso", "vdso-glibc"])
def test_the_vdso_reads_the_sandboxs_clocks_as_linux_does(snapbox, images, bundle):
    """AT_SYSINFO_EHDR names a vDSO; the C library's clock_gettime, gettimeofday and time
    lie between two syscall readings, in a forked child and an exec'd program too; [vvar]
    can be neither made writable nor dropped."""
    want = native_fixture(images, bundle)
    assert "mprotect [vvar] writable: Permission denied" in want and "exec'd: AT_SYSINFO_EHDR given: yes" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "vd").stdout, want)


def test_vdso_clocks_stay_the_sandboxs_through_a_restore(snapbox, images, tmp_path):
    """A program reading the clocks both ways in a loop is checkpointed and restored (its
    monotonic clock goes on from where it stood, another offset from the host's): the
    vDSO's readings still lie between the syscall's, the restore's new offsets read whole."""
    got = held_through_a_restore(snapbox, images, tmp_path, "vdso", "done", lazy=False)
    assert "through the restore: every reading between syscall readings: yes (over 1000 readings)" in got, got
