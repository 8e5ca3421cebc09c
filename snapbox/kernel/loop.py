"""The sentry's event loop: what it waits on, and what wakes it.

One loop per kernel, single-threaded, like asyncio's or trio's core: an epoll over host
fds (the signalfd that reports stub stops, the stubs' seccomp listeners, the control socket,
host files tasks wait on, userfaultfds), a heap of timers in host monotonic time, and the
run queue of tasks whose syscall handlers must (re)run. The epoll is used directly, not
through `selectors`: there is one turn per fast-path syscall, and its ~2 µs of bookkeeping
counted. The kernel decides what a wake-up means; the loop only waits and calls back.
Nothing here is saved: a restored kernel starts with a new loop, and its parked tasks
re-register when their handlers run again.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import heapq
import os
import select
import signal
import termios
import time
from typing import Any, Callable

from snapbox.kernel.waiter import WaitQueue

MAX_WAIT = 86400.0  # the longest one turn waits, in seconds: epoll's timeout is an int of ms
SIGINFO_SIZE = 128  # struct signalfd_siginfo, ssi_signo first
# Read from the signalfd: SIGCHLD (stubs stopping), SIGIO (a lazy restore's image lease breaking).
SENTRY_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGIO})
# Read from it too once the sentry is its console's controlling process (take_terminal): what
# the terminal sends its foreground group (^C, ^\\, ^Z, a resize) and a hang-up.
TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGWINCH, signal.SIGHUP})
_SFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC
_SIGNAL_FD = -1

READ, WRITE = 1, 2  # the events a callback is given (as selectors.EVENT_READ, EVENT_WRITE)


class EventLoop:
    """Waits for the next thing to do and calls its callback."""

    def __init__(self, on_signals: Callable[[list[int]], None]) -> None:
        self.epoll = select.epoll()
        # fd -> [events, callback(events ready)]; a new list for each registration
        self.callbacks: dict[int, list] = {}
        self.timers: list = []  # heap of (host monotonic ns, seq, callback)
        self.timer_seq = 0  # tie-breaker: timers of one deadline fire in the order they were set
        self.runq: collections.deque = collections.deque()  # tasks whose handler must (re)run
        self.host_queues: dict[tuple[int, int], WaitQueue] = {}  # (host fd, event) -> its waiters
        self.watched: dict[int, int] = {}  # host fd -> events armed in the epoll (0: disarmed)
        self.wakeup = _signal_wakeup()  # readable when SENTRY_SIGNALS arrive
        self._register(self.wakeup, READ, lambda mask: on_signals(self._pending_signals()))

    def turn(self, timeout: float | None, busy: bool) -> None:
        """Wait (not at all if `busy`: tasks are runnable) for fds or the next timer, at
        most `timeout` seconds; run the callbacks of what is ready, then of due timers."""
        wait = 0 if busy else (self._next_timeout() if self.timers else None)
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        ready = self.epoll.poll(-1 if wait is None else wait)
        callbacks = self.callbacks
        if len(ready) == 1:
            fd, ev = ready[0]
            entry = callbacks.get(fd)
            if entry is not None:
                entry[1](_events(ev, entry[0]))
        elif ready:
            # A callback earlier in this batch may have let go of an fd (and closed it: a lazy
            # restore's userfaultfd once memory is lost, a host socket): skip those.
            batch = [(callbacks.get(fd), ev) for fd, ev in ready]
            for entry, ev in batch:
                if entry is not None and callbacks.get(entry[2]) is entry:
                    entry[1](_events(ev, entry[0]))
        if self.timers:
            self._fire_timers()

    def _register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self.watched.pop(fd, None)  # a host fd's number, closed since, is this file's now
        self.epoll.register(fd, _epoll_mask(events))
        self.callbacks[fd] = [events, callback, fd]

    def _unregister(self, fd: int) -> None:
        self.callbacks.pop(fd, None)
        self.watched.pop(fd, None)
        with contextlib.suppress(OSError):  # closed already: the epoll let go of it then
            self.epoll.unregister(fd)

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
        """Arm the epoll for exactly the events of `fd` that tasks wait for.

        A host fd is registered once, one-shot: the epoll reports it once and then holds it
        disarmed until it is armed again here, so a wait costs one epoll_ctl (not an add and
        a remove), and an fd nobody waits on any more costs nothing. Level-triggered under
        the one-shot: what is ready when it is armed is reported at once, so no wake-up is
        lost between a task's EAGAIN and its wait. It is armed again even when it looks armed
        already: the fd may have been closed since (the epoll then forgot it) and its number
        given to another host socket."""
        mask = 0
        for ev in (READ, WRITE):
            q = self.host_queues.get((fd, ev))
            if q is not None and q.waiters:
                mask |= ev
        if not mask:
            return
        events = _epoll_mask(mask) | select.EPOLLONESHOT
        entry = self.callbacks.get(fd)
        if fd in self.watched and entry is not None:
            # ENOENT: the fd was closed since (the host forgot it) and its number is another
            # file's now, a host socket of the sandbox closed and made again: registered anew.
            with contextlib.suppress(FileNotFoundError):
                self.epoll.modify(fd, events)
                entry[0] = mask
                self.watched[fd] = mask
                return
        try:
            self.epoll.register(fd, events)
        except FileExistsError:  # registered, and this loop's record of it lost
            self.epoll.modify(fd, events)
        self.callbacks[fd] = [mask, lambda m, fd=fd: self._host_ready(fd, m), fd]
        self.watched[fd] = mask

    def refresh(self, fd: int) -> None:
        """Host fd `fd` is another file now (a host socket made again under its number):
        ask the epoll anew for what tasks wait for on it."""
        if self.watched.pop(fd, None) is not None:
            self._unregister(fd)
        self.watch(fd)

    def _host_ready(self, fd: int, mask: int) -> None:
        self.watched[fd] = 0  # the one-shot disarmed it
        host_queues = self.host_queues
        for ev in (READ, WRITE):
            if mask & ev:
                q = host_queues.get((fd, ev))
                if q is not None:
                    q.notify()
        self.watch(fd)  # tasks still waiting for the other event

    def add_reader(self, fileobj, callback: Callable[[], None]) -> None:
        """Call `callback()` whenever `fileobj` is readable (the control socket, an eventfd,
        a userfaultfd, a seccomp listener)."""
        self._register(_fd(fileobj), READ, lambda mask: callback())

    def remove_reader(self, fileobj) -> None:
        self._unregister(_fd(fileobj))


def _fd(fileobj) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _epoll_mask(events: int) -> int:
    return (select.EPOLLIN if events & READ else 0) | (select.EPOLLOUT if events & WRITE else 0)


def _events(ev: int, wanted: int) -> int:
    """epoll's events as READ/WRITE, as selectors reports them: an error or a hang-up makes
    an fd ready for both (the next read or write finds out)."""
    ready = (WRITE if ev & ~select.EPOLLIN else 0) | (READ if ev & ~select.EPOLLOUT else 0)
    return ready & wanted


def take_terminal() -> bool:
    """Make this process's stdin, a terminal of no session (a console made for the sandbox),
    its controlling terminal, and read the terminal's signals from the signalfd from then
    on (their host default would stop or end the sentry). False where stdin is no such
    terminal (the caller's own, or not a terminal at all)."""
    try:
        if os.getsid(0) != os.getpid() or not os.isatty(0):
            return False
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError:
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINAL_SIGNALS)
    if _signalfd(_SIGNAL_FD, SENTRY_SIGNALS | TERMINAL_SIGNALS) < 0:
        raise OSError(ctypes.get_errno(), "signalfd")
    return True


def _signalfd(fd: int, signals: frozenset) -> int:
    mask = (ctypes.c_uint8 * 128)()
    for sig in signals:
        mask[(sig - 1) // 8] |= 1 << ((sig - 1) % 8)
    return ctypes.CDLL(None, use_errno=True).signalfd(fd, mask, _SFD_NONBLOCK_CLOEXEC)


def _signal_wakeup() -> int:
    """This process's signalfd for SENTRY_SIGNALS: they are blocked in the sentry's thread
    (and so in every thread it starts) and read from this fd instead of being delivered,
    which spares each ptrace stop a signal frame and a Python-level handler. (Stubs block
    every host signal.) One per process, shared by every kernel in it; each new kernel
    blocks them again (a process that hosts a kernel and starts other programs must unblock
    them for them: a blocked mask is inherited)."""
    global _SIGNAL_FD
    signal.pthread_sigmask(signal.SIG_BLOCK, SENTRY_SIGNALS)
    if _SIGNAL_FD < 0:
        fd = _signalfd(-1, SENTRY_SIGNALS)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        _SIGNAL_FD = fd
    return _SIGNAL_FD
