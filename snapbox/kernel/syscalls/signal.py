"""Signal syscalls: the handler table, the signal mask, and sending signals."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.signals import SIGKILL, SIGSTOP, NSIG, sigbit
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.task import SigAction

_SIGACTION = struct.Struct("<QQQQ")  # handler, flags, restorer, mask
_SIGSET = struct.Struct("<Q")
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2
UNBLOCKABLE = sigbit(SIGKILL) | sigbit(SIGSTOP)


@syscall(NR.rt_sigaction)
def rt_sigaction(t, sig, act, oact, sigsetsize):
    sig = i32(sig)
    if sigsetsize != 8 or not 1 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    new = None
    if act:
        if sig in (SIGKILL, SIGSTOP):
            raise SyscallError(errno.EINVAL)
        handler, flags, restorer, mask = _SIGACTION.unpack(t.mm.read(act, _SIGACTION.size))
        new = SigAction(handler, flags, restorer, mask & ~UNBLOCKABLE)
    if oact:
        old = t.tg.sigaction(sig)
        t.mm.write(oact, _SIGACTION.pack(old.handler, old.flags, old.restorer, old.mask))
    if new is not None:
        t.tg.sigactions[sig] = new
    return 0


@syscall(NR.rt_sigprocmask)
def rt_sigprocmask(t, how, set_, oset, sigsetsize):
    if sigsetsize != 8:
        raise SyscallError(errno.EINVAL)
    old = t.signal_mask
    if set_:
        (mask,) = _SIGSET.unpack(t.mm.read(set_, 8))
        how = i32(how)
        if how == SIG_BLOCK:
            new = old | mask
        elif how == SIG_UNBLOCK:
            new = old & ~mask
        elif how == SIG_SETMASK:
            new = mask
        else:
            raise SyscallError(errno.EINVAL)
    if oset:
        t.mm.write(oset, _SIGSET.pack(old))
    if set_:
        t.signal_mask = new & ~UNBLOCKABLE
    return 0


@syscall(NR.rt_sigpending)
def rt_sigpending(t, set_, sigsetsize):
    if sigsetsize > 8:
        raise SyscallError(errno.EINVAL)
    t.mm.write(set_, _SIGSET.pack(t.pending | t.tg.pending)[:sigsetsize])
    return 0


@syscall(NR.kill)
def kill(t, pid, sig):
    pid, sig = i32(pid), i32(sig)
    if not 0 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    tg = t.kernel.tasks.pidns.groups.get(pid) if pid > 0 else (t.tg if pid in (0, -1) else None)
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    if sig:
        t.kernel.send_signal(tg, sig)
    return 0


@syscall(NR.tgkill)
def tgkill(t, tgid, tid, sig):
    tgid, tid, sig = i32(tgid), i32(tid), i32(sig)
    if tgid <= 0 or tid <= 0 or not 0 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    target = t.kernel.tasks.pidns.tasks.get(tid)
    if target is None or target.tg.tgid != tgid:
        raise SyscallError(errno.ESRCH)
    if sig:
        t.kernel.send_signal(target.tg, sig)
    return 0


@syscall(NR.tkill)
def tkill(t, tid, sig):
    target = t.kernel.tasks.pidns.tasks.get(i32(tid))
    if target is None:
        raise SyscallError(errno.ESRCH)
    return tgkill(t, target.tg.tgid, i32(tid), sig)
