"""Real programs (a busybox shell script of everything) in a real sandbox, compared with
the same programs run natively, plain and checkpointed at random moments."""

from __future__ import annotations

import json
import random
import time

from tests.conftest import REPO, busybox_bundle, in_sandbox, native, same_output, wait_for

SCRIPTS = REPO / "tests" / "e2e" / "scripts"


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
