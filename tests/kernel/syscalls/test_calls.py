"""Calls of several families that real programs and external suites expect, against native
runs: preadv/pwritev and their v2 forms (rw), sync, syncfs and sync_file_range (rw), statfs
and fstatfs (stats), scheduler queries (info), mincore (mm), FIONREAD (fdops), epoll_pwait2
(poll)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import native_fixture, same_output


@pytest.mark.parametrize("bundle", ["calls", "calls-glibc"])
def test_calls_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "mincore: ok 1010" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "calls").stdout, want)


def test_so_sndtimeo_is_refused_rather_than_ignored(snapbox, tmp_path):
    """Sends do not time out in the sandbox: setting SO_SNDTIMEO says so (ENOPROTOOPT) instead
    of succeeding and then blocking for ever, which is what a program would not expect."""
    program = ("import errno, socket, struct\n"
               "a, b = socket.socketpair()\n"
               "try:\n"
               "    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack('qq', 1, 0))\n"
               "    print('accepted')\n"
               "except OSError as e:\n"
               "    print(errno.errorcode[e.errno])\n")
    p = subprocess.run(snapbox.cmd("do", sys.executable, "-c", program), capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert p.stdout == "ENOPROTOOPT\n", p.stderr
