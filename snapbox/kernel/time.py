"""The Timekeeper: the sandbox's clocks, virtualised so monotonic time survives a restore."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from snapbox.state import nosave, savable

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME_ID = 2
CLOCK_THREAD_CPUTIME_ID = 3
CLOCK_MONOTONIC_RAW = 4
CLOCK_REALTIME_COARSE = 5
CLOCK_MONOTONIC_COARSE = 6
CLOCK_BOOTTIME = 7
CLOCK_REALTIME_ALARM = 8
CLOCK_BOOTTIME_ALARM = 9
CLOCK_TAI = 11

MONOTONIC_CLOCKS = frozenset(
    {CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_MONOTONIC_COARSE, CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM}
)
REALTIME_CLOCKS = frozenset({CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI})


@savable
@dataclass(eq=False)
class Timekeeper:
    """Sandbox monotonic time is host monotonic time minus `offset`.

    While stopped (during a checkpoint, and from restore until the tasks start again)
    sandbox monotonic time stands still at `frozen_at`; `resume` picks a new offset so it
    continues from there: sleeps and timers keep their remaining time across a restore.
    Realtime follows the host's, plus `realtime_offset` once the sandbox has set its own
    clock (clock_settime, settimeofday: CAP_SYS_TIME within the sandbox, the host's clock
    untouched), kept in images.
    """

    offset: int = 0  # ns; meaningful only on the host that set it, recomputed by resume()
    stopped: bool = False
    frozen_at: int = 0  # sandbox monotonic ns at the moment time was stopped
    realtime_offset: int = 0  # ns the sandbox's realtime clock is ahead of the host's
    timezone: tuple = (0, 0)  # settimeofday's struct timezone: minutes west, DST type
    on_change: Callable[[], None] | None = nosave(default=None)  # called when an offset changed (the vDSO's)

    def monotonic_ns(self) -> int:
        if self.stopped:
            return self.frozen_at
        return time.monotonic_ns() - self.offset

    def realtime_ns(self) -> int:
        return time.time_ns() + self.realtime_offset

    def set_realtime(self, ns: int) -> None:
        self.realtime_offset = ns - time.time_ns()
        self._changed()

    def stop(self) -> None:
        if not self.stopped:
            self.frozen_at = self.monotonic_ns()
            self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            self.offset = time.monotonic_ns() - self.frozen_at
            self.stopped = False
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def to_host(self, sandbox_mono_ns: int) -> int:
        """The host monotonic time (ns) at which the sandbox clock reads `sandbox_mono_ns`."""
        return sandbox_mono_ns + self.offset
