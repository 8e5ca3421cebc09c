"""WaitQueue: what a parked task waits on. Wake-ups go through the kernel's run queue."""

from __future__ import annotations

from dataclasses import dataclass

from snapbox.state import nosave, savable


@savable
@dataclass(eq=False)
class WaitQueue:
    """Tasks parked until some condition may have changed.

    Waiters are not saved: a parked task is saved rewound to the start of its syscall and
    registers itself again when it re-enters the syscall after restore.
    """

    waiters: list = nosave(list)  # parked Tasks, in arrival order
    # Host fd this queue follows (-1: none): the kernel polls it while tasks wait here.
    host_fd: int = nosave(default=-1)
    host_events: int = nosave(default=0)  # selectors.EVENT_READ / EVENT_WRITE
    seq: int = nosave(default=0)  # notifications so far: an edge-triggered epoll's "something happened"
    fasync: list = nosave(list)  # fasync.AsyncIO of files with O_ASYNC that wait here

    def notify(self) -> None:
        """Wake every waiter; each re-runs its syscall and parks again if still blocked."""
        self.seq += 1
        waiters, self.waiters = self.waiters, []
        for task in waiters:
            task.kernel.wake(task)
        if self.fasync:
            for a in list(self.fasync):
                a.fire(self)
