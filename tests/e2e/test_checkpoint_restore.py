"""End to end through the CLI: run, checkpoint, restore and the container lifecycle."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import lines, wait_for


def parse(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}


def counts(out: Path) -> list[dict[str, int]]:
    return [parse(line) for line in lines(out) if line.startswith("count=")]


def pids_of(root: Path) -> list[int]:
    """Host processes that belong to sandboxes under `root` (sandbox processes)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if str(root).encode() in cmd and b"snapbox.runtime.boot" in cmd:
                found.append(int(pid))
    return found


@pytest.mark.parametrize("bundle", ["counter", "counter-glibc"])
def test_counter_continues_after_checkpoint_and_restore(snapbox, tmp_path, bundle):
    out = tmp_path / "out.txt"
    image = tmp_path / "c1.img"
    snapbox.run_detached("c1", bundle, out)
    wait_for(lambda: len(counts(out)) >= 5, what="five counts")
    snapbox("checkpoint", "--image-path", str(image), "c1")
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "stopped"
    before = counts(out)
    time.sleep(1.5)  # wall time passes while the image sits on disk
    assert counts(out) == before, "the program kept running after checkpoint"
    snapbox("delete", "c1")
    snapbox.run_detached("c1", bundle, out, restore=image)
    wait_for(lambda: len(counts(out)) >= len(before) + 3, what="counts after restore")
    snapbox("kill", "c1", "KILL")
    after = counts(out)[len(before):]
    assert after[0]["count"] == before[-1]["count"] + 1
    for c in after:
        assert c["file"] == c["count"], "the file inside the sandbox lost its value"
        assert c["offset"] == 9 * c["count"], "the open file lost its offset"
    # The monotonic clock did not jump over the 1.5 s the image spent on disk.
    assert after[0]["gap_ms"] < 600


@pytest.mark.parametrize("bundle", ["memhog", "memhog-glibc"])
def test_64mb_of_memory_is_intact_after_restore(snapbox, tmp_path, bundle):
    out = tmp_path / "out.txt"
    image = tmp_path / "m.img"
    snapbox.run_detached("m1", bundle, out)
    wait_for(lambda: any(line.startswith("tick 2 ") for line in lines(out)), timeout=30, what="tick 2")
    snapbox("checkpoint", "--image-path", str(image), "m1")
    n = len(lines(out))
    snapbox("delete", "m1")
    snapbox.run_detached("m1", bundle, out, restore=image)
    wait_for(lambda: len(lines(out)) >= n + 2, timeout=30, what="ticks after restore")
    snapbox("kill", "m1", "KILL")
    restored = lines(out)[n:]
    assert all(line.endswith("ok pages=16384") for line in restored), restored
    assert image.stat().st_size > 60 << 20  # the pattern does not compress: it was all saved


def test_leave_running_and_restore_into_a_second_sandbox(snapbox, tmp_path):
    out1, out2 = tmp_path / "one.txt", tmp_path / "two.txt"
    image = tmp_path / "c.img"
    snapbox.run_detached("first", "counter", out1)
    wait_for(lambda: len(counts(out1)) >= 3, what="first counts")
    snapbox("checkpoint", "--leave-running", "--image-path", str(image), "first")
    at_checkpoint = len(counts(out1))
    snapbox.run_detached("second", "counter", out2, restore=image)
    wait_for(lambda: len(counts(out2)) >= 3 and len(counts(out1)) >= at_checkpoint + 5,
             what="both sandboxes counting")
    states = {s["id"]: s["status"] for s in json.loads(snapbox("list", "--format", "json").stdout)}
    assert states == {"first": "running", "second": "running"}
    second = counts(out2)
    # The clone starts right after the count the image holds (within the one tick that
    # may have passed while the checkpoint was being taken).
    assert at_checkpoint <= second[0]["count"] <= at_checkpoint + 1
    assert [c["count"] for c in second] == list(range(second[0]["count"], second[0]["count"] + len(second)))


def test_image_from_a_richer_cpu_is_refused_before_anything_starts(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    image = tmp_path / "c.img"
    snapbox.run_detached("c1", "counter", out)
    wait_for(lambda: counts(out), what="a count")
    assert len(pids_of(snapbox.root)) == 1  # the one sandbox process is seen
    snapbox("checkpoint", "--image-path", str(image), "c1")
    snapbox("delete", "c1")
    env = dict(os.environ, SNAPBOX_HOST_CPU_FEATURES="fpu,cx8,cmov,mmx,fxsr,sse,lm")
    p = snapbox.run_detached("c2", "counter", out, restore=image, env=env, check=False)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("snapbox: error: image needs CPU features this host lacks: ")
    assert "sse2" in p.stderr
    assert json.loads(snapbox("list", "--format", "json").stdout) == []
    assert pids_of(snapbox.root) == []


@pytest.mark.parametrize("damage", ["flip-kernel", "flip-memory", "truncate-half", "truncate-tail",
                                    "appended", "empty", "garbage"])
def test_corrupt_image_is_refused_with_one_line(snapbox, tmp_path, damage):
    out = tmp_path / "out.txt"
    image = tmp_path / "c.img"
    snapbox.run_detached("c1", "memhog", out)
    wait_for(lambda: lines(out), timeout=30, what="memhog ready")
    snapbox("checkpoint", "--image-path", str(image), "c1")
    snapbox("delete", "c1")
    data = bytearray(image.read_bytes())
    if damage == "flip-kernel":
        pos = data.index(b"kernel") + 64
        data[pos] ^= 0x01
    elif damage == "flip-memory":
        data[len(data) // 2] ^= 0x80
    elif damage == "truncate-half":
        data = data[: len(data) // 2]
    elif damage == "truncate-tail":
        data = data[:-3]
    elif damage == "appended":
        data += b"\0" * 512  # an image ends at its trailer
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(os.urandom(4096))
    image.write_bytes(bytes(data))
    p = snapbox.run_detached("c2", "memhog", out, restore=image, check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("snapbox: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "image" in p.stderr and "Traceback" not in p.stderr
    assert json.loads(snapbox("list", "--format", "json").stdout) == []
    assert pids_of(snapbox.root) == []


def test_killing_the_sandbox_mid_checkpoint_leaves_no_image(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    image = tmp_path / "big.img"
    snapbox.run_detached("c1", "memhog", out)
    wait_for(lambda: lines(out), timeout=30, what="memhog ready")
    pid = snapbox.sandbox_pid("c1")
    ckpt = subprocess.Popen(snapbox.cmd("checkpoint", "--image-path", str(image), "c1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def writing_image() -> bool:
        # The image is written to an unnamed file in the target directory first.
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path) + "/#"):
                return True
        return False

    wait_for(writing_image, timeout=20, interval=0.001, what="the checkpoint to start writing")
    os.kill(pid, signal.SIGKILL)
    _, err = ckpt.communicate(timeout=30)
    assert ckpt.returncode != 0
    assert err.startswith("snapbox: error: ") and err.count("\n") == 1
    assert not image.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.img")] == []
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "stopped"


def test_interrupting_a_checkpoint_cancels_it_and_the_container_runs_on(snapbox, tmp_path):
    """^C of `snapbox checkpoint` while the image is being written: the checkpoint is
    undone (exit 130, one line saying so), the program goes on unharmed."""
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "memhog", out)
    wait_for(lambda: lines(out), timeout=30, what="memhog ready")
    r, w = os.pipe()
    ckpt = subprocess.Popen(snapbox.cmd("checkpoint", "--image-path", "-", "c1"), stdout=w,
                            stderr=subprocess.PIPE, text=True)
    os.close(w)
    # Nobody reads the pipe yet: the image stalls in it, the memory half written.
    wait_for(lambda: struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4))[0] > 0,
             timeout=30, what="the image to start")
    ckpt.send_signal(signal.SIGINT)
    while os.read(r, 1 << 16):
        pass
    os.close(r)
    _, err = ckpt.communicate(timeout=30)
    assert (ckpt.returncode, err) == (130, "snapbox: error: checkpoint cancelled: the container runs on, "
                                           "no image was written\n")
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "running"
    ticks = len(lines(out))
    wait_for(lambda: len(lines(out)) > ticks + 1, timeout=30, what="memhog to go on")
    assert not any("CORRUPT" in line for line in lines(out))


def test_pause_resume_and_status_errors(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out)
    wait_for(lambda: counts(out), what="a count")
    snapbox("pause", "c1")
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "paused"
    n = len(counts(out))
    time.sleep(0.5)
    assert len(counts(out)) == n, "a paused sandbox kept running"
    p = snapbox("pause", "c1", check=False)
    assert p.returncode == 1 and p.stderr == 'snapbox: error: cannot pause container "c1" in state paused\n'
    snapbox("resume", "c1")
    wait_for(lambda: len(counts(out)) > n + 2, what="counting again")
    p = snapbox("delete", "c1", check=False)
    assert p.stderr == 'snapbox: error: cannot delete container "c1" in state running (use --force)\n'
    snapbox("kill", "c1")  # SIGTERM: the counter's handler ends it
    wait_for(lambda: json.loads(snapbox("state", "c1").stdout)["status"] == "stopped", what="stopped")
    p = snapbox("resume", "c1", check=False)
    assert p.stderr == 'snapbox: error: cannot resume container "c1" in state stopped\n'
    snapbox("delete", "c1")
    assert json.loads(snapbox("list", "--format", "json").stdout) == []
    p = snapbox("state", "c1", check=False)
    assert p.stderr == 'snapbox: error: container "c1" does not exist\n'


def test_attached_run_returns_the_exit_code_and_forwards_signals(snapbox, tmp_path):
    p = snapbox("run", "--bundle", str(snapbox.images / "hello"), "h1", check=False)
    assert (p.returncode, p.stdout) == (0, "hello, world\n")
    assert json.loads(snapbox("list", "--format", "json").stdout) == []  # run deletes when done
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        run = subprocess.Popen(snapbox.cmd("run", "--bundle", str(snapbox.images / "counter"), "c2"),
                               stdout=f, stderr=subprocess.PIPE)
        wait_for(lambda: counts(out), what="a count")
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=20) == 128 + signal.SIGINT


def test_kill_minus_9_of_the_sandbox_process_is_seen_as_stopped(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("c1", "counter", out)
    wait_for(lambda: counts(out), what="a count")
    pid = snapbox.sandbox_pid("c1")
    stubs = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    children = open(f"/proc/{pid}/task/{stubs[0]}/children").read().split()
    assert children, "the sandbox process has a stub child"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: json.loads(snapbox("state", "c1").stdout)["status"] == "stopped", what="stopped")
    wait_for(lambda: not any(os.path.exists(f"/proc/{c}/stat") and
                             open(f"/proc/{c}/stat").read().split()[2] != "Z" for c in children),
             what="stubs to die with their sentry")
    snapbox("delete", "c1")


def test_bad_input_gets_one_line_errors(snapbox, tmp_path):
    p = snapbox("run", "--bundle", str(tmp_path), "x", check=False)
    assert p.returncode == 1 and p.stderr == f"snapbox: error: bundle {tmp_path} has no config.json\n"
    p = snapbox("frobnicate", check=False)
    assert p.returncode == 2 and p.stderr.startswith("snapbox: error: ") and p.stderr.count("\n") == 1
    p = snapbox("restore", "--image-path", str(tmp_path / "none.img"), "x", check=False)
    assert p.stderr == f"snapbox: error: image {tmp_path / 'none.img'} does not exist\n"
    p = snapbox("kill", "nope", "SIGFOO", check=False)
    assert p.returncode == 1 and p.stderr.startswith("snapbox: error: ")
