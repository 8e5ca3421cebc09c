"""The sandbox process's entry point: `python -S -m snapbox.runtime.boot ...`.

Containers start it (see Container._spawn) without the site module, on the import path
of the CLI that starts it, and without the CLI's imports: a sandbox starts, or restores,
that much sooner.
"""

from __future__ import annotations

import argparse
import sys

from snapbox.runtime.sandbox import boot_main


def main() -> int:
    ap = argparse.ArgumentParser(prog="snapbox-sandbox", description="The sandbox process of one container.")
    ap.add_argument("--root", required=True)
    ap.add_argument("--id", dest="cid", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--lazy", action="store_true")
    ap.add_argument("--debug-log", default=None)
    ap.add_argument("--log-format", default="text")
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--network", default=None)
    ap.add_argument("--publish", action="append", default=[])
    ap.add_argument("--memory", default=None)
    ap.add_argument("--memory-id", default=None)
    ap.add_argument("--snapshot-to", default=None)
    ap.add_argument("--base", default=None)
    ap.add_argument("--tied-to", type=int, default=0)
    ap.add_argument("--working-set", default=None)
    a = ap.parse_args()
    return boot_main(a.root, a.cid, a.bundle, a.ready_fd, a.restore, a.debug_log, a.log_format, a.strace, a.lazy,
                     a.network, a.memory, a.memory_id, a.snapshot_to, a.base, a.tied_to,
                     a.working_set, a.publish)


if __name__ == "__main__":
    sys.exit(main())
