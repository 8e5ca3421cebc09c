"""restore --lazy: the program runs before its memory is read, every page comes back all the
same, and a corrupt page ends the sandbox instead of reaching the program."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import lines, wait_for

PAGES = "ok pages=16384"  # memhog's 64 MB, every word checked on every tick


def _memhog_image(snapbox, tmp_path: Path, *extra: str) -> tuple[Path, Path, int]:
    out = tmp_path / "out.txt"
    image = tmp_path / "m.img"
    snapbox.run_detached("m0", "memhog", out)
    wait_for(lambda: any(line.startswith("tick 1 ") for line in lines(out)), timeout=30, what="tick 1")
    snapbox("checkpoint", "--image-path", str(image), *extra, "m0")
    snapbox("delete", "m0")
    return image, out, len(lines(out))


def _asleep_memhog_image(snapbox, tmp_path: Path) -> tuple[Path, Path, int]:
    """An image of memhog taken between two ticks (in its nanosleep), not in the middle of
    one: what it touches from the restore to its next sleep is then all of its 64 MB."""
    out = tmp_path / "out.txt"
    image = tmp_path / "m.img"
    snapbox.run_detached("m0", "memhog", out)
    wait_for(lambda: any(line.startswith("tick 1 ") for line in lines(out)), timeout=30, what="tick 1")
    for _ in range(20):
        snapbox("checkpoint", "--leave-running", "--image-path", str(image), "m0")
        task, = json.loads(snapbox("inspect", "--json", str(image)).stdout)["processes"][0]["tasks"]
        if task["state"].startswith("in nanosleep"):
            break
    else:
        raise AssertionError(f"memhog was never caught asleep: {task['state']}")
    snapbox("delete", "--force", "m0")
    return image, out, len(lines(out))


def _ticks_after(out: Path, n: int, count: int) -> list[str]:
    wait_for(lambda: len(lines(out)) >= n + count, timeout=30, what=f"{count} ticks after restore")
    return lines(out)[n:]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_every_page_comes_back(snapbox, tmp_path, compression):
    image, out, n = _memhog_image(snapbox, tmp_path, "--compression", compression)
    snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True)
    after = _ticks_after(out, n, 3)
    snapbox("kill", "m1", "KILL")
    assert all(line.endswith(PAGES) for line in after), after


def test_a_checkpoint_right_after_a_lazy_restore_holds_all_memory(snapbox, tmp_path):
    image, out, n = _memhog_image(snapbox, tmp_path)
    snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True)
    second = tmp_path / "second.img"
    snapbox("checkpoint", "--image-path", str(second), "m1")
    snapbox("delete", "m1")
    info = json.loads(snapbox("inspect", "--json", str(second)).stdout)
    assert info["memory"]["saved"] >= 64 << 20
    n = len(lines(out))
    snapbox.run_detached("m2", "memhog", out, restore=second)
    after = _ticks_after(out, n, 2)
    snapbox("kill", "m2", "KILL")
    assert all(line.endswith(PAGES) for line in after), after


def test_a_working_set_is_recorded_once_then_loaded_first(snapbox, tmp_path):
    """memhog touches all of its 64 MB every tick, then sleeps: its first restore with
    --working-set records those pages once it sleeps; the next loads them before it runs."""
    import cbor2

    image, out, n = _asleep_memhog_image(snapbox, tmp_path)
    ws = tmp_path / "m.ws"
    snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True, extra=("--working-set", str(ws)))
    wait_for(ws.exists, what="the working set")
    recorded = cbor2.loads(ws.read_bytes())
    image_id = json.loads(snapbox("inspect", "--json", str(image)).stdout)["image_id"]
    assert recorded["image_id"] == image_id
    assert 64 << 20 <= sum(length for _, length in recorded["runs"]) <= 80 << 20, recorded["runs"]
    snapbox("kill", "m1", "KILL")
    snapbox("delete", "--force", "m1")
    before = ws.stat().st_mtime_ns
    n = len(lines(out))
    snapbox.run_detached("m2", "memhog", out, restore=image, lazy=True, extra=("--working-set", str(ws)))
    after = _ticks_after(out, n, 2)
    log = (snapbox.root / "m2" / "sandbox.log").read_text()
    snapbox("kill", "m2", "KILL")
    assert all(line.endswith(PAGES) for line in after), after
    assert f"working set {ws}: 64 MB loaded first" in log or f"working set {ws}: 65 MB loaded first" in log, log
    assert ws.stat().st_mtime_ns == before  # recorded once


def test_a_working_set_file_that_is_not_one_is_refused_and_kept(snapbox, tmp_path):
    image, out, _ = _memhog_image(snapbox, tmp_path)
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    p = snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True, extra=("--working-set", str(other)),
                             check=False)
    assert p.returncode != 0 and p.stderr == f"snapbox: error: {other} is not a working set (refusing to write over it)\n"
    assert other.read_text() == "my notes\n"


def test_a_corrupt_page_ends_the_sandbox_before_the_program_sees_it(snapbox, tmp_path):
    image, out, n = _memhog_image(snapbox, tmp_path)
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x80  # inside the memory section: the kernel section is small
    image.write_bytes(bytes(data))
    # A lazy restore checks everything but memory up front: it starts.
    snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True)
    wait_for(lambda: json.loads(snapbox("state", "m1").stdout)["status"] == "stopped", timeout=30,
             what="the sandbox to end")
    log = (snapbox.root / "m1" / "sandbox.log").read_text()
    assert "memory could not be restored: the image restored from is corrupt (checksum mismatch" in log
    assert not any("CORRUPT" in line for line in lines(out)[n:])
    snapbox("delete", "m1")


def test_lazy_restore_from_a_pipe_reads_the_image_whole(snapbox, tmp_path):
    image, out, n = _memhog_image(snapbox, tmp_path)
    with open(image, "rb") as f, open(out, "a") as o:
        subprocess.run(snapbox.cmd("restore", "--bundle", str(snapbox.images / "memhog"), "--image-path", "-",
                                   "--lazy", "--detach", "m1"), stdin=f, stdout=o, check=True, timeout=60)
    after = _ticks_after(out, n, 2)
    snapbox("kill", "m1", "KILL")
    assert all(line.endswith(PAGES) for line in after), after


def test_an_image_opened_for_writing_waits_until_memory_is_in(snapbox, tmp_path):
    """restore --lazy holds a read lease on the image: truncating it while memory is still
    being loaded waits for the load to finish, and the program's memory stays whole."""
    bundle = tmp_path / "slow"
    bundle.mkdir()
    config = json.loads((snapbox.images / "memhog" / "config.json").read_text())
    config["process"]["args"] = ["/memhog", "64", "3000"]  # a check of every page each 3 s
    config["root"]["path"] = str(snapbox.images / "memhog" / "rootfs")
    (bundle / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out.txt"
    image = tmp_path / "m.img"
    with open(out, "a") as o:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "m0"), stdout=o, check=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    wait_for(lambda: any(line.startswith("tick 1 ") for line in lines(out)), timeout=30, what="tick 1")
    snapbox("checkpoint", "--image-path", str(image), "m0")
    snapbox("delete", "m0")
    n = len(lines(out))
    # A busy loop on every CPU starves the idle-priority loading threads: memory stays in the
    # image. (With autogroups, the sandbox's session would get its own share of the CPUs.)
    hogs = []
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    grouping = autogroup.read_text() if autogroup.exists() else None
    try:
        if grouping is not None:
            autogroup.write_text("0")
        for cpu in os.sched_getaffinity(0):
            hogs.append(subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"],
                                         stdout=subprocess.PIPE))
            os.sched_setaffinity(hogs[-1].pid, {cpu})
        for h in hogs:
            h.stdout.readline()  # it is spinning
        with open(out, "a") as o:
            subprocess.run(snapbox.cmd("restore", "--bundle", str(bundle), "--image-path", str(image), "--lazy",
                                       "--detach", "m1"), stdout=o, check=True, timeout=60, stdin=subprocess.DEVNULL)
        with open(image, "r+b") as f:  # waits for the lease to go
            f.truncate(0)
            f.write(b"garbage")
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        if grouping is not None:
            autogroup.write_text(grouping)
    after = _ticks_after(out, n, 1)
    snapbox("kill", "m1", "KILL")
    assert all(line.endswith(PAGES) for line in after), after
    log = (snapbox.root / "m1" / "sandbox.log").read_text()
    assert "the image is being changed: loading the rest of memory now" in log


@pytest.mark.parametrize("damage", ["flip-kernel", "truncate-tail", "truncate-memory"])
def test_a_lazy_restore_still_refuses_a_damaged_image_up_front(snapbox, tmp_path, damage):
    """Only the contents of memory chunks are checked late: the rest of the image, and where
    every chunk lies, are checked before anything starts."""
    image, out, _ = _memhog_image(snapbox, tmp_path)
    data = bytearray(image.read_bytes())
    if damage == "flip-kernel":
        data[data.index(b"kernel") + 64] ^= 0x01
    elif damage == "truncate-tail":
        data = data[:-3]
    else:
        data = data[: len(data) // 2]
    image.write_bytes(bytes(data))
    p = snapbox.run_detached("m1", "memhog", out, restore=image, lazy=True, check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("snapbox: error: image ") and p.stderr.count("\n") == 1, p.stderr
    assert json.loads(snapbox("list", "--format", "json").stdout) == []


def _without_userfaultfd() -> None:
    """In the child, before exec: a seccomp filter that fails userfaultfd(2) with EPERM, as
    container runtimes' default profiles do. The sandbox process and its stubs inherit it."""
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = (SockFilter * 4)(
        SockFilter(0x20, 0, 0, 0),  # BPF_LD|BPF_W|BPF_ABS: the syscall number
        SockFilter(0x15, 0, 1, 323),  # BPF_JMP|BPF_JEQ|BPF_K: userfaultfd?
        SockFilter(0x06, 0, 0, 0x00050000 | errno.EPERM),  # BPF_RET: SECCOMP_RET_ERRNO
        SockFilter(0x06, 0, 0, 0x7FFF0000),  # BPF_RET: SECCOMP_RET_ALLOW
    )
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(SockFprog(4, program)), 0, 0):
        os._exit(99)  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP SECCOMP_MODE_FILTER


def test_without_userfaultfd_a_lazy_restore_loads_everything_first(snapbox, tmp_path):
    image, out, n = _memhog_image(snapbox, tmp_path)
    env = dict(os.environ, SNAPBOX_WARM="0")  # the sandbox process is this command's child
    with open(out, "a") as o:
        subprocess.run(snapbox.cmd("restore", "--bundle", str(snapbox.images / "memhog"), "--image-path", str(image),
                                   "--lazy", "--detach", "m1"), stdout=o, env=env, check=True, timeout=60,
                       stdin=subprocess.DEVNULL, preexec_fn=_without_userfaultfd)
    after = _ticks_after(out, n, 2)
    snapbox("kill", "m1", "KILL")
    assert all(line.endswith(PAGES) for line in after), after
    log = (snapbox.root / "m1" / "sandbox.log").read_text()
    assert "could not make a userfaultfd: Operation not permitted: memory is loaded before the program runs" in log


def test_memory_shared_by_two_processes_comes_back_lazily(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    image = tmp_path / "s.img"
    snapbox.run_detached("s0", "shared", out)
    wait_for(lambda: len(lines(out)) >= 4, timeout=30, what="both processes ticking")
    snapbox("checkpoint", "--image-path", str(image), "s0")
    snapbox("delete", "s0")
    before = max(int(line.split()[-1]) for line in lines(out))
    n = len(lines(out))
    snapbox.run_detached("s1", "shared", out, restore=image, lazy=True)
    after = _ticks_after(out, n, 6)
    snapbox("kill", "s1", "KILL")
    assert all(" bad 0 " in line for line in after), after
    # The child's counter goes on from where it was, and the parent sees it move.
    parent = [int(line.split()[-1]) for line in after if line.startswith("parent")]
    child = [int(line.split()[-1]) for line in after if line.startswith("child")]
    assert child and parent and min(child) >= before and max(parent) > before, after
