"""Live migration between two roots on this machine, over TCP and over a command's pipes:
programs go on exactly where they were, and every failure before the receiver has the
program running leaves it running at the source."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Snapbox, clean_up, in_background, lines, wait_for
from tests.e2e.test_incremental import start_writer, ticks


@pytest.fixture
def receiver(tmp_path: Path, images: Path):
    """A second snapbox root: the other host."""
    sb = Snapbox(tmp_path / "other-root", images)
    yield sb
    clean_up(sb)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counts(out: Path) -> list[int]:
    return [int(x.split()[0].split("=")[1]) for x in lines(out) if x.startswith("count=")]


def listen(receiver: Snapbox, cid: str, port: int, out: Path, *options: str) -> subprocess.Popen:
    """`restore --listen` in the background, the program's output appended to `out`."""
    f = open(out, "a")
    p = subprocess.Popen(receiver.cmd("restore", "--listen", f"127.0.0.1:{port}", *options, "--detach", cid),
                         stdout=f, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    f.close()
    wait_for(lambda: _listening(port), timeout=30, what="the receiver to listen")
    return p


def _listening(port: int) -> bool:
    """Whether something listens on the port (a connect would be taken as the migration
    itself: the host's table of sockets says)."""
    with open("/proc/net/tcp") as f:
        return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in f)


def test_the_counter_moves_over_tcp_and_goes_on_counting(snapbox, receiver, tmp_path):
    out = tmp_path / "out.txt"
    (tmp_path / "token").write_text("s3cret\n")
    snapbox.run_detached("c", "counter", out)
    wait_for(lambda: len(counts(out)) >= 3, what="counts")
    port = free_port()
    r = listen(receiver, "c", port, out, "--token-file", str(tmp_path / "token"))
    p = snapbox("migrate", "--json", "--token-file", str(tmp_path / "token"), "--to", f"tcp://127.0.0.1:{port}",
                "c")
    summary = json.loads(p.stdout)
    assert summary["converged"] and len(summary["rounds"]) >= 2 and summary["method"].startswith("write-protection")
    assert r.wait(60) == 0, r.stderr.read()
    assert snapbox("state", "c", check=False).returncode != 0  # gone from the source
    n = len(counts(out))
    wait_for(lambda: len(counts(out)) >= n + 3, what="counts at the receiver")
    got = counts(out)
    assert got == list(range(1, len(got) + 1))  # not one count lost or repeated
    # And once more, from there to a third root.
    third = Snapbox(tmp_path / "third-root", snapbox.images)
    try:
        port = free_port()
        r = listen(third, "c", port, out)
        receiver("migrate", "--to", f"tcp://127.0.0.1:{port}", "c")
        assert r.wait(60) == 0
        n = len(counts(out))
        wait_for(lambda: len(counts(out)) >= n + 3, what="counts at the third root")
        got = counts(out)
        assert got == list(range(1, len(got) + 1))
    finally:
        clean_up(third)


def test_memory_that_keeps_changing_moves_over_exec_intact(snapbox, receiver, tmp_path):
    out = start_writer(snapbox, tmp_path, "w")
    wait_for(lambda: len(ticks(out)) >= 2, timeout=60, what="tick 2")
    moved = tmp_path / "moved.txt"
    command = " ".join(receiver.cmd("restore", "--image-path", "-", "w")) + f" 2>>{moved}"
    summary = json.loads(snapbox("migrate", "--json", "--to", f"exec:{command}", "w").stdout)
    assert summary["rounds"][0]["bytes"] > 8 << 20  # round 1: all 16 MB
    # Later ones: what changed since the round before.
    assert all(r["bytes"] < summary["rounds"][0]["bytes"] / 2 for r in summary["rounds"][1:]), summary
    wait_for(lambda: len(ticks(moved)) >= 3, timeout=60, what="ticks at the receiver")
    got = ticks(out) + ticks(moved)
    assert all(x.endswith(" ok") for x in got), got
    numbers = [int(x.split()[1]) for x in got]
    assert numbers == list(range(1, len(numbers) + 1))


def _assert_source_runs_on(snapbox, out: Path) -> None:
    assert json.loads(snapbox("state", "c").stdout)["status"] == "running"
    n = len(counts(out))
    wait_for(lambda: len(counts(out)) >= n + 2, what="the source counting on")


@pytest.mark.parametrize("why", ["id-in-use", "bundle", "token"])
def test_a_receiver_that_refuses_leaves_the_source_running(snapbox, receiver, tmp_path, images, why):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c", "counter", out)
    wait_for(lambda: len(counts(out)) >= 2, what="counts")
    port = free_port()
    (tmp_path / "token").write_text("right\n")
    (tmp_path / "wrong").write_text("wrong\n")
    options: list[str] = []
    if why == "id-in-use":
        receiver.run_detached("c", "counter", tmp_path / "other.txt")
    if why == "bundle":
        options = ["--bundle", str(tmp_path / "no-such-bundle")]
    if why == "token":
        options = ["--token-file", str(tmp_path / "token")]
    if why == "bundle":
        p = receiver("restore", "--listen", f"127.0.0.1:{port}", *options, "c", check=False)
        assert p.stderr == f"snapbox: error: bundle {tmp_path / 'no-such-bundle'} has no config.json\n"
        return
    r = listen(receiver, "c", port, tmp_path / "recv.txt", *options)
    p = snapbox("migrate", *(["--token-file", str(tmp_path / "wrong")] if why == "token" else []),
                "--to", f"tcp://127.0.0.1:{port}", "c", check=False)
    reason = {"id-in-use": 'container "c" already exists', "token": "the token does not match"}[why]
    assert p.returncode == 1
    assert p.stderr == (f"snapbox: error: migration of c failed: the receiver refused: {reason}; "
                        f"it goes on running here\n")
    assert r.wait(60) == 1
    _assert_source_runs_on(snapbox, out)


def test_a_receiver_that_dies_midway_leaves_the_source_running(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c", "counter", out)
    wait_for(lambda: len(counts(out)) >= 2, what="counts")
    # Answers "ready" as a receiver would, then goes away in the middle of round 1.
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import sys, cbor2, struct\n"
        "sys.stdin.buffer.read(8)\n"
        "n = struct.unpack('>I', sys.stdin.buffer.read(4))[0]; sys.stdin.buffer.read(n)\n"
        "blob = cbor2.dumps({'type': 'ready'})\n"
        "sys.stdout.buffer.write(struct.pack('>I', len(blob)) + blob); sys.stdout.flush()\n"
        "sys.stdin.buffer.read(100)\n")
    p = snapbox("migrate", "--to", f"exec:{sys.executable} {fake}", "c", check=False)
    assert p.returncode == 1
    assert p.stderr.startswith("snapbox: error: migration of c failed: ") and p.stderr.endswith(
        "; it goes on running here\n") and len(p.stderr.splitlines()) == 1
    _assert_source_runs_on(snapbox, out)
    assert not [x for x in os.listdir(snapbox.root) if x.startswith(".migrate-")]  # nothing left behind


# A client in the sandbox with one connection to an echo server on the host, which counts
# the connections it accepted: a connection that moved is the same one, not a new one.
CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for n in range(1, 100000):
    s.sendall(b"%d\\n" % n)
    got = b""
    while not got.endswith(b"\\n"):
        data = s.recv(100)
        if not data:
            sys.exit("the server closed the connection")
        got += data
    print("echo=" + got.decode().strip(), flush=True)
    time.sleep(0.05)
"""


class EchoServer:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        in_background(self._serve)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            in_background(self._echo, conn)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)


def echoes(out: Path) -> list[int]:
    return [int(x.split("=")[1]) for x in lines(out) if x.startswith("echo=")]


def start_client(snapbox, tmp_path: Path, out: Path, port: int) -> None:
    (tmp_path / "client.py").write_text(CLIENT)
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("do", "--id", "c", "--detach", "--", sys.executable, "client.py", str(port)),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60)
    wait_for(lambda: len(echoes(out)) >= 3, what="echoes")


def test_a_connection_to_the_host_moves_with_the_sandbox(snapbox, receiver, tmp_path):
    server = EchoServer()
    out = tmp_path / "out.txt"
    start_client(snapbox, tmp_path, out, server.port)
    port = free_port()
    said = tmp_path / "receiver.txt"  # a file: the restored sandbox keeps the receiver's stderr
    with open(out, "a") as f, open(said, "w") as err:
        r = subprocess.Popen(receiver.cmd("restore", "--listen", f"127.0.0.1:{port}", "--detach", "c"), stdout=f,
                             stderr=err, stdin=subprocess.DEVNULL)
    wait_for(lambda: _listening(port), timeout=30, what="the receiver to listen")
    p = snapbox("migrate", "--to", f"tcp://127.0.0.1:{port}", "c")
    assert ": handed over with TCP_REPAIR" in p.stderr
    assert r.wait(60) == 0
    assert ": restored with TCP_REPAIR" in said.read_text()
    n = len(echoes(out))
    wait_for(lambda: len(echoes(out)) >= n + 5, what="echoes at the receiver")
    got = echoes(out)
    assert got == list(range(1, len(got) + 1))  # not one lost or repeated
    assert server.accepted == 1  # the same connection


def test_a_connection_handed_over_comes_back_when_the_receiver_fails(snapbox, tmp_path):
    # A receiver that takes every round and then cannot start the program (as when its
    # disk is full): the source has let go of the connection by then, and takes it back.
    server = EchoServer()
    out = tmp_path / "out.txt"
    start_client(snapbox, tmp_path, out, server.port)
    failing = tmp_path / "failing.py"
    failing.write_text(
        "import sys\n"
        "from snapbox.runtime.migrate import Channel, receive\n"
        "from snapbox.state import SnapboxError\n"
        "def start(image, memory):\n"
        "    raise SnapboxError('no room for it here')\n"
        f"receive(Channel(sys.stdin.buffer, sys.stdout.buffer, 'the source'), {str(tmp_path / 'r')!r}, 'c', '',\n"
        "        start, lambda: None)\n")
    p = snapbox("migrate", "--to", f"exec:{sys.executable} {failing} 2>/dev/null", "c", check=False)
    assert p.returncode == 1
    assert p.stderr == ("snapbox: error: migration of c failed: the receiver refused: no room for it here; "
                        "it goes on running here\n")
    n = len(echoes(out))
    wait_for(lambda: len(echoes(out)) >= n + 5, what="echoes at the source")
    got = echoes(out)
    assert got == list(range(1, len(got) + 1))
    assert server.accepted == 1
    snapbox("delete", "--force", "c")


@pytest.fixture(scope="session")
def dirty(tmp_path_factory) -> Path:
    """bench/src/dirty.c, built: a program that keeps rewriting random pages of its memory
    and checks each page it rewrites (it prints CORRUPT on a wrong one)."""
    binary = tmp_path_factory.mktemp("dirty") / "dirty"
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(binary), str(REPO / "bench" / "src" / "dirty.c")],
                   check=True)
    return binary


@pytest.mark.parametrize("how", ["tcp", "exec"])
def test_64_mb_rewritten_all_the_time_moves_with_every_page_right(snapbox, receiver, tmp_path, dirty, how):
    out = tmp_path / "out.txt"
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("do", "--id", "d", "--detach", "--", str(dirty), "64", "100"), stdout=f,
                       stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60)
    wait_for(lambda: len([x for x in lines(out) if x.startswith("gap ")]) >= 2, timeout=60, what="the program")
    if how == "tcp":
        port = free_port()
        r = listen(receiver, "d", port, out)
        dest = f"tcp://127.0.0.1:{port}"
    else:
        dest = "exec:" + " ".join(receiver.cmd("restore", "--image-path", "-", "d")) + f" 2>>{out}"
    summary = json.loads(snapbox("migrate", "--json", "--to", dest, "d").stdout)
    if how == "tcp":
        assert r.wait(60) == 0
    assert summary["rounds"][0]["bytes"] > 48 << 20  # round 1: all of it
    assert len(summary["rounds"]) >= 3  # the program wrote on while the rounds ran
    n = len(lines(out))
    wait_for(lambda: len([x for x in lines(out)[n:] if x.startswith("gap ")]) >= 2, timeout=60,
             what="the program at the receiver")
    assert "CORRUPT" not in out.read_text()
    receiver("delete", "--force", "d")


def test_a_receiver_that_is_not_there_leaves_the_source_running_and_nothing_behind(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c", "counter", out)
    wait_for(lambda: len(counts(out)) >= 2, what="counts")
    port = free_port()  # nobody listens there
    p = snapbox("migrate", "--to", f"tcp://127.0.0.1:{port}", "c", check=False)
    assert p.returncode == 1
    assert p.stderr == (f"snapbox: error: migration of c failed: cannot connect to tcp://127.0.0.1:{port} "
                        "(Connection refused); it goes on running here\n")
    _assert_source_runs_on(snapbox, out)
    assert not [x for x in os.listdir(snapbox.root) if x.startswith(".migrate-")]
