"""Progress lines for long checkpoints and restores, shown only on a terminal."""

from __future__ import annotations

import os
import time


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Writes `\\r<what>: <done> of <total> (<rate>/s)` to a terminal fd, at most ten times a
    second, and a final line on close()."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        self._show(done, total, now)

    def _show(self, done: int, total: int, now: float) -> None:
        rate = done / max(now - self.start, 1e-6)
        line = f"\r{self.what}: {human(done)} of {human(total)} memory ({human(rate)}/s)"
        try:
            os.write(self.fd, line.encode() + b"\x1b[K")
            self.shown = True
        except OSError:
            pass

    def close(self) -> None:
        if self.shown:
            try:
                os.write(self.fd, f"\r{self.what}: done in {time.monotonic() - self.start:.2f}s\x1b[K\n".encode())
            except OSError:
                pass
