"""Processes and threads: many processes blocked at a checkpoint, pthreads restored at random
moments, pidfds."""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.conftest import (
    busybox_bundle, held_through_a_restore, in_sandbox, lines, native_fixture, same_output, wait_for,
)


def test_a_sandbox_with_many_processes_checkpoints_while_they_block(snapbox, images, tmp_path):
    """Parked in wait4, in a pipe read, in nanosleep, in a pipe write: all carry on, restored
    lazily."""
    script = "(sleep 0.6; echo from-sleeper) | (cat; echo reader-done) & yes | head -c 200000 | wc -c; wait; echo all-done"
    bundle = busybox_bundle(images, tmp_path, script)
    out = tmp_path / "out.txt"
    in_sandbox(snapbox, out, "run", "--bundle", str(bundle), "--detach", "m0")
    image = tmp_path / "m.img"
    snapbox("checkpoint", "--image-path", str(image), "m0")
    info = json.loads(snapbox("inspect", "--json", str(image)).stdout)
    assert len(info["processes"]) >= 3
    snapbox("delete", "m0")
    in_sandbox(snapbox, out, "restore", "--bundle", str(bundle), "--image-path", str(image), "--lazy",
               "--detach", "m1")
    wait_for(lambda: "all-done" in lines(out), timeout=30, what="the pipeline to finish")
    assert sorted(lines(out)) == sorted(["from-sleeper", "reader-done", "200000", "all-done"])


@pytest.mark.parametrize("bundle", ["threads", "threads-glibc"])
def test_pthreads_under_checkpoint_and_restore_at_random_moments(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, "300", timeout=60)
    out = tmp_path / "out.txt"
    in_sandbox(snapbox, out, "run", "--bundle", str(images / bundle), "--detach", "t0")
    rng = random.Random(99)
    image = tmp_path / "t.img"
    cid, restores = "t0", 0
    while restores < 5:
        time.sleep(rng.uniform(0.02, 0.2))
        if snapbox("checkpoint", "--image-path", str(image), cid, check=False).returncode != 0:
            break  # it finished first
        snapbox("delete", cid)
        restores += 1
        cid = f"t{restores}"
        in_sandbox(snapbox, out, "restore", "--bundle", str(images / bundle), "--image-path", str(image),
                   *(["--lazy"] if restores % 2 else []), "--detach", cid)
    wait_for(lambda: json.loads(snapbox("state", cid).stdout)["status"] == "stopped", timeout=60,
             what="the threads to finish")
    assert restores >= 2
    assert out.read_text() == want


@pytest.mark.parametrize("bundle", ["threads", "threads-glibc"])
def test_execve_from_a_thread_that_is_not_the_leader(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, "exec")
    assert want == "after exec: thread id is the process id 1\n"
    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    config = json.loads((images / bundle / "config.json").read_text())
    config["process"]["args"] = [f"/{bundle}", "exec"]
    config["root"]["path"] = str(images / bundle / "rootfs")
    (bundle_dir / "config.json").write_text(json.dumps(config))
    assert snapbox("run", "--bundle", str(bundle_dir), "x").stdout == want


@pytest.mark.parametrize("bundle", ["pidfd", "pidfd-glibc"])
def test_pidfds_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "waitid P_PIDFD: ok, pid matches 1, status 7" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "pidfd").stdout, want)


def test_a_pidfd_polled_through_a_checkpoint_wakes_at_the_exit(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "pidfd", "done", lazy=False)
    assert "poll after the exit: 1, readable 1" in got
    assert "waitid: status 4" in got


@pytest.mark.parametrize("bundle", ["sharing", "sharing-glibc"])
def test_processes_sharing_memory_files_and_handlers_match_native(snapbox, images, bundle):
    """clone(2) of processes that share the maker's memory, fd table, cwd and handlers;
    exit signals other than SIGCHLD and the waits that see them; CLONE_PARENT; a sharer
    outliving its maker, and one that execs; unshare of what is shared; clone3's checks."""
    want = native_fixture(images, bundle)
    assert "CLONE_VM child: exited 7, word 41, its mapping 'made by the child'" in want
    assert "after its maker: word 101" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "sh").stdout, want)


def test_processes_sharing_memory_go_on_together_after_a_restore(snapbox, images, tmp_path):
    """A maker and a CLONE_VM child, checkpointed while they pass a counter back and forth
    in the memory they share, keep sharing it when restored (one address space, one stub)."""
    got = held_through_a_restore(snapbox, images, tmp_path, "sharing", "done", lazy=False)
    assert got == ["holding", "after: 40 rounds answered, child exited 0", "done"]
