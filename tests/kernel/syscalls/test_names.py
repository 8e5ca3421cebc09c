"""Names and mounts: paths resolved in sandbox terms, tmpfs and bind mounts, /proc, chroot."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess

import pytest

from tests.conftest import busybox_bundle, held_through_a_restore, native_fixture, same_output


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


@pytest.mark.parametrize("bundle", ["chroot", "chroot-glibc"])
def test_chroot_and_the_working_directory_match_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "getcwd outside the root: (unreachable)/tmp" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "chroot").stdout, want)


@pytest.mark.parametrize("bundle", ["dirents", "dirents-glibc"])
def test_directory_entries_agree_with_stat_as_natively(snapbox, images, bundle):
    want = native_fixture(images, bundle, str(images / bundle / "rootfs"))
    assert f"{bundle}: type 8, lstat's type agrees, inode agrees" in want
    assert "getdents64 of an O_PATH descriptor: -1 EBADF" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "dirents").stdout, want)


def test_names_listed_before_a_checkpoint_keep_their_inode_numbers(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "dirents", "done", lazy=False)
    assert "tmp: type 4, lstat's type agrees, inode agrees" in got
    assert not [line for line in got if "differs" in line or "failed" in line]


def test_dev_stdin_and_stdout_reopen_the_streams_the_sandbox_was_given(snapbox, images, tmp_path):
    """/dev/stdin is /proc/self/fd/0, as runc makes it: opening it opens the host stream
    anew (a file, a pipe), with no more access than the sandbox has to it."""
    given = tmp_path / "given.txt"
    given.write_text("read through /dev/stdin\n")
    script = ("cat /dev/stdin; echo 'written through /dev/stdout' > /dev/stdout;"
              " echo more >> /dev/stdin || echo 'write to /dev/stdin refused'")
    bundle = busybox_bundle(images, tmp_path, script)
    with open(given) as stdin:
        p = subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "devstd"), stdin=stdin,
                           capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines() == ["read through /dev/stdin", "written through /dev/stdout",
                                     "write to /dev/stdin refused"], p.stderr
    assert "Permission denied" in p.stderr
    assert given.read_text() == "read through /dev/stdin\n"
