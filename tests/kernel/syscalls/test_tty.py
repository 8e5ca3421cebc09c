"""Pseudo-terminals against native runs: the pty fixture (line discipline, termios, the
controlling terminal and job control, hangups), a pty's state through a checkpoint, and
real programs that need one (an interactive bash with job control, script, tmux)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output

PTY_SHELL = Path(__file__).with_name("ptyshell.py")


def native_in_own_session(binary: Path, *args: str) -> str:
    """The fixture natively, as the sandbox's first process starts: a session leader with
    no controlling terminal."""
    return subprocess.run(["setsid", "--wait", str(binary), *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=True).stdout


@pytest.mark.parametrize("bundle", ["pty", "pty-glibc"])
def test_pseudo_terminals_match_native(snapbox, images, bundle):
    want = native_in_own_session(images / bundle / "rootfs" / bundle)
    assert "child: background reader stopped 1 by 21" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "pty").stdout, want)


@pytest.mark.parametrize("bundle", ["ptypkt", "ptypkt-glibc"])
def test_packet_mode_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "the slave wrote hi: poll 1 IN, read 00 68 69" in want and "stopped and flushed: poll 1 IN PRI, read 05" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "pkt").stdout, want)


def test_a_half_typed_line_and_unread_output_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "pty", "done", lazy=False)
    assert got == native_in_own_session(images / "pty" / "rootfs" / "pty", "hold").splitlines()
    assert "after the checkpoint (34):half a line\\x0d\\x0agot 12: half a line\\x0d\\x0a" in got


def _pids(text: str) -> str:
    return re.sub(r"\[1\] \d+", "[1] PID", text)


def test_an_interactive_bash_with_job_control_runs_on_a_sandbox_pty(snapbox):
    cmd = [sys.executable, str(PTY_SHELL), "bash", "--norc", "--noprofile", "-i"]
    want = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "/dev/pts/" in want and "42" in want and "Done" in want
    got = snapbox("do", *cmd).stdout
    assert _pids(got) == _pids(want).replace(re.search(r"/dev/pts/\d+", want).group(), "/dev/pts/0")


def test_script_and_tmux_run_inside(snapbox, tmp_path):
    got = snapbox("do", "script", "-qc", "tty; stty size", "/dev/null").stdout
    assert got == "/dev/pts/0\n0 0\n"  # script writes the pty's CR LF; text mode reads LF
    session = (f"export TMUX_TMPDIR={tmp_path}; tmux -f /dev/null new-session -d -s t -x 80 -y 24 "
               "'echo inside; tty; stty size; sleep 30'; sleep 1; tmux capture-pane -p -t t | head -3; "
               "tmux kill-server")
    assert snapbox("do", "sh", "-c", session).stdout == "inside\n/dev/pts/0\n24 80\n"
