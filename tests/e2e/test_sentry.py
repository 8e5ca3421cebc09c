"""Real static programs in a real sandbox, compared with the same programs run natively."""

from __future__ import annotations

import difflib
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, lines, wait_for

SCRIPTS = REPO / "tests" / "e2e" / "scripts"


def same_output(got: str, want: str) -> bool:
    """Equal, or an assertion that shows the difference line by line."""
    if got != want:
        diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "native", "snapbox", lineterm=""))
        raise AssertionError(f"output differs from the native run:\n{diff}")
    return True


def busybox_bundle(images: Path, tmp_path: Path, script: str, name: str = "bb") -> Path:
    """A bundle on the busybox fixture's rootfs that runs `script` with sh -c, in /work."""
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin", "HOME=/tmp"], "cwd": "/work"},
        "root": {"path": str(images / "busybox" / "rootfs")},
    }))
    return bundle


def native(images: Path, tmp_path: Path, script: str) -> str:
    """The same script under the same busybox, on the host, in an empty directory; stdout
    and stderr go to one file, as they do for the sandbox."""
    work = tmp_path / "native-work"
    work.mkdir()
    busybox = images / "busybox" / "rootfs" / "bin" / "busybox"
    out = tmp_path / "native.txt"
    with open(out, "w") as f:
        subprocess.run([str(busybox), "sh", "-c", script], cwd=work, stdout=f, stderr=f,
                       env={"PATH": str(busybox.parent), "HOME": str(work)}, timeout=60)
    return out.read_text()


def in_sandbox(snapbox, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A snapbox command whose stdout and stderr (and so the sandbox's) go to `out`."""
    with open(out, "a") as f:
        p = subprocess.run(snapbox.cmd(*args), stdout=f, stderr=f, stdin=subprocess.DEVNULL, timeout=60)
    if check:
        assert p.returncode == 0, out.read_text()
    return p


def test_busybox_suite_matches_native(snapbox, images, tmp_path):
    script = (SCRIPTS / "suite.sh").read_text()
    bundle = busybox_bundle(images, tmp_path, script)
    out = tmp_path / "out.txt"
    in_sandbox(snapbox, out, "run", "--bundle", str(bundle), "bb")
    assert same_output(out.read_text(), native(images, tmp_path, script))


def test_busybox_suite_with_checkpoints_matches_native(snapbox, images, tmp_path):
    """Checkpoint at random moments, each time restoring into a fresh sandbox process, every
    other time lazily (a checkpoint may come before a lazy restore has loaded everything)."""
    script = (SCRIPTS / "suite.sh").read_text()
    bundle = busybox_bundle(images, tmp_path, script)
    out = tmp_path / "out.txt"
    rng = random.Random(1234)
    in_sandbox(snapbox, out, "run", "--bundle", str(bundle), "--detach", "s0")
    image = tmp_path / "s.img"
    cid, restores = "s0", 0
    while restores < 6:
        time.sleep(rng.uniform(0.05, 0.3))
        p = snapbox("checkpoint", "--image-path", str(image), cid, check=False)
        if p.returncode != 0:
            assert json.loads(snapbox("state", cid).stdout)["status"] == "stopped", p.stderr
            break  # the script ended first
        snapbox("delete", cid)
        restores += 1
        cid = f"s{restores}"
        in_sandbox(snapbox, out, "restore", "--bundle", str(bundle), "--image-path", str(image),
                   *(["--lazy"] if restores % 2 else []), "--detach", cid)
    wait_for(lambda: json.loads(snapbox("state", cid).stdout)["status"] == "stopped", timeout=30,
             what="the script to finish")
    assert restores >= 2
    assert same_output(out.read_text(), native(images, tmp_path, script))


@pytest.mark.parametrize("bundle", ["mapping", "mapping-glibc"])
def test_memory_mappings_match_native(snapbox, images, tmp_path, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    got = snapbox("run", "--bundle", str(images / bundle), "map").stdout
    assert same_output(got, want)
    assert "after fork: shared=42 private=1 map=kid!" in got


@pytest.mark.parametrize("bundle", ["events", "events-glibc"])
def test_eventfd_timerfd_and_epoll_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    assert want == "eventfd=5 timer>=3:1 pipe=2\n"
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ev").stdout, want)


@pytest.mark.parametrize("bundle", ["jobs", "jobs-glibc"])
def test_job_control_stop_and_continue_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    assert "stopped=1 sig=19" in want and "continued=1" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "jobs").stdout, want)


@pytest.mark.parametrize("bundle", ["locks", "locks-glibc"])
def test_file_locks_match_native(snapbox, images, tmp_path, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    assert "child waits 0" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "lk").stdout, want)


@pytest.mark.parametrize("bundle", ["sockets", "sockets-glibc"])
def test_unix_sockets_match_native(snapbox, images, tmp_path, bundle):
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    assert "recv 2: second fd=yes" in want and "pipe: through the pipe" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "so").stdout, want)


@pytest.mark.parametrize("bundle", ["signals", "signals-glibc"])
def test_signals_match_native(snapbox, images, bundle):
    binary = images / bundle / "rootfs" / f"/{bundle}".lstrip("/")
    want = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30).stdout
    got = snapbox("run", "--bundle", str(images / bundle), "sig").stdout

    def normal(text: str) -> str:
        return re.sub(r"pid=\d+", "pid=N", text)

    assert normal(got) == normal(want)
    assert "segv at 0x1234" in got and "read after restart n=1 c=x" in got


def test_no_way_out_of_the_rootfs(snapbox, images, tmp_path):
    secret = "host-secret-" + str(random.random())
    (tmp_path / "secret.txt").write_text(secret)
    rootfs = images / "busybox" / "rootfs"
    up = "../" * (len(rootfs.parts) + 2)
    script = f"""
    cat {up}{tmp_path}/secret.txt
    cat /../../../..{tmp_path}/secret.txt
    ln -s / /tmp/root; cat /tmp/root/..{tmp_path}/secret.txt
    ln -s {tmp_path} /tmp/hostdir; cat /tmp/hostdir/secret.txt
    mkdir -p /tmp/a; ln -s ../../.. /tmp/a/up; cat /tmp/a/up/..{tmp_path}/secret.txt
    cat /proc/self/root{tmp_path}/secret.txt
    cd /; cd ..; cd ..; cat .{tmp_path}/secret.txt
    echo tried
    """
    bundle = busybox_bundle(images, tmp_path, script)
    p = snapbox("run", "--bundle", str(bundle), "esc", check=False)
    assert "tried" in p.stdout
    assert secret not in p.stdout + p.stderr
    assert p.stderr.count("No such file or directory") == 7


def test_dev_null_zero_and_random(snapbox, images, tmp_path):
    script = """
    echo gone > /dev/null && echo null-ok
    head -c 5 /dev/zero | od -An -tx1
    head -c 16 /dev/urandom | wc -c
    echo x > /dev/full || echo full-refused
    ls -l /dev/null | cut -c1-10
    """
    bundle = busybox_bundle(images, tmp_path, script)
    p = snapbox("run", "--bundle", str(bundle), "dev", check=False)
    assert p.stdout.split("\n")[:5] == ["null-ok", " 00 00 00 00 00", "16", "full-refused", "crw-rw-rw-"]
    assert "No space left on device" in p.stderr


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
    binary = images / bundle / "rootfs" / bundle
    want = subprocess.run([str(binary), "300"], capture_output=True, text=True, timeout=60).stdout
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


def test_proc_is_made_from_the_sandbox(snapbox, images, tmp_path):
    script = """
    sleep 5 &
    i=0; until grep -q sleep /proc/2/cmdline || [ $i -ge 1000 ]; do i=$((i+1)); done  # until it has exec'd
    echo "self=$(readlink /proc/self) exe=$(readlink /proc/self/exe)"
    ps -o pid,args | grep -c '^ *2 sleep 5$'
    grep -E '^(Name|PPid|Threads):' /proc/self/status
    cut -d' ' -f1-4 /proc/$$/stat
    tr '\\0' ' ' < /proc/2/cmdline
    echo
    readlink /proc/$$/fd/1
    grep -c stack /proc/self/maps
    echo x > /proc/new || echo no-create
    kill %1
    """
    bundle = busybox_bundle(images, tmp_path, script)
    p = snapbox("run", "--bundle", str(bundle), "proc", check=False)
    out = p.stdout.splitlines()
    assert re.fullmatch(r"self=\d+ exe=/bin/busybox", out[0]), out
    assert out[1:] == ["1", "Name:\tgrep", "PPid:\t1", "Threads:\t1", "1 (sh) S 0", "sleep 5 ",
                       "host:[stdout]", "1", "no-create"]


def test_tmpfs_and_read_only_bind_mounts(snapbox, images, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("host data\n")
    bundle = tmp_path / "mounts"
    bundle.mkdir()
    script = ("cat /data/file.txt; echo x > /data/new || echo ro-refused; echo t > /scratch/t && cat /scratch/t;"
              " ls -ld /scratch | cut -c1-10; ls -d /dev/shm /dev/null")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": str(images / "busybox" / "rootfs")},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
        ],
    }))
    p = snapbox("run", "--bundle", str(bundle), "mounts", check=False)
    assert p.stdout.splitlines() == ["host data", "ro-refused", "t", "drwxrwxrwt", "/dev/null", "/dev/shm"]
    assert "snapbox: warning: mount of type 'sysfs' on /sys is not supported and is ignored" in p.stderr
    assert "Read-only file system" in p.stderr
    assert not (data / "new").exists()


def test_read_write_bind_mount_changes_the_host(snapbox, images, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "existing.txt").write_text("orig\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    script = ("cd /vol && echo new > made.txt && echo more >> existing.txt && mkdir sub && "
              "mv made.txt sub/moved.txt && ln -s existing.txt link && chmod 600 existing.txt && "
              f"ln -s {outside} escape && echo x > escape; cat escape; rm -f gone; ls | sort | tr '\\n' ' '")
    bundle = tmp_path / "rw"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": str(images / "busybox" / "rootfs")},
        "mounts": [{"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind", "rw"]}],
    }))
    p = snapbox("run", "--bundle", str(bundle), "rw", check=False)
    assert p.stdout.endswith("escape existing.txt link sub ")
    assert (vol / "existing.txt").read_text() == "orig\nmore\n"
    assert (vol / "existing.txt").stat().st_mode & 0o777 == 0o600
    assert (vol / "sub" / "moved.txt").read_text() == "new\n"
    assert os.readlink(vol / "link") == "existing.txt"
    # A symlink the sandbox makes is followed in sandbox terms: the host file stays as it was.
    assert outside.read_text() == "untouched\n"
