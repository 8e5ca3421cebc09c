"""Credentials and capabilities against a native run as root: capget/capset, the bounding
and ambient sets, keep-caps, set*id and execve's effect on capabilities, and the file
permission checks of a process that is not root or has dropped root's capabilities; each
thread's own credentials; and ids and capabilities carried through a checkpoint."""

from __future__ import annotations

import subprocess

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
