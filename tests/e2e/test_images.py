"""Images through the CLI: inspect, streaming through a pipe, the golden image, layouts,
and progress on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import struct
import subprocess
from pathlib import Path

import pytest

from snapbox.kernel.checkpoint import LoadContext
from snapbox.kernel.kernel import Kernel
from snapbox.platform.cpuid import FeatureSet
from snapbox.state.image import ImageReader
from tests.conftest import REPO, lines, wait_for
from tests.e2e.test_checkpoint_restore import counts

GOLDEN = REPO / "tests" / "golden" / "counter-format1.img"


def checkpointed(snapbox, tmp_path: Path, bundle: str, ready, *extra: str) -> tuple[Path, Path]:
    out = tmp_path / f"{bundle}.txt"
    image = tmp_path / f"{bundle}.img"
    snapbox.run_detached("x", bundle, out)
    wait_for(lambda: ready(out), timeout=30, what=f"{bundle} to get going")
    snapbox("checkpoint", "--image-path", str(image), *extra, "x")
    snapbox("delete", "x")
    return image, out


def test_inspect_counter(snapbox, tmp_path):
    image, out = checkpointed(snapbox, tmp_path, "counter", lambda o: len(counts(o)) >= 3)
    last = counts(out)[-1]["count"]
    info = json.loads(snapbox("inspect", "--json", str(image)).stdout)
    (proc,) = info["processes"]
    assert proc["pid"] == 1 and proc["argv"] == ["/counter"] and not proc["exited"]
    (task,) = proc["tasks"]
    assert (task["tid"], task["comm"]) == (1, "counter")
    # Between ticks (nearly always) the counter sleeps; a checkpoint that lands inside a tick
    # finds it in one of the tick's calls, the record of the next count perhaps written.
    if task["state"] == "in nanosleep (syscall 35)":
        offsets = [9 * last]
    else:
        assert task["state"] in {"in write (syscall 1)", "in lseek (syscall 8)", "in pread64 (syscall 17)",
                                 "in clock_gettime (syscall 228)"}
        offsets = [9 * last, 9 * (last + 1)]
    fd3 = proc["fds"].pop("3")
    assert fd3 in [f"file /tmp/counter.log (offset {o})" for o in offsets]
    assert proc["fds"] == {"0": "host stdin", "1": "host stdout", "2": "host stderr"}
    assert proc["memory_by_kind"]["stack"] == 8 << 20
    assert proc["memory_by_kind"]["file /counter"] > 0
    assert info["hostname"] == "counter"
    assert info["objects"]["Task"]["count"] == 1 and info["objects"]["Vma"]["count"] == proc["vmas"]
    assert set(info["sections"]) == {"cpuid", "kernel", "memory"}
    assert info["cpu"]["features"] == sorted(FeatureSet.host().features)
    text = snapbox("inspect", str(image)).stdout
    assert f"task 1 counter: {task['state']}" in text
    assert f"fd 3: {fd3}" in text


def test_inspect_memhog_reports_memory_and_compression(snapbox, tmp_path):
    image, _ = checkpointed(snapbox, tmp_path, "memhog", lambda o: lines(o))
    info = json.loads(snapbox("inspect", "--json", str(image)).stdout)
    mem = info["memory"]
    assert mem["saved"] >= 64 << 20  # every touched page
    assert mem["allocated"] >= mem["saved"]
    assert 0.9 < mem["ratio"] <= 1.01  # the pattern does not compress
    assert info["processes"][0]["memory_by_kind"]["anon"] >= 64 << 20


def test_inspect_refuses_a_corrupt_image(snapbox, tmp_path):
    image, _ = checkpointed(snapbox, tmp_path, "counter", lambda o: counts(o))
    data = bytearray(image.read_bytes())
    data[-100] ^= 0xFF
    image.write_bytes(bytes(data))
    p = snapbox("inspect", str(image), check=False)
    assert p.returncode == 1 and p.stderr.startswith("snapbox: error: image is corrupt")


def test_checkpoint_through_a_pipe_into_restore(snapbox, tmp_path):
    out1, out2 = tmp_path / "a.txt", tmp_path / "b.txt"
    snapbox.run_detached("a", "counter", out1)
    wait_for(lambda: len(counts(out1)) >= 3, what="counts")
    pipeline = (f"{' '.join(snapbox.cmd('checkpoint', '--image-path', '-', 'a'))} | "
                f"{' '.join(snapbox.cmd('restore', '--image-path', '-', '--bundle', str(snapbox.images / 'counter'), '--detach', 'b'))}"
                f" > {out2} 2> {tmp_path / 'err'}")
    subprocess.run(["sh", "-c", pipeline], check=True, timeout=60)
    wait_for(lambda: len(counts(out2)) >= 3, what="counts in the restored sandbox")
    before = counts(out1)
    assert counts(out2)[0]["count"] == before[-1]["count"] + 1
    assert json.loads(snapbox("state", "a").stdout)["status"] == "stopped"
    assert (tmp_path / "err").read_text() == ""


def test_golden_image_still_loads():
    """An image made by snapbox 0.1.0 (format 1). If this fails, a change broke old images."""
    with open(GOLDEN, "rb") as f:
        kernel, summary = Kernel.read_image(f, LoadContext(), check_cpu=False)
    assert summary["format"] == 1 and summary["meta"]["snapbox"] == "0.1.0"
    (task,) = kernel.tasks.live_tasks()
    assert task.comm == "counter" and task.saved_syscall == 35
    log = kernel.tasks.init.fds.get(3)
    assert log.offset == 81 and log.node.read(0, 81).split() == [f"{i:08d}".encode() for i in range(1, 10)]
    kernel.memfile.close()


def test_golden_image_restores_or_names_what_this_cpu_lacks(snapbox, tmp_path):
    with open(GOLDEN, "rb") as f:
        features = ImageReader(f)
        from snapbox.state import decode_graph

        recorded = decode_graph(features.read_section("cpuid"))
    missing = recorded.missing_on(FeatureSet.host())
    out = tmp_path / "out.txt"
    p = snapbox.run_detached("g", "counter", out, restore=GOLDEN, check=False)
    if missing:
        assert p.returncode == 1 and "this host lacks: " + ", ".join(missing) in p.stderr
        return
    assert p.returncode == 0, p.stderr
    wait_for(lambda: len(counts(out)) >= 2, what="the golden counter")
    assert [c["count"] for c in counts(out)[:2]] == [10, 11]
    assert all(c["file"] == c["count"] for c in counts(out))


def test_uncompressed_images_lay_pages_out_page_aligned(snapbox, tmp_path):
    image, out = checkpointed(snapbox, tmp_path, "memhog", lambda o: lines(o), "--compression", "none")
    data = image.read_bytes()
    pos = data.index(b"SECT\x06memory") + len(b"SECT\x06memory")
    chunks = 0
    head = struct.Struct("<QIBH")
    while True:
        n, _ = struct.unpack_from("<II", data, pos)
        if n == 0:
            break
        off, length, codec, pad = head.unpack_from(data, pos + 8)
        assert codec == 0
        assert (pos + 8 + head.size + pad) % 4096 == 0, "page data is not page-aligned in the file"
        pos += 8 + n
        chunks += 1
    assert chunks >= 16
    n = len(lines(out))
    snapbox.run_detached("y", "memhog", out, restore=image)
    wait_for(lambda: len(lines(out)) >= n + 1, timeout=30, what="a tick after restore")
    assert lines(out)[n].endswith("ok pages=16384")


def test_progress_is_shown_on_a_terminal_only(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    snapbox.run_detached("p", "memhog", out)
    wait_for(lambda: lines(out), timeout=30, what="memhog ready")
    quiet = snapbox("checkpoint", "--leave-running", "--image-path", str(tmp_path / "q.img"), "p")
    assert quiet.stderr == ""
    master, slave = pty.openpty()
    p = subprocess.run(snapbox.cmd("checkpoint", "--image-path", str(tmp_path / "t.img"), "p"),
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, timeout=60)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert p.returncode == 0
    assert b"checkpoint: " in shown and b"memory (" in shown and b"checkpoint: done in" in shown


def test_unsavable_state_fails_the_checkpoint_and_keeps_the_sandbox(tmp_path, images):
    """A kernel object holding something unsavable: the checkpoint fails naming the field,
    nothing is written, and the kernel carries on."""
    k = Kernel.boot(str(images / "counter" / "rootfs"), [b"/counter"], [])
    k.start()
    k.tasks.init.argv.append(io.BytesIO())
    k.pause()
    from snapbox.state import SaveError

    with pytest.raises(SaveError, match=r"Kernel\.tasks\.init\.argv\[1\]: BytesIO is not a savable type"):
        k.save(io.BytesIO())
    k.tasks.init.argv.pop()
    k.timekeeper.resume()
    k.unpause()
    k.step(0.2)
    assert k.exit_status is None
    k.shutdown()
