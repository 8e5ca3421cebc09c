"""Terminals as containerd hands them over (runc's --console-socket, for `ctr run -t` and
`ctr task exec -t`) and as `snapbox exec -t` uses the caller's: a shell runs on them with
job control, and ^C interrupts the foreground job, not the shell."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import wait_for
from tests.e2e.test_lifecycle import busybox_config, write_bundle
from tests.e2e.test_runc_contract import SHIM


class Console:
    """The receiving end of --console-socket: a listening socket, then the master it is sent."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.master = -1

    def accept(self) -> None:
        self.server.settimeout(30)
        conn, _ = self.server.accept()
        with conn:
            _, ancillary, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(4))
        (self.master,) = struct.unpack("i", ancillary[0][2][:4])

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
        self.server.close()


def read_until(fd: int, wanted: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} never came; saw {seen!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the other side is closed
                data = b""
            assert data, f"the terminal closed before {wanted!r}; saw {seen!r}"
            seen += data
    return seen


def interrupt_a_job(fd: int) -> None:
    """At an interactive shell's prompt: a foreground job, ^C, then what the shell says."""
    os.write(fd, b"sleep 30; echo not-interrupted-$((6 * 7))\n")  # what it prints is not what it echoes
    time.sleep(0.5)
    os.write(fd, b"\x03")
    os.write(fd, b"echo job-ended-$?\n")
    seen = read_until(fd, b"job-ended-130")
    assert b"not-interrupted-42" not in seen


def test_console_keys_reach_the_foreground_job_and_not_the_shell(snapbox, images, tmp_path):
    console = Console(tmp_path / "console.sock")
    bundle = write_bundle(tmp_path, busybox_config(images, "exec sh -i", terminal=True))
    try:
        p = subprocess.Popen(snapbox.cmd("create", "--bundle", str(bundle), "--console-socket", console.path,
                                         "--pid-file", str(tmp_path / "pid"), "c1"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        console.accept()
        assert p.wait(timeout=30) == 0, p.stderr.read()
        snapbox("start", "c1")
        read_until(console.master, b"# ")
        interrupt_a_job(console.master)
        os.write(console.master, b"exit 7\n")
        wait_for(lambda: json.loads(snapbox("state", "c1").stdout)["status"] == "stopped", what="the shell to exit")
    finally:
        console.close()


def test_exec_on_a_console_of_its_own(snapbox, images, tmp_path):
    """`exec --console-socket S --detach --pid-file P`, as containerd's shim runs it for
    `ctr task exec -t`: the process runs on the new terminal, the process left behind (P)
    holds it, passes ^C to the foreground job and exits with the shell's code."""
    bundle = write_bundle(tmp_path, busybox_config(images, "while true; do sleep 0.2; done"))
    with open(tmp_path / "out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--detach", "--bundle", str(bundle), "c1"), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60)
    console = Console(tmp_path / "console.sock")
    pid_file = tmp_path / "exec.pid"
    shim = [sys.executable, "-c", SHIM, str(pid_file),
            *snapbox.cmd("exec", "--console-socket", console.path, "--detach", "--pid-file", str(pid_file),
                         "c1", "sh")]
    try:
        # The exec command's own output is read to its end: nothing left behind holds it open.
        waiter = subprocess.Popen(shim, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        console.accept()
        read_until(console.master, b"# ")
        os.write(console.master, b"[ -t 0 ] && echo on-a-tty\n")
        read_until(console.master, b"on-a-tty")
        interrupt_a_job(console.master)
        os.write(console.master, b"exit 5\n")
        out, err = waiter.communicate(timeout=30)
        assert (waiter.returncode, out) == (0, "5\n"), err
    finally:
        console.close()


def test_exec_tty_on_the_callers_terminal(snapbox, images, tmp_path):
    """`snapbox exec -t ID sh` typed at a terminal: the shell's job control works there (it
    is the foreground of its own session), and ^C reaches its job."""
    bundle = write_bundle(tmp_path, busybox_config(images, "while true; do sleep 0.2; done"))
    with open(tmp_path / "out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--detach", "--bundle", str(bundle), "c1"), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60)
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(sys.executable, snapbox.cmd("exec", "-t", "c1", "sh"))
    try:
        read_until(fd, b"# ")
        interrupt_a_job(fd)
        os.write(fd, b"exit 3\n")
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "exec -t did not end with the shell"
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([fd], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        os.close(fd)
