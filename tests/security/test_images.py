"""Bad images and bad destinations: a damaged image is refused as damaged, a lazy restore of
one behaves the same whenever the damage is found, and a checkpoint that cannot be written
says why and leaves the sandbox running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapbox.state.image import ImageReader
from tests.conftest import REPO, lines, wait_for


def memhog_image(snapbox, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out.txt"
    image = tmp_path / "m.img"
    snapbox.run_detached("m0", "memhog", out)
    wait_for(lambda: lines(out), timeout=30, what="memhog ready")
    snapbox("checkpoint", "--image-path", str(image), "m0")
    snapbox("delete", "m0")
    return image, out


def memory_chunks(image: Path) -> list[int]:
    """Where each chunk of the memory section's payload starts in the file."""
    with open(image, "rb") as f:
        r = ImageReader(f)
        r.read_section("cpuid")
        r.read_section("kernel")
        return [pos for pos, _, _, _ in r.section_index("memory", 0)]


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_lazy_restore_of_damaged_memory_starts_then_ends_as_killed(snapbox, tmp_path, which):
    """The first chunk is loaded at once (during the restore itself), the last one long after:
    either way `restore --lazy` succeeds, then the container stops as killed by SIGKILL and
    its log says what was damaged."""
    image, out = memhog_image(snapbox, tmp_path)
    chunks = memory_chunks(image)
    data = bytearray(image.read_bytes())
    data[(chunks[0] if which == "first" else chunks[-1]) + 16] ^= 0xFF
    image.write_bytes(bytes(data))
    for attempt in range(3):
        cid = f"m{attempt + 1}"
        p = snapbox.run_detached(cid, "memhog", out, restore=image, lazy=True, check=False)
        assert p.returncode == 0 and p.stderr == "", p.stderr
        wait_for(lambda: json.loads(snapbox("state", cid).stdout)["status"] == "stopped", timeout=30,
                 what="the sandbox to end")
        log = (snapbox.root / cid / "sandbox.log").read_text()
        assert "memory could not be restored: the image restored from is corrupt (checksum mismatch" in log
        assert json.loads((snapbox.root / cid / "exit.json").read_text()) == {"status": 9}
        snapbox("delete", cid)


def test_an_eager_restore_refuses_the_same_image_before_starting(snapbox, tmp_path):
    image, out = memhog_image(snapbox, tmp_path)
    data = bytearray(image.read_bytes())
    data[memory_chunks(image)[-1] + 16] ^= 0xFF
    image.write_bytes(bytes(data))
    p = snapbox.run_detached("m1", "memhog", out, restore=image, check=False)
    assert p.returncode == 1
    assert p.stderr == "snapbox: error: image is corrupt (checksum mismatch in the memory section)\n"


def test_a_checkpoint_to_a_full_disk_says_so_and_the_sandbox_runs_on(snapbox, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        out = tmp_path / "out.txt"
        snapbox.run_detached("m0", "memhog", out)
        wait_for(lambda: lines(out), timeout=30, what="memhog ready")
        image = full / "m.img"
        p = snapbox("checkpoint", "--image-path", str(image), "m0", check=False)
        assert p.returncode == 1
        assert p.stderr == f"snapbox: error: cannot write image {image} (No space left on device)\n"
        assert list(full.iterdir()) == []  # nothing left under the name, nor beside it
        assert json.loads(snapbox("state", "m0").stdout)["status"] == "running"
        n = len(lines(out))
        wait_for(lambda: len(lines(out)) > n, timeout=30, what="memhog to go on")
        snapbox("kill", "m0", "KILL")
    finally:
        subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "directory"])
def test_a_checkpoint_never_replaces_what_is_not_a_regular_file(snapbox, tmp_path, kind):
    """runc's contract would have the path be a directory CRIU fills; snapbox writes one
    file, and must never turn /dev/full, a FIFO or a link into it."""
    import os
    import stat

    target = tmp_path / "here"
    if kind == "device":
        target = Path("/dev/full")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("keep me")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
    before = os.lstat(target)
    out = tmp_path / "out.txt"
    snapbox.run_detached("c0", "counter", out)
    wait_for(lambda: lines(out), timeout=30, what="counter ready")
    p = snapbox("checkpoint", "--image-path", str(target), "c0", check=False)
    if kind == "directory":  # runc's form: the image is a file in it, the directory stays
        assert p.returncode == 0 and (target / "snapbox.img").is_file(), p.stderr
    else:  # refused by the sandbox before anything is written
        assert p.returncode == 1 and p.stderr.startswith(f"snapbox: error: cannot write image {target} (it is a")
        assert p.stderr.count("\n") == 1
    after = os.lstat(target)
    assert (stat.S_IFMT(after.st_mode), after.st_ino, after.st_rdev) == \
        (stat.S_IFMT(before.st_mode), before.st_ino, before.st_rdev)
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "keep me"
    assert not [n for n in os.listdir(target.parent) if n.endswith(".partial")]
    assert json.loads(snapbox("state", "c0").stdout)["status"] == ("stopped" if kind == "directory" else "running")
    snapbox("delete", "--force", "c0")


def test_the_image_fuzzer_finds_nothing_on_a_current_image(snapbox, tmp_path):
    """A bounded run of bench/fuzz-image on an image this snapbox made (the golden image is
    older than the kernel graph's digest): damaged images are all refused as damaged."""
    out = tmp_path / "out.txt"
    image = tmp_path / "c.img"
    snapbox.run_detached("c0", "counter", out)
    wait_for(lambda: lines(out), timeout=30, what="counter ready")
    snapbox("checkpoint", "--image-path", str(image), "c0")
    p = subprocess.run([sys.executable, str(REPO / "bench" / "fuzz-image"), str(image), "--seed", "4442",
                        "--cases", "400"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "0 decoded" in p.stdout, p.stdout


def test_an_image_refused_after_its_graph_was_decoded_leaves_no_host_fd_open():
    """A damaged trailer is found only after the whole graph was decoded (stdio dup'ed,
    a memfd made): refusing the image must give all of that back, or a long-lived reader
    (the fuzzer, a warm pool's worker) runs out of fds."""
    import gc
    import io
    import os

    from snapbox.kernel.checkpoint import LoadContext
    from snapbox.kernel.kernel import Kernel
    from snapbox.state import ImageError

    data = bytearray((REPO / "tests" / "golden" / "counter-format1.img").read_bytes())
    data[-1] ^= 0xFF  # the trailer's CRC
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(ImageError, match="checksum mismatch in the trailer"):
            Kernel.read_image(io.BytesIO(bytes(data)), LoadContext(), check_cpu=False)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # + the sentry's signalfd, made once
