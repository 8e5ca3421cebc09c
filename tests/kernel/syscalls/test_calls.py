"""Calls of several families that real programs and external suites expect, against native
runs: preadv/pwritev and their v2 forms (rw), sync, syncfs and sync_file_range (rw), statfs
and fstatfs (stats), scheduler queries and settings, I/O priorities, personality (info),
mincore, mlock2, memory policies, process_vm_readv/writev (mm), fallocate (attrs), FIONREAD
(fdops), epoll_pwait2 (poll), sendmmsg and recvmmsg (net)."""

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


DGRAM_SEND_TIMEOUT = """
import errno, socket, struct, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack('qq', 0, 200000))
print(struct.unpack('qq', a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)))
sent = 0
for _ in range(10000):
    start = time.monotonic()
    try:
        a.send(b'x' * 100)
        sent += 1
    except OSError as e:
        print(errno.errorcode[e.errno], sent > 0, time.monotonic() - start >= 0.19)
        break
b.recv(100)
a.send(b'')
print('room again')
"""


def test_so_sndtimeo_ends_a_datagram_send_to_a_full_queue(snapbox, tmp_path):
    """The receiver's queue fills; the next send waits SO_SNDTIMEO, then fails with EAGAIN
    (socket(7)); once there is room again even an empty datagram goes."""
    native = subprocess.run([sys.executable, "-c", DGRAM_SEND_TIMEOUT], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert native == "(0, 200000)\nEAGAIN True True\nroom again\n"
    p = subprocess.run(snapbox.cmd("do", sys.executable, "-c", DGRAM_SEND_TIMEOUT), capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.stdout == native, p.stderr


CHILD_TIMES = """
import os, resource, time
for ignore in (False, True):
    if ignore:  # children nobody waits for are not counted (SIGCHLD ignored: they are reaped at once)
        import signal
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        grandchild = os.fork()
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        if grandchild:
            os.waitpid(grandchild, 0)
        os._exit(0)
    if not ignore:
        os.waitpid(pid, 0)
    else:
        time.sleep(1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print("ignored" if ignore else "waited", "child and grandchild counted:", spent > 0.5,
          "times() agrees:", abs(os.times().children_user + os.times().children_system -
                                 after.ru_utime - after.ru_stime) < 0.05)
"""


def test_children_cpu_time_matches_native(snapbox, tmp_path):
    """getrusage(RUSAGE_CHILDREN) and times() count the children waited for, and theirs."""
    want = subprocess.run([sys.executable, "-c", CHILD_TIMES], capture_output=True, text=True, timeout=60).stdout
    assert want == ("waited child and grandchild counted: True times() agrees: True\n"
                    "ignored child and grandchild counted: False times() agrees: True\n")
    p = subprocess.run(snapbox.cmd("do", sys.executable, "-c", CHILD_TIMES), capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.stdout == want, p.stderr
