"""Attacks from inside a sandbox: each program in attacks/ tries one way to reach the host or
to make the sentry misbehave, and checks that it gets what Linux gives an unprivileged
process. They run natively too (as nobody), which keeps the programs honest."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for

ATTACKS = Path(__file__).resolve().parent / "attacks"
PROGRAMS = ("lowmap", "remapleak", "vsyscall", "int80", "names", "mounts", "initkill")


@pytest.fixture(scope="session")
def attack_rootfs(tmp_path_factory) -> Path:
    """A rootfs holding every attack program, built static with musl."""
    rootfs = tmp_path_factory.mktemp("attacks") / "rootfs"
    for d in ("tmp", "rw", "proc", "dev"):
        (rootfs / d).mkdir(parents=True)
    for name in PROGRAMS:
        subprocess.run(["musl-gcc", "-static", "-O1", "-Wall", "-Werror", "-o", str(rootfs / name),
                        str(ATTACKS / f"{name}.c")], check=True, capture_output=True)
    return rootfs


def bundle(tmp_path: Path, rootfs: Path, *args: str) -> Path:
    """A bundle running `args` on the attack rootfs: a tmpfs at /tmp, a read-write bind of a
    fresh host directory at /rw."""
    b = tmp_path / "bundle"
    rw = tmp_path / "rw"
    b.mkdir()
    rw.mkdir()
    (b / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": list(args), "env": ["PATH=/"], "cwd": "/"},
        "root": {"path": str(rootfs)},
        "mounts": [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                   {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["rbind", "rw"]}],
    }))
    return b


def checks(output: str) -> dict[str, bool]:
    """The program's checks: name -> passed; fails on a line that is neither."""
    out = {}
    for line in output.splitlines():
        m = re.match(r"(ok|not ok) ([\w-]+)", line)
        if m:
            out[m.group(2)] = m.group(1) == "ok"
    return out


def start(snapbox, out: Path, *args: str) -> None:
    """A detached run or restore: the program's stdout and stderr (which it keeps) go to `out`."""
    with open(out, "a") as f:
        p = subprocess.run(snapbox.cmd(*args, "--detach"), stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                           timeout=60)
    assert p.returncode == 0, out.read_text()


def run_attack(snapbox, tmp_path: Path, rootfs: Path, *args: str, flags: tuple[str, ...] = ()) -> str:
    p = snapbox(*flags, "run", "--bundle", str(bundle(tmp_path, rootfs, *args)), "attack", check=False)
    assert "Traceback" not in p.stderr
    return p.stdout


def native(rootfs: Path, tmp_path: Path, *args: str) -> str:
    """The program on the host as nobody, with /tmp and /rw in a scratch directory (chroot)."""
    root = tmp_path / "native"
    shutil.copytree(rootfs, root, symlinks=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "rw", 0o1777)
    os.chmod(root, 0o1777)
    # The host's mmap_min_addr where a program looks for it (the chroot has no /proc).
    (root / "proc" / "sys" / "vm").mkdir(parents=True)
    shutil.copyfile("/proc/sys/vm/mmap_min_addr", root / "proc" / "sys" / "vm" / "mmap_min_addr")
    p = subprocess.run(["chroot", "--userspec=65534:65534", str(root), *args], capture_output=True, text=True,
                       timeout=60)
    return p.stdout


@pytest.mark.parametrize("program", ["lowmap", "vsyscall", "int80"])
def test_attack_gets_what_linux_gives(snapbox, tmp_path, attack_rootfs, program):
    output = run_attack(snapbox, tmp_path, attack_rootfs, f"/{program}")
    got = checks(output)
    assert got and all(got.values()), got
    assert "LEAKED" not in output
    want = checks(native(attack_rootfs, tmp_path, f"/{program}"))
    assert want and all(want.values()), want


def test_signals_to_init_and_to_groups_reach_what_linux_reaches(snapbox, tmp_path, attack_rootfs):
    got = checks(run_attack(snapbox, tmp_path, attack_rootfs, "/initkill"))
    assert got and all(got.values()), got
    # Natively: process 1 of a new PID namespace, as the program is in a sandbox.
    native = subprocess.run(["unshare", "--pid", "--fork", "chroot", str(attack_rootfs), "/initkill"],
                            capture_output=True, text=True, timeout=60)
    want = checks(native.stdout)
    assert want == got, native.stdout


def test_vsyscalls_are_answered_by_the_sentry(snapbox, tmp_path, attack_rootfs):
    """musl's gettimeofday and time use clock_gettime: the only calls of those names are
    the vsyscall page's, and the sentry sees them."""
    log = tmp_path / "sandbox.log"
    output = run_attack(snapbox, tmp_path, attack_rootfs, "/vsyscall", flags=("--strace", "--debug-log", str(log)))
    assert all(checks(output).values()), output
    calls = [line.split("] ", 1)[1].split("(")[0] for line in log.read_text().splitlines() if "snapbox.strace" in line]
    assert "gettimeofday" in calls and "time" in calls, calls


def test_int80_never_runs_a_64bit_call_and_faults_as_without_ia32(snapbox, tmp_path, attack_rootfs):
    output = run_attack(snapbox, tmp_path, attack_rootfs, "/int80")
    assert checks(output) == {"int80-getpid-faults": True, "int80-write-faults": True}, output


def stub_pids(sandbox_pid: int) -> list[int]:
    """The stub processes of a sandbox: its children running the stub executable."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == sandbox_pid and "snapbox-stub" in os.readlink(f"/proc/{entry}/exe"):
                    out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return out


def test_no_stub_maps_anything_below_mmap_min_addr(snapbox, tmp_path, attack_rootfs):
    out = tmp_path / "out.txt"
    b = bundle(tmp_path, attack_rootfs, "/remapleak", "50", "hold")
    start(snapbox, out, "run", "--bundle", str(b), "leak")
    wait_for(lambda: "settled" in out.read_text(), timeout=60, what="the mremap loop")
    (stub,) = stub_pids(snapbox.sandbox_pid("leak"))
    with open(f"/proc/{stub}/maps") as f:
        starts = [int(line.split("-")[0], 16) for line in f]
    assert min(starts) >= 0x10000
    snapbox("kill", "leak", "KILL")


def test_failing_mremaps_leave_nothing_allocated(snapbox, tmp_path, attack_rootfs):
    """300 rounds of 1 MB, each tried against four bad targets: without the checks coming
    first, 1.2 GB would stay allocated with nothing mapped."""
    out = tmp_path / "out.txt"
    b = bundle(tmp_path, attack_rootfs, "/remapleak", "300", "hold")
    start(snapbox, out, "run", "--bundle", str(b), "leak")
    wait_for(lambda: "settled" in out.read_text(), timeout=120, what="the mremap loop")
    assert all(checks(out.read_text()).values()), out.read_text()
    stats = json.loads(snapbox("events", "--stats", "leak").stdout)["data"]["memory"]
    # What the program maps at the end: 2 MB moved, 1 MB kept by MREMAP_DONTUNMAP, its
    # binary, stack and heap; the host's view of the memory file agrees with the allocator.
    assert stats["allocated"] < 16 << 20, stats
    assert stats["usage"] <= stats["allocated"], stats
    snapbox("kill", "leak", "KILL")


def test_names_that_are_not_utf8_work_and_survive_a_checkpoint(snapbox, tmp_path, attack_rootfs):
    out = tmp_path / "out.txt"
    b = bundle(tmp_path, attack_rootfs, "/names", "hold")
    start(snapbox, out, "run", "--bundle", str(b), "names")
    wait_for(lambda: "made" in out.read_text() or "done" in out.read_text(), timeout=30, what="the files")
    made = checks(out.read_text())
    assert made and all(made.values()), out.read_text()
    image = tmp_path / "names.img"
    snapbox("checkpoint", "--image-path", str(image), "names")
    # The open file's name is shown as its bytes, as ls would: the path the link it was
    # opened by resolves to, as /proc/PID/fd names it.
    shown = subprocess.run(snapbox.cmd("inspect", str(image)), capture_output=True, timeout=60)
    assert shown.returncode == 0 and b"fd 3: file /tmp/d\xff\xfe/g\xe9 (offset 5)" in shown.stdout, shown
    start(snapbox, tmp_path / "again.txt", "restore", "--bundle", str(b), "--image-path", str(image), "again")
    got = checks(snapbox("exec", "again", "/names", "check").stdout)
    assert got and all(got.values()), got
    snapbox("kill", "again", "KILL")


def test_links_and_renames_across_mounts_fail_with_exdev(snapbox, tmp_path, attack_rootfs):
    got = checks(run_attack(snapbox, tmp_path, attack_rootfs, "/mounts"))
    assert got and all(got.values()), got
    assert sorted(os.listdir(tmp_path / "rw")) == ["b"]  # the refused link made nothing on the host
