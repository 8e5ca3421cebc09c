"""Process syscalls: exit, ids, arch_prctl, thread bookkeeping, resource limits."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError, TaskExit
from snapbox.kernel.syscalls import NR, i32, syscall

ARCH_SET_GS = 0x1001
ARCH_SET_FS = 0x1002
ARCH_GET_FS = 0x1003
ARCH_GET_GS = 0x1004
USER_ADDR_LIMIT = 1 << 47

RLIM_INFINITY = (1 << 64) - 1
RLIMIT_STACK = 3
RLIMIT_NOFILE = 7
# Defaults as a fresh Linux login shell sees them.
RLIMIT_DEFAULTS = {
    0: (RLIM_INFINITY, RLIM_INFINITY),  # CPU
    1: (RLIM_INFINITY, RLIM_INFINITY),  # FSIZE
    2: (RLIM_INFINITY, RLIM_INFINITY),  # DATA
    3: (8 << 20, RLIM_INFINITY),  # STACK
    4: (0, RLIM_INFINITY),  # CORE
    5: (RLIM_INFINITY, RLIM_INFINITY),  # RSS
    6: (4096, 4096),  # NPROC
    7: (1024, 1 << 20),  # NOFILE
    8: (8 << 20, 8 << 20),  # MEMLOCK
    9: (RLIM_INFINITY, RLIM_INFINITY),  # AS
    10: (RLIM_INFINITY, RLIM_INFINITY),  # LOCKS
    11: (4096, 4096),  # SIGPENDING
    12: (819200, 819200),  # MSGQUEUE
    13: (0, 0),  # NICE
    14: (0, 0),  # RTPRIO
    15: (RLIM_INFINITY, RLIM_INFINITY),  # RTTIME
}
_RLIMIT = struct.Struct("<QQ")


@syscall(NR.exit)
def exit_(t, code):
    t.kernel.exit_task(t, (code & 0xFF) << 8)
    raise TaskExit


@syscall(NR.exit_group)
def exit_group(t, code):
    t.kernel.exit_group(t.tg, (code & 0xFF) << 8)
    raise TaskExit


@syscall(NR.getpid)
def getpid(t):
    return t.tg.tgid


@syscall(NR.gettid)
def gettid(t):
    return t.tid


@syscall(NR.getppid)
def getppid(t):
    return t.tg.parent.tgid if t.tg.parent is not None else 0


@syscall(NR.getuid, NR.geteuid, NR.getgid, NR.getegid)
def getuid(t):
    return 0


@syscall(NR.set_tid_address)
def set_tid_address(t, addr):
    t.clear_child_tid = addr
    return t.tid


@syscall(NR.set_robust_list)
def set_robust_list(t, head, length):
    if length != 24:  # sizeof(struct robust_list_head)
        raise SyscallError(errno.EINVAL)
    t.robust_list = (head, length)
    return 0


@syscall(NR.arch_prctl)
def arch_prctl(t, code, addr):
    regs = t.regs
    if code in (ARCH_SET_FS, ARCH_SET_GS):
        if addr >= USER_ADDR_LIMIT:
            raise SyscallError(errno.EPERM)
        if code == ARCH_SET_FS:
            regs.fs_base = addr
        else:
            regs.gs_base = addr
        return 0
    if code in (ARCH_GET_FS, ARCH_GET_GS):
        value = regs.fs_base if code == ARCH_GET_FS else regs.gs_base
        t.mm.write(addr, struct.pack("<Q", value))
        return 0
    raise SyscallError(errno.EINVAL)


@syscall(NR.sched_yield)
def sched_yield(t):
    return 0


def _rlimit(t, resource: int) -> tuple[int, int]:
    return t.tg.rlimits.get(resource, RLIMIT_DEFAULTS[resource])


@syscall(NR.prlimit64)
def prlimit64(t, pid, resource, new, old):
    pid, resource = i32(pid), i32(resource)
    if pid not in (0, t.tg.tgid):
        raise SyscallError(errno.ESRCH)
    if resource not in RLIMIT_DEFAULTS:
        raise SyscallError(errno.EINVAL)
    current = _rlimit(t, resource)
    value = None
    if new:
        value = _RLIMIT.unpack(t.mm.read(new, _RLIMIT.size))
        if value[0] > value[1]:
            raise SyscallError(errno.EINVAL)
    if old:
        t.mm.write(old, _RLIMIT.pack(*current))
    if value is not None:
        t.tg.rlimits[resource] = tuple(value)
        if resource == RLIMIT_NOFILE:
            t.fds.limit = min(value[0], 1 << 20)
    return 0


@syscall(NR.getrlimit)
def getrlimit(t, resource, old):
    return prlimit64(t, 0, resource, 0, old)


@syscall(NR.setrlimit)
def setrlimit(t, resource, new):
    return prlimit64(t, 0, resource, new, 0)
