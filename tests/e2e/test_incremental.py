"""Incremental checkpoints: pre-dumps written while the program runs, images made against
their parent with only the pages changed since, and restores that read the chain (and
refuse a chain with a missing or changed link)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import lines, wait_for

# A program whose memory changes all the time and can say whether it is right: each tick
# writes 40 pages chosen by a seeded generator, then rebuilds what its 16 MB must hold by
# replaying every tick from the seed and compares.
WRITER = textwrap.dedent("""
    import hashlib, random, sys, time
    SIZE, PAGE = 16 << 20, 4096

    def apply(buf, tick):
        rng = random.Random(tick)
        for _ in range(40):
            page = rng.randrange(SIZE // PAGE)
            buf[page * PAGE:(page + 1) * PAGE] = rng.randbytes(PAGE)

    data = bytearray(SIZE)
    for tick in range(1, 1000):
        apply(data, tick)
        expected = bytearray(SIZE)
        for t in range(1, tick + 1):
            apply(expected, t)
        ok = hashlib.sha256(data).digest() == hashlib.sha256(expected).digest()
        print("tick", tick, "ok" if ok else "CORRUPT", flush=True)
        time.sleep(0.2)
""")


# Memory written every way a page can be, between a pre-dump and the image made after it:
# by a child process through shared memory (the child then exits), by the sentry (a read(2)
# into a buffer), through a shared mapping of a memfd that is then unmapped, in a mapping
# made since, and by plain stores. After the restore, every page must hold the new bytes.
WAYS = textwrap.dedent("""
    import mmap, os, time
    PAGE = 4096

    def wait(name):
        while not os.path.exists(name):
            time.sleep(0.05)

    shared = mmap.mmap(-1, 64 * PAGE, mmap.MAP_SHARED)
    shared[:] = b"a" * len(shared)
    private = bytearray(b"a" * 64 * PAGE)
    memfd = os.memfd_create("pages")
    os.ftruncate(memfd, 8 * PAGE)
    os.pwrite(memfd, b"a" * 8 * PAGE, 0)
    print("ready", flush=True)
    wait("go1")
    pid = os.fork()
    if pid == 0:
        shared[:8 * PAGE] = b"b" * 8 * PAGE
        os._exit(0)
    os.waitpid(pid, 0)
    r, w = os.pipe()
    os.write(w, b"c" * 4 * PAGE)
    os.readv(r, [memoryview(private)[10 * PAGE:14 * PAGE]])
    m = mmap.mmap(memfd, 8 * PAGE)
    m[:] = b"d" * 8 * PAGE
    m.close()
    fresh = mmap.mmap(-1, 16 * PAGE)
    fresh[:] = b"e" * 16 * PAGE
    private[20 * PAGE:21 * PAGE] = b"f" * PAGE
    print("written", flush=True)
    wait("go2")
    ok = (shared[:] == b"b" * 8 * PAGE + b"a" * 56 * PAGE
          and private == b"a" * 10 * PAGE + b"c" * 4 * PAGE + b"a" * 6 * PAGE + b"f" * PAGE + b"a" * 43 * PAGE
          and os.pread(memfd, 8 * PAGE, 0) == b"d" * 8 * PAGE and fresh[:] == b"e" * 16 * PAGE)
    print("verified" if ok else "WRONG", flush=True)
""")


@pytest.fixture(scope="session")
def no_userfaultfd(tmp_path_factory) -> Path:
    """A host command that runs another where userfaultfd(2) is refused (as under
    Docker's default seccomp profile)."""
    binary = tmp_path_factory.mktemp("host") / "no_userfaultfd"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(Path(__file__).parent / "host" / "no_userfaultfd.c")], check=True)
    return binary


def ticks(out: Path) -> list[str]:
    return [x for x in lines(out) if x.startswith("tick ")]


def start_writer(snapbox, tmp_path: Path, cid: str) -> Path:
    (tmp_path / "writer.py").write_text(WRITER)
    out = tmp_path / "out.txt"
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("do", "--id", cid, "--detach", "--", sys.executable, "writer.py"), stdout=f,
                       stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60)
    return out


def restore(snapbox, image: Path, cid: str, out: Path, check: bool = True) -> subprocess.CompletedProcess:
    with open(out, "a") as f:
        p = subprocess.run(snapbox.cmd("restore", "--image-path", str(image), "--detach", cid), stdout=f,
                           stderr=subprocess.PIPE if not check else f, text=True, stdin=subprocess.DEVNULL,
                           timeout=60)
    if check:
        assert p.returncode == 0, out.read_text()
    return p


def test_a_chain_of_three_restores_memory_the_program_kept_changing(snapbox, tmp_path):
    out = start_writer(snapbox, tmp_path, "w0")
    p1, p2, p3 = (tmp_path / name for name in ("p1", "p2", "p3"))
    wait_for(lambda: len(ticks(out)) >= 2, timeout=60, what="tick 2")
    snapbox("checkpoint", "--pre-dump", "--image-path", str(p1), "w0")
    wait_for(lambda: len(ticks(out)) >= 4, timeout=60, what="tick 4")
    snapbox("checkpoint", "--pre-dump", "--parent-path", str(p1), "--image-path", str(p2), "w0")
    wait_for(lambda: len(ticks(out)) >= 6, timeout=60, what="tick 6")
    snapbox("checkpoint", "--parent-path", str(p2), "--image-path", str(p3), "w0")
    before = len(ticks(out))
    # Each later image holds about the pages written since the one before, not all 16 MB.
    assert p1.stat().st_size > 8 << 20
    assert p2.stat().st_size < p1.stat().st_size / 2 and p3.stat().st_size < p1.stat().st_size / 2
    described = snapbox("inspect", str(p3)).stdout
    assert f"parent: {p2} (chain of 2 pre-dumps, oldest first: {p1}, {p2})" in described
    assert "pre-dump (memory only" in snapbox("inspect", str(p2)).stdout
    restore(snapbox, p3, "w1", out)
    wait_for(lambda: len(ticks(out)) >= before + 3, timeout=60, what="ticks after the restore")
    got = ticks(out)
    assert all(x.endswith(" ok") for x in got), got
    numbers = [int(x.split()[1]) for x in got]
    assert numbers == list(range(1, len(numbers) + 1))  # every tick once, none lost or repeated


def test_a_chain_with_a_missing_or_changed_parent_is_refused(snapbox, tmp_path):
    out = start_writer(snapbox, tmp_path, "w0")
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    wait_for(lambda: len(ticks(out)) >= 1, timeout=60, what="tick 1")
    snapbox("checkpoint", "--pre-dump", "--image-path", str(p1), "w0")
    snapbox("checkpoint", "--leave-running", "--parent-path", str(p1), "--image-path", str(p2), "w0")
    p = snapbox("restore", "--image-path", str(p1), "x", check=False)
    assert p.returncode == 1 and p.stderr.startswith("snapbox: error: image is a pre-dump (memory only)")
    p1.rename(tmp_path / "elsewhere")
    p = restore(snapbox, p2, "x", out, check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"snapbox: error: parent image {p1} of the image cannot be read (No such file or directory)"]
    # Another pre-dump at the parent's path is not the parent.
    snapbox("checkpoint", "--pre-dump", "--image-path", str(p1), "w0")
    p = restore(snapbox, p2, "x", out, check=False)
    assert p.stderr.strip().splitlines() == [
        f"snapbox: error: parent image {p1} of the image has changed since (it is another image now)"]
    assert snapbox("state", "x", check=False).returncode != 0
    wait_for(lambda: len(ticks(out)) >= 3, timeout=60, what="the source going on")
    assert all(x.endswith(" ok") for x in ticks(out))


@pytest.mark.parametrize("parent", ["none", "not-the-last", "replaced"])
def test_a_parent_that_is_not_the_last_pre_dump_is_refused_and_the_program_runs_on(snapbox, tmp_path, parent):
    out = start_writer(snapbox, tmp_path, "w0")
    p1, p2, p3 = (tmp_path / name for name in ("p1", "p2", "p3"))
    wait_for(lambda: len(ticks(out)) >= 1, timeout=60, what="tick 1")
    if parent != "none":
        snapbox("checkpoint", "--pre-dump", "--image-path", str(p1), "w0")
    if parent == "not-the-last":
        snapbox("checkpoint", "--pre-dump", "--parent-path", str(p1), "--image-path", str(p2), "w0")
    if parent == "replaced":
        p1.write_bytes(b"something else")
    p = snapbox("checkpoint", "--parent-path", str(p1), "--image-path", str(p3), "w0", check=False)
    assert p.returncode == 1 and not p3.exists()
    want = {"none": "this sandbox has made no pre-dump to build on",
            "not-the-last": f"not this sandbox's last pre-dump (that is {p2})",
            "replaced": "the pre-dump there is gone or has changed"}[parent]
    assert p.stderr == f"snapbox: error: --parent-path {p1}: {want}\n"
    n = len(ticks(out))
    wait_for(lambda: len(ticks(out)) >= n + 2, timeout=60, what="the program going on")


@pytest.mark.parametrize("method", ["write-protection", "page digests"])
def test_every_way_of_writing_a_page_is_in_the_next_image(snapbox, tmp_path, no_userfaultfd, method):
    (tmp_path / "ways.py").write_text(WAYS)
    out = tmp_path / "out.txt"
    cmd = snapbox.cmd("do", "--id", "w0", "--detach", "--", sys.executable, "ways.py")
    if method == "page digests":
        cmd = [str(no_userfaultfd), *cmd]  # no write-protection there: the digests find the pages
    with open(out, "a") as f:
        subprocess.run(cmd, stdout=f, stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60,
                       env={**os.environ, "SNAPBOX_WARM": "0"})
    wait_for(lambda: "ready" in lines(out), timeout=60, what="ready")
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    snapbox("checkpoint", "--pre-dump", "--image-path", str(p1), "w0")
    (tmp_path / "go1").touch()
    wait_for(lambda: "written" in lines(out), timeout=60, what="written")
    snapbox("checkpoint", "--parent-path", str(p1), "--image-path", str(p2), "w0")
    assert f"written pages found by: {method}" in snapbox("inspect", str(p2)).stdout
    restore(snapbox, p2, "w1", out)
    (tmp_path / "go2").touch()
    wait_for(lambda: "verified" in lines(out) or "WRONG" in lines(out), timeout=60, what="the check")
    assert "verified" in lines(out), out.read_text()


def test_a_shell_forking_all_the_time_is_pre_dumped_while_it_runs_and_counts_on(snapbox, tmp_path):
    # Pre-dumps catch it anywhere: running, in a fork or an exec, waiting for a child.
    out = tmp_path / "out.txt"
    script = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); /bin/true; echo $i; done"
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("do", "--id", "s0", "--detach", "--", "/bin/sh", "-c", script), stdout=f,
                       stderr=f, stdin=subprocess.DEVNULL, cwd=tmp_path, check=True, timeout=60)
    images = [tmp_path / f"p{n}" for n in range(4)]
    parent: list[str] = []
    for image in images[:3]:
        n = len(lines(out))
        wait_for(lambda: len(lines(out)) >= n + 50, timeout=60, what="counting")
        snapbox("checkpoint", "--pre-dump", *parent, "--image-path", str(image), "s0")
        parent = ["--parent-path", str(image)]
    n = len(lines(out))
    wait_for(lambda: len(lines(out)) >= n + 50, timeout=60, what="counting on after the pre-dumps")
    snapbox("checkpoint", *parent, "--image-path", str(images[3]), "s0")
    before = len(lines(out))
    restore(snapbox, images[3], "s1", out)
    wait_for(lambda: len(lines(out)) >= before + 50, timeout=60, what="counting after the restore")
    snapbox("delete", "--force", "s1")
    numbers = [int(x) for x in lines(out)]
    assert numbers == list(range(1, len(numbers) + 1))
