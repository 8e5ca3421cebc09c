"""Clone pools: clones of one image held ready, taken as containers of their own.

The program makes its image itself (`--snapshot-to`, writing /proc/snapbox/checkpoint) once
it is ready, then answers each line on its stdin by running it (a shell's eval): what a
function does with each request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.test_lifecycle import busybox_config, write_bundle

# Ready: a variable and a file of its own, then the checkpoint; every restore goes on from
# there, says what it is, and serves.
FUNCTION = ("V=original; echo original > /tmp/f; echo 1 > /proc/snapbox/checkpoint; "
            "echo ready $(cat /proc/snapbox/restored) $(hostname) $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' '); "
            "while read -r line; do eval \"$line\"; done")


@pytest.fixture
def image(snapbox, images, tmp_path) -> Path:
    path = tmp_path / "fn.img"
    bundle = write_bundle(tmp_path, busybox_config(images, FUNCTION), name="fn")
    with open(tmp_path / "fn.out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--detach", "--snapshot-to", str(path), "--bundle", str(bundle), "fn"),
                       stdin=subprocess.DEVNULL, stdout=f, stderr=f, check=True, timeout=60)
    wait_for(path.exists, what="the image")
    wait_for(lambda: "ready 0" in (tmp_path / "fn.out").read_text(), what="the original to go on")
    snapbox("delete", "--force", "fn")
    return path


class Taken:
    """A clone taken (`argv`: `pool take`, or a restore) on pipes: lines go to its stdin,
    its answers come back. `ready` is what it said first, once restored."""

    def __init__(self, argv: list[str], err_path: Path, check: bool = True, greets: bool = True) -> None:
        r, self.stdin = os.pipe()
        self.stdout, w = os.pipe()
        with open(err_path, "w+") as err:  # a file: the clone keeps what it is given
            self.take = subprocess.run(argv, stdin=r, stdout=w, stderr=err, timeout=60)
            err.seek(0)
            self.err = err.read()
        os.close(r)
        os.close(w)
        self.out = os.fdopen(self.stdout)
        if check:
            assert self.take.returncode == 0, self.err
        if check and greets:
            self.ready = self.out.readline().split()

    def ask(self, line: str) -> str:
        os.write(self.stdin, line.encode() + b"\n")
        return self.out.readline().strip()

    def close(self) -> None:
        os.close(self.stdin)
        self.out.close()


def take(snapbox, pool: str, cid: str, check: bool = True) -> Taken:
    return Taken(snapbox.cmd("pool", "take", pool, cid), snapbox.root.parent / f"take-{cid}.err", check)


def pool_status(snapbox, name: str) -> dict:
    return {p["name"]: p for p in json.loads(snapbox("pool", "list", "--format", "json").stdout)}[name]


def test_clones_go_on_from_the_image_each_its_own(snapbox, image):
    snapbox("pool", "create", "--image", str(image), "--size", "2", "p")
    assert pool_status(snapbox, "p")["ready"] == 2
    taken = [take(snapbox, "p", f"f{i}") for i in range(3)]
    try:
        # Each is restored (restored=1), is named by its id, and drew its own random bytes.
        assert [t.ready[:3] for t in taken] == [["ready", "1", f"f{i}"] for i in range(3)]
        assert len({t.ready[3] for t in taken}) == 3
        assert all(json.loads(snapbox("state", f"f{i}").stdout)["status"] == "running" for i in range(3))
        # A clone's writes, to memory and to its files, are its own.
        assert taken[0].ask("V=changed; echo changed > /tmp/f; echo $V $(cat /tmp/f)") == "changed changed"
        assert taken[1].ask("echo $V $(cat /tmp/f)") == "original original"
        later = take(snapbox, "p", "f3")
        assert later.ask("echo $V $(cat /tmp/f)") == "original original"
        taken.append(later)
        status = pool_status(snapbox, "p")
        assert status["hits"] + status["misses"] == 4 and status["hits"] >= 2 and status["error"] is None
        # Killing one leaves the others serving.
        os.kill(snapbox.sandbox_pid("f1"), signal.SIGKILL)
        assert taken[2].ask("echo still $V") == "still original"
        wait_for(lambda: pool_status(snapbox, "p")["ready"] == 2, what="the pool to refill")
    finally:
        for t in taken:
            t.close()


def test_ready_clones_wait_at_idle_priority_and_a_taken_one_runs_normally(snapbox, image):
    """Restoring the next clone must not take the CPU from one just taken: the refiller
    and the clones it holds ready run at SCHED_IDLE, a take gives its clone (the sandbox
    process and its stubs) the normal policy back."""
    def policies(pid: int) -> set[int]:
        out, todo = set(), [pid]
        while todo:
            p = todo.pop()
            for tid in os.listdir(f"/proc/{p}/task"):
                out.add(os.sched_getscheduler(int(tid)))
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        return out

    snapbox("pool", "create", "--image", str(image), "--size", "2", "p")
    ready = snapbox.root / ".clones" / "p" / "ready"
    pids = [json.loads((d / "state.json").read_text())["pid"] for d in ready.iterdir() if (d / "state.json").exists()]
    assert len(pids) == 2 and all(policies(pid) == {os.SCHED_IDLE} for pid in pids)
    t = take(snapbox, "p", "f1")
    try:
        assert policies(snapbox.sandbox_pid("f1")) == {os.SCHED_OTHER}
        assert t.ask("echo $V") == "original"
    finally:
        t.close()


def test_a_checkpoint_of_a_clone_restores_by_itself(snapbox, image, tmp_path):
    snapbox("pool", "create", "--image", str(image), "--size", "1", "p")
    t = take(snapbox, "p", "f1")
    try:
        assert t.ask("V=mine; echo ok") == "ok"
        snapbox("checkpoint", "--image-path", str(tmp_path / "f1.img"), "f1")
    finally:
        t.close()
    snapbox("pool", "delete", "p")
    image.unlink()  # the clone's image needs nothing of the pool's
    r = Taken(snapbox.cmd("restore", "--detach", "--image-path", str(tmp_path / "f1.img"), "g1"),
              tmp_path / "restore.err", greets=False)
    try:
        assert r.ask("echo $V $(hostname)") == "mine f1"
    finally:
        r.close()


def test_a_pool_whose_image_is_gone_stops_refilling_and_still_serves(snapbox, image):
    snapbox("pool", "create", "--image", str(image), "--size", "2", "p")
    image.rename(image.with_suffix(".gone"))
    first = take(snapbox, "p", "f1")  # a ready clone: served
    wait_for(lambda: pool_status(snapbox, "p")["error"], what="the refiller to fail")
    status = pool_status(snapbox, "p")
    assert "fn.img" in status["error"] and status["ready"] == 1
    listed = snapbox("pool", "list").stdout.splitlines()[1]
    assert listed.split()[:5] == ["p", "2", "1", "1", "0"] and "error:" in listed
    second = take(snapbox, "p", "f2")  # the last ready one: still served
    assert second.ask("echo $V") == "original"
    third = take(snapbox, "p", "f3", check=False)  # none left: a miss that cannot be restored
    assert third.take.returncode == 1
    assert third.err.startswith("snapbox: error: ") and third.err.count("\n") == 1
    assert not (snapbox.root / "f3").exists()
    # The image is back: the pool fills again.
    image.with_suffix(".gone").rename(image)
    wait_for(lambda: pool_status(snapbox, "p")["ready"] == 2 and pool_status(snapbox, "p")["error"] is None,
             what="the pool to refill")
    for t in (first, second, third):
        t.close()


def test_pool_delete_leaves_nothing_behind(snapbox, image):
    snapbox("pool", "create", "--image", str(image), "--size", "3", "p")
    pool_dir = snapbox.root / ".clones" / "p"
    t = take(snapbox, "p", "f1")
    snapbox("pool", "delete", "p")
    assert not pool_dir.exists()

    def left() -> list[str]:
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if str(pool_dir) in line]

    wait_for(lambda: left() == [], timeout=10, what="the pool's processes to end")
    assert t.ask("echo $V") == "original"  # a taken clone is a container of its own
    t.close()
    assert snapbox("pool", "list", "--format", "json").stdout.strip() == "[]"
    p = snapbox("pool", "take", "p", "f2", check=False)
    assert (p.returncode, p.stderr) == (1, 'snapbox: error: pool "p" does not exist\n')


def test_bad_pool_requests_get_one_line_errors(snapbox, image, tmp_path):
    def error(*args: str) -> str:
        p = snapbox(*args, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
        return p.stderr

    assert "does not exist" in error("pool", "create", "--image", str(tmp_path / "none.img"), "p")
    assert "invalid pool name" in error("pool", "create", "--image", str(image), "../x")
    snapbox("pool", "create", "--image", str(image), "--size", "1", "p")
    assert error("pool", "create", "--image", str(image), "p") == 'snapbox: error: pool "p" already exists\n'
    t = take(snapbox, "p", "f1")
    assert error("pool", "take", "p", "f1") == 'snapbox: error: container "f1" already exists\n'
    t.close()


def text_mapping(pid: int) -> tuple[int, int, int]:
    """The inode of the memory file behind the largest executable mapping of the sandbox's
    memory in a stub (the program's text), and its Rss and Pss in kB."""
    best, fields = (0, 0, 0), {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines() + ["end"]:
        head = line.split()
        if "-" in head[0] or line == "end":
            if fields.get("perms") in ("r-xp", "r-xs") and "snapbox-memory" in fields.get("name", ""):
                rss, pss = int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])
                best = max(best, (rss, pss, fields["inode"]), key=lambda m: m[0])
            fields = {"perms": head[1], "inode": int(head[4]), "name": line} if line != "end" else {}
        else:
            fields[head[0].rstrip(":")] = line.split(":", 1)[1]
    return best[2], best[0], best[1]


def test_clones_share_the_programs_file_pages(snapbox, image):
    """The program's pages (a reference to the host file in the image) are read once into
    the pool's base and mapped from there by every clone; new programs a clone runs map
    the file from its own memory, and a clone's checkpoint stands alone."""
    snapbox("pool", "create", "--image", str(image), "--size", "2", "p")
    taken = [take(snapbox, "p", f"f{i}") for i in range(2)]
    try:
        stubs = [int(subprocess.run(["pgrep", "-P", str(snapbox.sandbox_pid(f"f{i}"))], capture_output=True,
                                    text=True).stdout.split()[0]) for i in range(2)]
        texts = [text_mapping(stub) for stub in stubs]
        assert texts[0][0] == texts[1][0], texts  # one file (the base), not a memory file each
        for _, rss, pss in texts:
            assert rss > 256 and pss <= rss * 0.6, texts  # busybox's text, half each
        assert [t.ask("echo $(cat /tmp/f) $(hostname)") for t in taken] == ["original f0", "original f1"]
    finally:
        for t in taken:
            t.close()


def rss_pss(pid: int) -> tuple[int, int]:
    """Rss and Pss of a process, in kB (smaps_rollup)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])


@pytest.mark.parametrize("fixture", ["clonemem", "clonemem-glibc"])
def test_clones_share_the_images_pages_until_they_write_them(snapbox, images, tmp_path, fixture):
    """16 MB of private memory in the image: every clone reads it all, and each of its
    pages is mapped once for all of them; a clone that writes every page gets its own
    copies, its siblings keep sharing. What a process does with its memory (fork, mremap,
    madvise, mprotect, the kernel reading and writing it) works on shared pages."""
    config = json.loads((images / fixture / "config.json").read_text())
    config["root"]["path"] = str(images / fixture / "rootfs")
    bundle = write_bundle(tmp_path, config, name="b")
    path = tmp_path / "mem.img"
    with open(tmp_path / "orig.out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--detach", "--snapshot-to", str(path), "--bundle", str(bundle), "orig"),
                       stdin=subprocess.DEVNULL, stdout=f, stderr=f, check=True, timeout=60)
    wait_for(lambda: "done" in (tmp_path / "orig.out").read_text(), what="the original's checks")
    assert "FAIL" not in (tmp_path / "orig.out").read_text()
    snapbox("delete", "--force", "orig")
    snapbox("pool", "create", "--image", str(path), "--size", "2", "m")
    clones = [take(snapbox, "m", f"m{i}", check=True) for i in range(2)]
    try:
        for c in clones:
            lines = [c.ready]
            while lines[-1] != ["done"]:
                lines.append(c.out.readline().split())
            assert [w[0] for w in lines[:-1]] == ["ok"] * 9, lines
        stubs = [int(subprocess.run(["pgrep", "-P", str(snapbox.sandbox_pid(f"m{i}"))], capture_output=True,
                                    text=True).stdout.split()[0]) for i in range(2)]
        before = [rss_pss(s) for s in stubs]
        assert all(pss < rss - 6 * 1024 for rss, pss in before), before  # half of 16 MB is the other's
        assert clones[0].ask("touch") == "touched ok"
        after = [rss_pss(s) for s in stubs]
        assert after[0][1] > before[0][1] + 6 * 1024, (before, after)  # its own copies now
        assert after[1][1] > before[1][1] + 6 * 1024  # the sibling alone maps the base's pages
        assert clones[1].ask("touch") == "touched ok"
    finally:
        for c in clones:
            c.close()
