"""Signals, job control, signalfd and sigqueue, against native runs."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["signals", "signals-glibc"])
def test_signals_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    got = snapbox("run", "--bundle", str(images / bundle), "sig").stdout

    def normal(text: str) -> str:
        return re.sub(r"pid=\d+", "pid=N", text)

    assert normal(got) == normal(want)
    assert "segv at 0x1234" in got and "read after restart n=1 c=x" in got


@pytest.mark.parametrize("bundle", ["jobs", "jobs-glibc"])
def test_job_control_stop_and_continue_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "stopped=1 sig=19" in want and "continued=1" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "jobs").stdout, want)


@pytest.mark.parametrize("bundle", ["sigfd", "sigfd-glibc"])
def test_signalfd_and_sigqueue_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "sigqueue: 12, code SI_QUEUE 1, value 42" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "sfd").stdout, want)


def test_a_signal_pending_on_a_signalfd_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "sigfd",
                                 "after the sleep: 128 bytes, signal 10, from me: 1", False)
    assert got == ["holding", "after the sleep: 128 bytes, signal 10, from me: 1"]


@pytest.mark.parametrize("bundle", ["frames", "frames-glibc"])
def test_signal_frames_and_queued_realtime_signals_match_native(snapbox, images, bundle):
    """Frames sized like Linux's (AMX tiles only once asked for and used), an 8 KB
    alternate stack, the arch_prctl XSTATE and CPUID-faulting options, real-time signals
    queued and nested in Linux's order, MXCSR across fork and exec."""
    want = native_fixture(images, bundle)
    assert "8 KB altstack: frame" in want and "sigwaitinfo: RTMIN value 22" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "frames").stdout, want)


def test_queued_realtime_signals_and_amx_state_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "frames", "done", lazy=False)
    assert "after the checkpoint: 4 delivered: 7 8 9 10" in got
    native = subprocess.run([str(images / "frames" / "rootfs" / "frames"), "hold"], capture_output=True,
                            text=True, timeout=30, check=True).stdout.splitlines()
    assert got == native  # with AMX: the tiles' frame size and permission carried over too
