"""eventfd(2): a counter as a file."""

from __future__ import annotations

import errno

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.eventfiles import (
    EFD_SEMAPHORE,
    EventFd,
)
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.syscalls import NR, syscall

TFD_TIMER_ABSTIME = 1


@syscall(NR.eventfd2)
def eventfd2(t, initval, flags):
    if flags & ~(O_CLOEXEC | O_NONBLOCK | EFD_SEMAPHORE):
        raise SyscallError(errno.EINVAL)
    f = EventFd(flags=2 | (flags & O_NONBLOCK), counter=initval & 0xFFFFFFFF,
                semaphore=bool(flags & EFD_SEMAPHORE))
    return t.fds.install(f, cloexec=bool(flags & O_CLOEXEC))


@syscall(NR.eventfd)
def eventfd(t, initval):
    return eventfd2(t, initval, 0)
