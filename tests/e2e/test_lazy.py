"""restore --lazy: the program runs before its memory is read, every page comes back all the
same, and a corrupt page ends the sandbox instead of reaching the program."""

from __future__ import annotations

import json
import subprocess
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
    assert "memory could not be restored from the image: image is corrupt (checksum mismatch" in log
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
