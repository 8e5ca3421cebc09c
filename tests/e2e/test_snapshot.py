"""A program that asks to be checkpointed once it is ready (writing /proc/snapbox/checkpoint,
under `--snapshot-to IMAGE`), learns after each restore that it was restored
(/proc/snapbox/restored), and clones restored from that image read different random bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import lines, wait_for

PROGRAM = """
import os, sys
table = [i * i for i in range(100000)]  # the work done once, before the snapshot
print("restored", open("/proc/snapbox/restored").read().strip(), flush=True)
try:
    with open("/proc/snapbox/checkpoint", "w") as f:
        f.write("ready")
    print("checkpointed", flush=True)
except OSError as e:
    print("no checkpoint:", e.strerror, flush=True)
print("restored", open("/proc/snapbox/restored").read().strip(), "random", os.urandom(8).hex(),
      os.getrandom(8).hex(), sum(table), flush=True)
"""


def start(snapbox, tmp_path: Path, *options: str) -> Path:
    (tmp_path / "program.py").write_text(PROGRAM)
    out = tmp_path / "out.txt"
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("do", *options, "--id", "s0", "--detach", "--", sys.executable, "program.py"),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= 3, timeout=60, what="the program")
    return out


def test_a_program_chooses_its_snapshot_point_and_each_clone_knows_it_was_restored(snapbox, tmp_path):
    image = tmp_path / "ready.img"
    out = start(snapbox, tmp_path, "--snapshot-to", str(image))
    first, said, after = lines(out)[:3]
    assert (first, said) == ("restored 0", "checkpointed")
    assert after.startswith("restored 0 random ")
    assert "pre-dump" not in snapbox("inspect", str(image)).stdout
    clones = []
    for cid in ("c1", "c2"):
        p = snapbox("restore", "--image-path", str(image), cid, timeout=60)
        said, line = p.stdout.splitlines()  # it goes on from its write
        assert said == "checkpointed" and line.startswith("restored 1 random ")
        clones.append(line)
    randoms = {tuple(line.split()[3:5]) for line in (after, *clones)}
    assert len(randoms) == 3  # the original and each clone: bytes of their own, both sources
    assert len({line.split()[5] for line in (after, *clones)}) == 1  # the same work, done once


def test_without_snapshot_to_there_is_nothing_to_ask(snapbox, tmp_path):
    out = start(snapbox, tmp_path)
    assert lines(out)[:2] == ["restored 0", "no checkpoint: No such file or directory"]


def test_snapshot_to_a_directory_that_does_not_exist_is_refused(snapbox, tmp_path):
    p = snapbox("do", "--snapshot-to", str(tmp_path / "no" / "such.img"), "--", "true", check=False)
    assert p.returncode == 2
    assert p.stderr == f"snapbox: error: --snapshot-to {tmp_path / 'no' / 'such.img'}: no directory " \
                       f"{tmp_path / 'no'}\n"


def test_a_snapshot_that_cannot_be_written_fails_the_write_and_the_program_runs_on(snapbox, tmp_path):
    out = start(snapbox, tmp_path, "--snapshot-to", "/proc/cannot-be-made.img")  # nothing is made in /proc
    assert lines(out)[1] == "no checkpoint: Input/output error"
    assert lines(out)[2].startswith("restored 0 random ")
