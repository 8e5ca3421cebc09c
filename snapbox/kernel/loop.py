"""The sentry's event loop: what it waits on, and what wakes it.

One loop per kernel, single-threaded, like asyncio's or trio's core: a selector over host
fds (the signalfd that reports stub stops, the control socket, host files tasks wait on,
userfaultfds), a heap of timers in host monotonic time, and the run queue of tasks whose
syscall handlers must (re)run. The kernel decides what a wake-up means; the loop only
waits and calls back. Nothing here is saved: a restored kernel starts with a new loop, and
its parked tasks re-register when their handlers run again.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import heapq
import os
import selectors
import signal
import time
from typing import Any, Callable

from snapbox.kernel.waiter import WaitQueue

MAX_WAIT = 86400.0  # the longest one turn waits, in seconds: epoll's timeout is an int of ms
SIGINFO_SIZE = 128  # struct signalfd_siginfo, ssi_signo first
# Read from the signalfd: SIGCHLD (stubs stopping), SIGIO (a lazy restore's image lease breaking).
SENTRY_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGIO})
_SFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC
_SIGNAL_FD = -1

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class EventLoop:
    """Waits for the next thing to do and calls its callback."""

    def __init__(self, on_signals: Callable[[list[int]], None]) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers: list = []  # heap of (host monotonic ns, seq, callback)
        self.timer_seq = 0  # tie-breaker: timers of one deadline fire in the order they were set
        self.runq: collections.deque = collections.deque()  # tasks whose handler must (re)run
        self.host_queues: dict[tuple[int, int], WaitQueue] = {}  # (host fd, event) -> its waiters
        self.watched: dict[int, int] = {}  # host fd -> event mask registered with the selector
        self.wakeup = _signal_wakeup()  # readable when SENTRY_SIGNALS arrive
        self.selector.register(self.wakeup, READ, lambda mask: on_signals(self._pending_signals()))

    def turn(self, timeout: float | None, busy: bool) -> None:
        """Wait (not at all if `busy`: tasks are runnable) for fds or the next timer, at
        most `timeout` seconds; run the callbacks of what is ready, then of due timers."""
        wait = 0 if busy else self._next_timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        keys = self.selector.get_map()
        for key, mask in self.selector.select(wait):
            # A callback earlier in this batch may have let go of this fd (and closed it:
            # a lazy restore's userfaultfd once memory is lost, a host socket): skip it.
            if keys.get(key.fd) is key:
                key.data(mask)
        self._fire_timers()

    def _next_timeout(self) -> float | None:
        if not self.timers:
            return None
        # A deadline years away (a program may ask for one) is waited for a day at a time.
        return min(max(0.0, (self.timers[0][0] - time.monotonic_ns()) / 1e9), MAX_WAIT)

    def _pending_signals(self) -> list[int]:
        try:
            data = os.read(self.wakeup, SIGINFO_SIZE * 16)  # they coalesce: one read is enough
        except BlockingIOError:
            return []
        return [data[i] for i in range(0, len(data), SIGINFO_SIZE)]

    # -- timers --------------------------------------------------------------------------------

    def call_at(self, host_ns: int, callback: Callable[[], Any]) -> None:
        """Call `callback()` from the loop once host monotonic time reaches `host_ns`."""
        self.timer_seq += 1
        heapq.heappush(self.timers, (host_ns, self.timer_seq, callback))

    def _fire_timers(self) -> None:
        now = time.monotonic_ns()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            callback()

    # -- host fds ------------------------------------------------------------------------------

    def host_queue(self, fd: int, event: int) -> WaitQueue:
        """The WaitQueue fired when host fd `fd` is ready for `event` (READ or WRITE)."""
        q = self.host_queues.get((fd, event))
        if q is None:
            q = self.host_queues[(fd, event)] = WaitQueue(host_fd=fd, host_events=event)
        return q

    def watch(self, fd: int) -> None:
        """Ask the selector for exactly the events of `fd` that tasks wait for."""
        mask = 0
        for ev in (READ, WRITE):
            q = self.host_queues.get((fd, ev))
            if q is not None and q.waiters:
                mask |= ev
        old = self.watched.get(fd, 0)
        if mask == old:
            return
        if not mask:
            self.selector.unregister(fd)
            del self.watched[fd]
        elif old:
            try:
                self.selector.modify(fd, mask, lambda m, fd=fd: self._host_ready(fd, m))
            except FileNotFoundError:
                # The fd was closed since (the host forgot it) and its number is another
                # file's now: a host socket of the sandbox, closed and made again. (The
                # selector has let go of its old key.)
                self.selector.register(fd, mask, lambda m, fd=fd: self._host_ready(fd, m))
        else:
            self.selector.register(fd, mask, lambda m, fd=fd: self._host_ready(fd, m))
        if mask:
            self.watched[fd] = mask

    def refresh(self, fd: int) -> None:
        """Host fd `fd` is another file now (a host socket made again under its number):
        ask the selector anew for what tasks wait for on it."""
        if self.watched.pop(fd, 0):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        self.watch(fd)

    def _host_ready(self, fd: int, mask: int) -> None:
        for ev in (READ, WRITE):
            q = self.host_queues.get((fd, ev))
            if q is not None and mask & ev:
                q.notify()
        self.watch(fd)

    def add_reader(self, fileobj, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever `fileobj` is readable (the control socket, an eventfd,
        a userfaultfd)."""
        self.selector.register(fileobj, READ, lambda mask: callback())

    def remove_reader(self, fileobj) -> None:
        self.selector.unregister(fileobj)


def _signal_wakeup() -> int:
    """This process's signalfd for SENTRY_SIGNALS: they are blocked in the sentry's thread
    (and so in every thread it starts) and read from this fd instead of being delivered,
    which spares each ptrace stop a signal frame and a Python-level handler. Stubs unblock
    them before they exec. One per process, shared by every kernel in it; each new kernel
    blocks them again (a process that hosts a kernel and starts other programs must unblock
    them for them: a blocked mask is inherited)."""
    global _SIGNAL_FD
    signal.pthread_sigmask(signal.SIG_BLOCK, SENTRY_SIGNALS)
    if _SIGNAL_FD < 0:
        mask = (ctypes.c_uint8 * 128)()
        for sig in SENTRY_SIGNALS:
            mask[(sig - 1) // 8] |= 1 << ((sig - 1) % 8)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.signalfd(-1, mask, _SFD_NONBLOCK_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        _SIGNAL_FD = fd
    return _SIGNAL_FD
