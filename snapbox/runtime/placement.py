"""Where a sandbox runs: one CPU for the sentry and its stubs, moved off a CPU others load.

A syscall is a wake-up of the sentry by a stub thread and one back. On one CPU that is a
direct switch; across CPUs an idle CPU has to be woken, which costs tens of microseconds on
these VMs. So the sandbox process pins itself, and with it every stub it starts (they
inherit the mask), to the CPU it starts on. Pinned, it shares that CPU with whatever else
the host runs there. Every PERIOD the sentry compares how busy its CPU was (/proc/stat)
with what it and its stub threads ran there (their schedstat): if others took more than
MOVE_AT of it, and another CPU it may use was idle at least IDLE_ENOUGH of the time, it
moves itself and every stub thread there. The first look comes sooner (FIRST_LOOK): a
sandbox that started on a busy CPU would otherwise share it for a whole PERIOD, longer
than many programs run (`python3 -c pass` takes ~200 ms here).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

log = logging.getLogger("snapbox.placement")

PERIOD = 0.2  # seconds between looks
FIRST_LOOK = 0.05  # seconds from the start to the first (5 ticks of /proc/stat at 100 Hz)
MOVE_AT = 0.3  # move once others took this much of the sandbox's CPU
IDLE_ENOUGH = 0.5  # to a CPU idle at least this much of the time


class Placement:
    """The CPU of one sandbox process (the sentry's thread and its stubs)."""

    def __init__(self) -> None:
        self.given = os.sched_getaffinity(0)  # what the sandbox may use, before it pins itself
        cpu = ctypes.CDLL(None).sched_getcpu()
        self.cpu = cpu if cpu in self.given else min(self.given)
        os.sched_setaffinity(0, {self.cpu})
        self.moves = 0
        self._last = self._sample(())

    def watch(self, call_at: Callable[[int, Callable[[], None]], None], threads: Callable[[], Iterable[int]]) -> None:
        """Look after FIRST_LOOK, then every PERIOD, from the sentry's loop (`call_at(host
        monotonic ns, fn)`); `threads()` gives the host tids of the stub threads to move along."""

        def look() -> None:
            self.look(threads)
            call_at(time.monotonic_ns() + int(PERIOD * 1e9), look)

        call_at(time.monotonic_ns() + int(FIRST_LOOK * 1e9), look)

    def look(self, threads: Callable[[], Iterable[int]]) -> None:
        tids = list(threads())
        then, self._last = self._last, self._sample(tids)
        now, ran, idle = self._last
        elapsed = now - then[0]
        if elapsed <= 0 or len(self.given) < 2:
            return
        # A thread that started since the last look ran all its time in this period.
        ours = sum(ns - then[1].get(tid, 0) for tid, ns in ran.items()) / elapsed
        idle_frac = {cpu: (idle.get(cpu, 0) - then[2].get(cpu, 0)) * 1e9 / _TICKS / elapsed for cpu in self.given}
        others = 1 - idle_frac.get(self.cpu, 1) - ours
        if others < MOVE_AT:
            return
        best = max((cpu for cpu in self.given if cpu != self.cpu), key=idle_frac.__getitem__)
        if idle_frac[best] < IDLE_ENOUGH:
            return  # every CPU is busy: moving would only trade one wait for another
        log.info("moving from CPU %d (others used %.0f%% of it) to CPU %d (%.0f%% idle)",
                 self.cpu, others * 100, best, idle_frac[best] * 100)
        self.cpu = best
        self.moves += 1
        for tid in (*tids, 0):  # the sentry last: once it shows the new CPU, the move is whole
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(tid, {best})

    @contextlib.contextmanager
    def on_all_cpus(self) -> Iterator[None]:
        """Unpin the sentry's thread for a while: the threads it starts meanwhile (an image's
        compressors and its writer) run on every CPU the sandbox was given, not all on one."""
        if self.given == {self.cpu}:
            yield
            return
        os.sched_setaffinity(0, self.given)
        try:
            yield
        finally:
            os.sched_setaffinity(0, {self.cpu})

    @staticmethod
    def _sample(tids: Iterable[int]) -> tuple[int, dict[int, int], dict[int, int]]:
        """(now, ns run by the sentry's thread and by each of `tids`, idle ticks of each CPU)."""
        now = time.monotonic_ns()
        ran = {}
        for tid in (os.getpid(), *tids):
            try:
                with open(f"/proc/{tid}/schedstat") as f:
                    ran[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # gone since
        idle = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    fields = line.split()
                    idle[int(fields[0][3:])] = int(fields[4]) + int(fields[5])  # idle + iowait
        return now, ran, idle


_TICKS = os.sysconf("SC_CLK_TCK")
