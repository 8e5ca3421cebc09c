"""POSIX per-process timers (timer_create(2)): a signal at each expiry."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from snapbox.state import nosave, savable

SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_THREAD_ID = 0, 1, 2, 4
SI_TIMER = -2


@savable
@dataclass(eq=False)
class PosixTimer:
    """One timer of a process. Deadlines are on the sandbox monotonic clock."""

    id: int = 0
    clock: int = 1
    notify: int = SIGEV_SIGNAL  # SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID
    signo: int = 14
    value: int = 0  # sigev_value, handed to the handler in si_value
    tid: int = 0  # SIGEV_THREAD_ID: the thread to signal
    deadline: int = 0  # next expiry, 0 when disarmed
    interval: int = 0
    overrun: int = 0  # expiries that found the previous signal still pending
    token: int = nosave(default=0)  # bumped to cancel the armed kernel timer

    def arm(self, kernel, tg) -> None:
        self.token += 1
        if not self.deadline:
            return
        token = self.token

        def fire() -> None:
            if self.token != token or tg.exit_status is not None:
                return
            if self.interval:
                self.deadline += self.interval
                self.arm(kernel, tg)
            else:
                self.deadline = 0
            if self.notify == SIGEV_NONE:
                return
            target = None
            if self.notify == SIGEV_THREAD_ID:
                target = next((t for t in tg.tasks if t.tid == self.tid), None)
            holder = target or tg
            if holder.pending & (1 << (self.signo - 1)):
                self.overrun += 1
                return
            info = struct.pack("<iii4xiiQ", self.signo, 0, SI_TIMER, self.id, self.overrun, self.value)
            self.overrun = 0
            kernel.send_signal(tg, self.signo, info.ljust(128, b"\0"), task=target)

        kernel.call_at(self.deadline, fire)
