"""unshare(2) and clone(2)'s CLONE_NEW* flags: user, UTS and IPC namespaces of a process's
own, /proc/PID/ns and setns(2), /proc/PID/uid_map, gid_map and setgroups, against native
runs; the kinds snapbox does not have refused with EINVAL."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["unshare", "unshare-glibc"])
def test_uts_and_ipc_namespaces_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "a child made before: the first name" in want and "a child made after: inner" in want
    assert "System V queue of the old namespace: No such file or directory" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ns").stdout, want)


@pytest.mark.parametrize("bundle", ["setns", "setns-glibc"])
def test_proc_ns_and_setns_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "setns as UTS: ok, name now child-a" in want and "their message queue after: ok" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "sns").stdout, want)


@pytest.mark.parametrize("bundle", ["userns", "userns-glibc"])
def test_user_namespaces_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "mapped: uid 0/0/0 gid 0/0/0" in want and "child mapped by its parent: uid 2/2/2 gid 0/0/0" in want
    assert "nested user namespaces made: 33, then No space left on device" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "uns").stdout, want)


def test_a_user_namespace_survives_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "userns", "done", lazy=False)
    assert got == ["holding", "after: uid 0, uid_map [         0          0          1|], setgroups [deny|], "
                   "CapEff: 000001ffffffffff, name held", "map again after: Operation not permitted", "done"]


def test_namespaces_of_its_own_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "unshare", "done", lazy=False)
    assert got == ["holding", "after: held, message kept (16)", "done"]


def test_a_namespace_snapbox_does_not_have_is_refused_and_logged(snapbox, tmp_path):
    script = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
              "print(libc.unshare(0x20000), os.strerror(ctypes.get_errno()))")
    log = tmp_path / "sandbox.log"
    p = snapbox("--debug-log", str(log), "do", "--", sys.executable, "-c", script)
    assert p.stdout == "-1 Invalid argument\n"
    assert "new mount namespace: not supported (EINVAL)" in log.read_text()
