"""bench/run --smoke: the benchmark suite runs end to end, snapbox and runsc side by side."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_bench_smoke_prints_a_full_table():
    p = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--smoke"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [line.split("|")[1:-1] for line in p.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    table = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}
    number = re.compile(r"^\d+(\.\d+)?$")
    side_by_side = [name for name in table if table[name][1]]
    for name in side_by_side:  # snapbox, runsc and their ratio measured in the same run
        snapbox, runsc, ratio = table[name][:3]
        assert number.match(snapbox) and number.match(runsc) and number.match(ratio), (name, table[name])
    for what in ("hello start→exit", "getppid round trip", "fork+exec+wait", "tiny program: checkpoint",
                 "tiny program: restore→running, warm pool, --lazy", "all read back", "echo server",
                 "TCP ping-pong inside the sandbox", "TCP bulk inside the sandbox", "freeze"):
        assert any(what in name for name in side_by_side), what
