"""The native front end (snapbox/front.c): commands handed to a warm pool, or to the Python CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Snapbox, clean_up, lines, wait_for


@pytest.fixture(scope="session")
def front(tmp_path_factory) -> Path:
    """front.c built as scripts/setup builds it."""
    binary = tmp_path_factory.mktemp("front") / "snapbox"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", f'-DSNAPBOX_PYTHON="{sys.executable}"', "-o", str(binary),
                    str(REPO / "snapbox" / "front.c")], check=True)
    return binary


class FrontSnapbox(Snapbox):
    def __init__(self, root: Path, images: Path, front: Path) -> None:
        super().__init__(root, images)
        self.front = front

    def cmd(self, *args: str) -> list[str]:
        return [str(self.front), "--root", str(self.root), *args]


@pytest.fixture
def sb(tmp_path, images, front):
    s = FrontSnapbox(tmp_path / "root", images, front)
    yield s
    clean_up(s)


def exe_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


def start_counter(sb: FrontSnapbox, cid: str, out: Path, env: dict | None = None) -> subprocess.Popen:
    """`run` of the counter, attached, its output in `out`; returns once it counts."""
    f = open(out, "w")
    p = subprocess.Popen(sb.cmd("run", "--bundle", str(sb.images / "counter"), cid), stdout=f,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    f.close()
    wait_for(lambda: len(lines(out)) >= 2, what="the counter's first counts")
    return p


def test_without_a_pool_the_python_command_line_runs(sb, tmp_path):
    no_pool = dict(os.environ, SNAPBOX_WARM="0")  # nor starts one
    assert sb("run", "--bundle", str(sb.images / "hello"), "h", env=no_pool).stdout == "hello, world\n"
    assert sb("--version").stdout.startswith("snapbox, version ")
    p = sb("state", "nope", check=False)
    assert (p.returncode, p.stderr) == (1, 'snapbox: error: container "nope" does not exist\n')
    assert not (sb.root / ".warm.pid").exists()

    p = start_counter(sb, "c", tmp_path / "out.txt", env=no_pool)
    assert exe_of(p.pid) == os.path.realpath(sys.executable)  # the front end became Python
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 128 + signal.SIGINT


def test_with_a_pool_commands_run_in_it(sb, tmp_path):
    assert sb("warm").stdout.startswith(f"warm pool of {sb.root} running")
    assert sb("run", "--bundle", str(sb.images / "hello"), "h").stdout == "hello, world\n"

    # Exit codes, one-line errors, stdin, the working directory and the environment.
    assert sb("do", "/bin/sh", "-c", "exit 7", check=False).returncode == 7
    p = sb("state", "nope", check=False)
    assert (p.returncode, p.stderr) == (1, 'snapbox: error: container "nope" does not exist\n')
    p = sb("--root", str(sb.root), "frobnicate", check=False)
    assert p.returncode == 2 and p.stderr.startswith("snapbox: error: ") and "frobnicate" in p.stderr
    p = subprocess.run(sb.cmd("do", "/bin/sh", "-c", "read x; echo $x $PWD $FRONT_TEST"), input="hi\n",
                       capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, FRONT_TEST="env"),
                       timeout=60)
    assert p.stdout == f"hi {tmp_path} env\n"
    # Arguments and the environment are bytes, not necessarily UTF-8.
    odd = os.fsdecode(b"caf\xe9")
    p = subprocess.run(sb.cmd("do", "/bin/sh", "-c", 'echo "$1 $ODD"', "sh", odd), capture_output=True,
                       env=dict(os.environ, ODD=odd), timeout=60)
    assert p.stdout == b"caf\xe9 caf\xe9\n"

    # A run in progress is this binary waiting on the pool's worker, which gets its signals.
    out = tmp_path / "out.txt"
    p = start_counter(sb, "c", out)
    assert exe_of(p.pid) == str(sb.front)
    p.send_signal(signal.SIGINT)
    assert p.wait(30) == 128 + signal.SIGINT
    assert json.loads(sb("list", "--format", "json").stdout) == []  # run deleted it, as attached runs do


def test_checkpoint_to_stdout_and_restore_from_stdin_through_the_pool(sb, tmp_path):
    sb("warm")
    out = tmp_path / "out.txt"
    sb.run_detached("c1", "counter", out)
    wait_for(lambda: len(lines(out)) >= 3, what="counts")
    image = tmp_path / "c.img"
    with open(image, "wb") as f:
        subprocess.run(sb.cmd("checkpoint", "--image-path", "-", "c1"), stdout=f, check=True, timeout=60)
    sb("delete", "c1")
    n = len(lines(out))
    with open(image, "rb") as img, open(out, "a") as f:
        subprocess.run(sb.cmd("restore", "--bundle", str(sb.images / "counter"), "--image-path", "-", "--detach",
                              "c2"), stdin=img, stdout=f, check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= n + 2, what="counts after the restore")
    sb("delete", "--force", "c2")
    counts = [int(line.split()[0].split("=")[1]) for line in lines(out)]
    assert counts == list(range(1, len(counts) + 1))


def test_a_pool_that_died_leaves_its_socket_and_the_front_end_falls_back(sb):
    sb("warm")
    pid = int((sb.root / ".warm.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or b") Z" in open(f"/proc/{pid}/stat", "rb").read(),
             what="the pool to die")
    assert (sb.root / ".warm.sock").exists()
    assert sb("run", "--bundle", str(sb.images / "hello"), "h").stdout == "hello, world\n"
