"""A bounded run of bench/escape: random hostile syscalls in sandboxes, then the host checked
(no probe file outside the read-write bind, the rootfs unchanged, no stub left) and the
sentry's log (no crash, no stub killed by its seccomp wall, no handler exception)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_random_hostile_syscalls_reach_nothing_on_the_host():
    p = subprocess.run([sys.executable, str(REPO / "bench" / "escape"), "--runs", "3", "--seed", "1",
                        "--rounds", "8", "--calls", "150"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith("0 findings"), p.stdout
