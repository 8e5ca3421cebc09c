"""Credentials and capabilities against a native run as root: capget/capset, the bounding
and ambient sets, keep-caps, set*id and execve's effect on capabilities, and the file
permission checks of a process that is not root or has dropped root's capabilities; each
thread's own credentials; dumpability; and ids and capabilities carried through a checkpoint."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import NATIVE, held_through_a_restore, same_output


@pytest.mark.parametrize("bundle", ["creds", "creds-glibc"])
def test_credentials_and_permission_checks_match_native(snapbox, images, tmp_path, bundle):
    work = tmp_path / "native"  # the program fills its current directory with files of three owners
    work.mkdir()
    want = subprocess.run([*NATIVE, str(images / bundle / "rootfs" / bundle)], cwd=work, capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "sticky dir: unlink another's file EPERM" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "creds").stdout, want)


@pytest.mark.parametrize("bundle", ["threadcreds", "threadcreds-glibc"])
def test_each_thread_has_its_own_credentials(snapbox, images, tmp_path, bundle):
    """A raw setresuid or capset changes the calling thread only (/proc/self/status still
    shows the leader's), while the C library's setgid reaches every thread."""
    want = subprocess.run([*NATIVE, str(images / bundle / "rootfs" / bundle)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "main after setresuid thread: uid 0/0/0" in want and "main after setgid thread: uid 0/0/0 gid 5" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "threadcreds").stdout, want)


def test_ids_and_capabilities_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "creds", "done", lazy=False)
    assert "Uid:\t1000\t1000\t1000\t1000" in got
    assert "CapEff:\t0000000000000002" in got  # CAP_DAC_OVERRIDE alone
    assert "CAP_DAC_OVERRIDE permitted yes, CAP_SYS_BOOT bounding 0, keepcaps 1" in got


DUMPABLE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
print("start", libc.prctl(3))
if os.fork() == 0:
    os.setresgid(0, 0, 0)
    print("ids unchanged", libc.prctl(3))
    os.setegid(5)
    print("egid changed", libc.prctl(3))
    os.setegid(0)
    os.execv(SELF, [SELF, "-c", "import ctypes; print('after execve', ctypes.CDLL(None).prctl(3))"])
os.wait()
if os.fork() == 0:
    os.setresuid(1000, 1000, 0)
    print("uids changed", libc.prctl(3))
    os._exit(0)
os.wait()
"""


def test_dumpable_follows_id_changes_and_execve_as_native(snapbox):
    """PR_GET_DUMPABLE: cleared when a process's effective ids change (commit_creds), set
    again by an execve with its real and effective ids alike."""
    script = DUMPABLE.replace("SELF", repr(sys.executable))
    want = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "egid changed 0" in want and "after execve 1" in want
    assert same_output(snapbox("do", "--", sys.executable, "-c", script).stdout, want)
