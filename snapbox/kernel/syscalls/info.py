"""System information syscalls: uname, getrandom."""

from __future__ import annotations

import errno
import os

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.syscalls import NR, syscall

# What uname(2) reports: a Linux the sandbox's programs can rely on, not the host's build.
UTS_RELEASE = "6.1.0"
UTS_VERSION = "#1 SMP snapbox"

GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE = 1, 2, 4


@syscall(NR.uname)
def uname(t, buf):
    fields = ("Linux", t.kernel.hostname, UTS_RELEASE, UTS_VERSION, "x86_64", "(none)")
    t.mm.write(buf, b"".join(f.encode()[:64].ljust(65, b"\0") for f in fields))
    return 0


@syscall(NR.getrandom)
def getrandom(t, buf, count, flags):
    if flags & ~(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE):
        raise SyscallError(errno.EINVAL)
    count = min(count, 1 << 25)
    t.mm.write(buf, os.urandom(count))
    return count
