"""Placement: a sandbox and its stubs share one CPU, and leave it when a host process loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import wait_for


def allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list:"))


def init_stub(snapbox, cid: str) -> int:
    return next(p["host_pid"] for p in json.loads(snapbox("ps", "--format", "full", cid).stdout) if p["pid"] == 1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_sandbox_moves_with_its_stubs_off_a_cpu_a_host_process_loads(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("do", "--detach", "--id", "p1", "/bin/sh", "-c",
                                   "while true; do sleep 0.01; done"),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, check=True, timeout=60)
    sentry = snapbox.sandbox_pid("p1")
    cpu = allowed(sentry)
    assert "," not in cpu and "-" not in cpu  # pinned to one
    stub = init_stub(snapbox, "p1")  # the shell's (its sleeps come and go)
    assert allowed(stub) == cpu
    spin = subprocess.Popen(["taskset", "-c", cpu, sys.executable, "-c",
                             "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass"])
    try:
        moved = wait_for(lambda: allowed(sentry) != cpu and allowed(sentry), timeout=10, what="the sandbox to move")
        assert "," not in moved and "-" not in moved
        assert allowed(stub) == moved
    finally:
        spin.kill()
        spin.wait()
    snapbox("delete", "--force", "p1")
