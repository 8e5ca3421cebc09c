"""The warm pool: sandbox processes forked from a process that has imported the sandbox."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.conftest import REPO, lines, wait_for


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rindex(b")") + 2 :].split()[1])


@pytest.fixture
def pool(snapbox):
    out = snapbox("warm").stdout
    pid = int(out.rsplit("pid ", 1)[1].rstrip(")\n"))
    yield pid
    if os.path.exists(snapbox.root / ".warm.pid"):
        snapbox("warm", "--stop")


def test_the_pool_forks_sandboxes_that_run_checkpoint_and_restore(snapbox, pool, tmp_path):
    assert snapbox("run", "--bundle", str(snapbox.images / "hello"), "h").stdout == "hello, world\n"
    assert snapbox("do", "/bin/sh", "-c", "echo $PWD; exit 7", check=False).returncode == 7
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out)
    assert parent_of(snapbox.sandbox_pid("c1")) == pool  # forked by the pool, not started anew
    wait_for(lambda: len(lines(out)) >= 3, what="counts")
    image = tmp_path / "c.img"
    snapbox("checkpoint", "--image-path", str(image), "c1")
    snapbox("delete", "c1")
    snapbox.run_detached("c2", "counter", out, restore=image)
    assert parent_of(snapbox.sandbox_pid("c2")) == pool
    n = len(lines(out))
    wait_for(lambda: len(lines(out)) >= n + 3, what="counts after the restore")
    snapbox("delete", "--force", "c2")
    counts = [int(line.split()[0].split("=")[1]) for line in lines(out)]
    assert counts == list(range(1, len(counts) + 1))

    # The caller's environment reaches the forked sandbox (here: the host CPU it may assume).
    env = dict(os.environ, SNAPBOX_HOST_CPU_FEATURES="fpu,lm")
    p = snapbox.run_detached("c3", "counter", out, restore=image, env=env, check=False)
    assert p.returncode != 0 and "image needs CPU features this host lacks" in p.stderr
    assert json.loads(snapbox("list", "--format", "json").stdout) == []


def test_one_pool_per_root_and_stop(snapbox, pool):
    p = snapbox("warm", check=False)
    assert p.returncode == 1 and p.stderr == f"snapbox: error: a warm pool already runs for {snapbox.root} (pid {pool})\n"
    assert snapbox("warm", "--stop").stdout == f"stopped the warm pool of {snapbox.root} (pid {pool})\n"
    assert not os.path.exists(f"/proc/{pool}/stat") or b") Z" in open(f"/proc/{pool}/stat", "rb").read()
    p = snapbox("warm", "--stop", check=False)
    assert p.stderr == f"snapbox: error: no warm pool runs for {snapbox.root}\n"
    # Without a pool, sandboxes start as before.
    assert snapbox("run", "--bundle", str(snapbox.images / "hello"), "h").stdout == "hello, world\n"


def test_the_first_sandbox_of_a_root_starts_a_pool_that_ends_when_idle(snapbox, tmp_path):
    env = dict(os.environ, SNAPBOX_WARM_IDLE="2")
    assert snapbox("run", "--bundle", str(snapbox.images / "hello"), "h", env=env).stdout == "hello, world\n"
    pid_file = snapbox.root / ".warm.pid"
    wait_for(pid_file.exists, what="the pool to start")
    pool = int(pid_file.read_text())
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out)
    assert parent_of(snapbox.sandbox_pid("c1")) == pool
    wait_for(lambda: len(lines(out)) >= 2, what="counts")
    # A pool with a live sandbox stays, however idle.
    wait_for(lambda: len(lines(out)) >= 30, what="more counts")
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "running" and pid_file.exists()
    snapbox("delete", "--force", "c1")
    wait_for(lambda: not pid_file.exists(), what="the idle pool to end")
    assert not (snapbox.root / ".warm.sock").exists()


def test_a_pool_stays_while_the_sandbox_that_started_it_runs(snapbox, tmp_path):
    """The root's first sandbox is not the pool's child; the pool stays for it all the same
    (a checkpoint of it minutes later is still quick)."""
    env = dict(os.environ, SNAPBOX_WARM_IDLE="1")
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out, env=env)
    pid_file = snapbox.root / ".warm.pid"
    wait_for(pid_file.exists, what="the pool to start")
    assert parent_of(snapbox.sandbox_pid("c1")) != int(pid_file.read_text())
    time.sleep(3.5)  # three idle checks
    assert pid_file.exists()
    snapbox("delete", "--force", "c1", env=env)
    wait_for(lambda: not pid_file.exists(), what="the idle pool to end")


def test_no_pool_with_snapbox_warm_0(snapbox):
    env = dict(os.environ, SNAPBOX_WARM="0")
    assert snapbox("run", "--bundle", str(snapbox.images / "hello"), "h", env=env).stdout == "hello, world\n"
    assert not (snapbox.root / ".warm.log").exists()  # a pool being started would log there


def test_a_pool_whose_socket_is_removed_ends(snapbox, pool):
    os.unlink(snapbox.root / ".warm.sock")
    wait_for(lambda: not os.path.exists(f"/proc/{pool}") or b") Z" in open(f"/proc/{pool}/stat", "rb").read(),
             timeout=15, what="the pool to end")
    assert not (snapbox.root / ".warm.pid").exists()


def test_a_pool_ends_when_snapbox_is_upgraded(snapbox, pool):
    module = REPO / "snapbox" / "__main__.py"
    before = module.stat()
    try:
        os.utime(module, ns=(before.st_atime_ns, time.time_ns() + 10**9))  # as an upgrade would
        wait_for(lambda: not (snapbox.root / ".warm.pid").exists(), timeout=15, what="the stale pool to end")
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))
