"""Signal-driven I/O: fcntl(F_SETFL, O_ASYNC) and ioctl(FIOASYNC) (fcntl(2)).

While a file has O_ASYNC, each time one of its wait queues is notified (data came, room
was made, the peer went away) and the file is then ready, its owner (F_SETOWN,
F_SETOWN_EX: a thread, a process, or a process group) is sent SIGIO (si_code SI_KERNEL),
or the signal F_SETSIG named, with si_code POLL_IN, POLL_OUT or POLL_HUP, si_band and
si_fd, as Linux's send_sigio does. No owner, no signal; and none to a process the one that
set the owner could not have signalled (its uid or euid neither root's nor the target's
uid or saved uid, as Linux's sigio_perm has it).

A file's queues are the ones poll waits on; those of files whose readiness the host
reports (host sockets, the sandbox's own stdio) are left out, logged once: their host fds
are watched only while a task waits on them.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from snapbox.kernel.fd import O_ASYNC, POLLERR, POLLHUP, POLLIN, POLLOUT, POLLRDNORM, POLLWRBAND, POLLWRNORM
from snapbox.kernel.signals import SIGIO, siginfo
from snapbox.state import savable

log = logging.getLogger("snapbox.kernel")

POLL_IN, POLL_OUT, POLL_HUP = 1, 2, 6  # si_code of a SIGPOLL-style signal
SI_KERNEL = 0x80
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
_logged_host = [False]


@savable
@dataclass(eq=False)
class AsyncIO:
    """One file with O_ASYNC: on the fasync list of each of its wait queues."""

    file: object = None  # the OpenFile
    fd: int = -1  # the fd it was asked for through: si_fd
    kernel: object = None

    def arm(self, t) -> None:
        for q in self.file.queues(t):
            if q.host_fd >= 0:
                if not _logged_host[0]:
                    _logged_host[0] = True
                    log.warning("O_ASYNC on a file the host reports readiness of: no SIGIO from it")
                continue
            if self not in q.fasync:
                q.fasync.append(self)

    def disarm(self, t) -> None:
        for q in self.file.queues(t):
            if self in q.fasync:
                q.fasync.remove(self)

    def fire(self, queue) -> None:
        """`queue` (one of the file's) was notified."""
        f = self.file
        if f.refs <= 0:  # closed: forgotten, from each queue as it next fires
            queue.fasync.remove(self)
            if self in self.kernel.async_io:
                self.kernel.async_io.remove(self)
            return
        if not f.flags & O_ASYNC:
            return
        kind, who = f.fown
        ready = f.ready()
        if ready & POLLIN:
            reason, band = POLL_IN, POLLIN | POLLRDNORM
        elif ready & POLLOUT:
            reason, band = POLL_OUT, POLLOUT | POLLWRNORM | POLLWRBAND
        elif ready & (POLLHUP | POLLERR):
            reason, band = POLL_HUP, POLLHUP | POLLERR
        else:
            return
        sig = f.signum or SIGIO
        info = bytearray(siginfo(sig, reason if f.signum else SI_KERNEL))
        if f.signum:
            info[16:28] = struct.pack("<qi", band, self.fd)  # si_band, si_fd
        pidns = self.kernel.tasks.pidns
        if kind == F_OWNER_TID and who in pidns.tasks:
            task = pidns.tasks[who]
            if _may_signal(f, task.tg):
                self.kernel.send_signal(task.tg, sig, bytes(info), task=task)
        elif kind == F_OWNER_PID and who in pidns.groups:
            if _may_signal(f, pidns.groups[who]):
                self.kernel.send_signal(pidns.groups[who], sig, bytes(info))
        elif kind == F_OWNER_PGRP and who:
            for tg in [g for g in pidns.groups.values() if g.pgid == who and g.exit_status is None]:
                if _may_signal(f, tg):
                    self.kernel.send_signal(tg, sig, bytes(info))


def _may_signal(f, tg) -> bool:
    """sigio_perm: the ids of whoever set the file's owner against the target's."""
    if not f.fown_ids:
        return True
    uid, euid = f.fown_ids
    return euid == 0 or bool({uid, euid} & {tg.creds[0], tg.creds[2]})


def set_async(t, f, fd: int, on: bool) -> None:
    """Turn signal-driven I/O of open file `f` (reached through `fd`) on or off."""
    kernel = t.kernel
    current = next((a for a in kernel.async_io if a.file is f), None)
    if on:
        f.flags |= O_ASYNC
        if current is None:
            current = AsyncIO(file=f, fd=fd, kernel=kernel)
            kernel.async_io.append(current)
        current.fd = fd
        current.arm(t)
    else:
        f.flags &= ~O_ASYNC
        if current is not None:
            current.disarm(t)
            kernel.async_io.remove(current)


def rearm_all(kernel, t) -> None:
    """After a restore (the queues' lists are not saved): every live one on its queues again;
    those whose file is closed are forgotten."""
    kernel.async_io = [a for a in kernel.async_io if a.file.refs > 0 and a.file.flags & O_ASYNC]
    for a in kernel.async_io:
        a.arm(t)
