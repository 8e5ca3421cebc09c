"""Signal syscalls: the handler table, the signal mask, sending signals, and signalfd."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.creds import may_signal
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.eventfiles import SignalFd, pidfd_process
from snapbox.kernel.fd import O_CLOEXEC, O_NONBLOCK
from snapbox.kernel.procfs import ProcDir
from snapbox.kernel.signals import (
    NSIG,
    SI_TKILL,
    SI_USER,
    SIGKILL,
    SIG_DFL,
    SIG_IGN,
    SIGSTOP,
    SS_AUTODISARM,
    SS_DISABLE,
    SS_ONSTACK,
    Default,
    altstack_from,
    default_action,
    sigbit,
    siginfo,
)
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.task import SigAction, discard_signals, take_signal
from snapbox.kernel.vfs import DirFile

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
        if new.handler == SIG_IGN or (new.handler == SIG_DFL and default_action(sig) is Default.IGNORE):
            # sigaction(2): a pending signal now ignored is discarded, blocked or not.
            for holder in (t.tg, *t.tg.tasks):
                discard_signals(holder, sigbit(sig))
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
    """kill(2): one process (pid > 0), the caller's process group (0), every process but
    init and the caller (-1), or process group -pid."""
    pid, sig = i32(pid), i32(sig)
    if not 0 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    groups = list(t.kernel.tasks.pidns.groups.values())  # zombies too: a signal to one succeeds, and is lost
    if pid > 0:
        targets = [g for g in groups if g.tgid == pid]
    elif pid == 0:
        targets = [g for g in groups if g.pgid == t.tg.pgid]
    elif pid == -1:
        targets = [g for g in groups if g.tgid != 1 and g is not t.tg]
    else:
        targets = [g for g in groups if g.pgid == -pid]
    if not targets:
        raise SyscallError(errno.ESRCH)
    allowed = [tg for tg in targets if may_signal(t.tg, tg, sig)]
    if not allowed:
        raise SyscallError(errno.EPERM)  # kill(2): none of them may be signalled by the caller
    if sig:
        for tg in allowed:
            if tg.exit_status is None and not _init_ignores(tg, sig):
                t.kernel.send_signal(tg, sig, siginfo(sig, SI_USER, t.tg.tgid))
    return 0


def _init_ignores(tg, sig: int) -> bool:
    """The sandbox's init gets from its own processes only the signals it handles (kill(2):
    "the only signals that can be sent to process ID 1 ... are those for which init has
    explicitly installed signal handlers"): SIGKILL and SIGSTOP never. A signal init blocks
    is kept pending all the same (its handler may change before it is unblocked, and
    sigwait or signalfd may take it), as Linux's sig_ignored does."""
    if tg.tgid != 1:
        return False
    if sig in (SIGKILL, SIGSTOP):
        return True
    if tg.tasks and tg.tasks[0].signal_mask & sigbit(sig):
        return False
    return tg.sigaction(sig).handler == SIG_DFL


@syscall(NR.tgkill)
def tgkill(t, tgid, tid, sig):
    tgid, tid, sig = i32(tgid), i32(tid), i32(sig)
    if tgid <= 0 or tid <= 0 or not 0 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    target = t.kernel.tasks.pidns.tasks.get(tid)
    if target is None or target.tg.tgid != tgid:
        raise SyscallError(errno.ESRCH)
    if not may_signal(t.tg, target.tg, sig):
        raise SyscallError(errno.EPERM)
    if sig and not _init_ignores(target.tg, sig):
        t.kernel.send_signal(target.tg, sig, siginfo(sig, SI_TKILL, t.tg.tgid), task=target)
    return 0


@syscall(NR.tkill)
def tkill(t, tid, sig):
    target = t.kernel.tasks.pidns.tasks.get(i32(tid))
    if target is None:
        raise SyscallError(errno.ESRCH)
    return tgkill(t, target.tg.tgid, i32(tid), sig)


@syscall(NR.rt_sigreturn, stopped=True)
def rt_sigreturn(t):
    return t.kernel.sigreturn(t)


_STACK_T = struct.Struct("<QI4xQ")


@syscall(NR.sigaltstack, stopped=True)
def sigaltstack(t, ss, old_ss):
    sp, flags, size = t.altstack
    on = bool(size) and sp <= t.regs.rsp < sp + size
    if old_ss:
        state = SS_DISABLE if not size else SS_ONSTACK if on else 0
        t.mm.write(old_ss, _STACK_T.pack(sp, state | flags & SS_AUTODISARM, size))
    if ss:
        if on:
            raise SyscallError(errno.EPERM)
        t.altstack = altstack_from(*_STACK_T.unpack(t.mm.read(ss, _STACK_T.size)))
    return 0



@syscall(NR.rt_sigsuspend)
def rt_sigsuspend(t, mask, sigsetsize):
    if sigsetsize != 8:
        raise SyscallError(errno.EINVAL)
    if t.saved_mask is None:
        (new,) = _SIGSET.unpack(t.mm.read(mask, 8))
        t.saved_mask = t.signal_mask
        t.signal_mask = new & ~UNBLOCKABLE
    raise WouldBlock()  # until a signal is delivered: that ends it with EINTR


@syscall(NR.pause)
def pause(t):
    raise WouldBlock()


@syscall(NR.rt_sigtimedwait)
def rt_sigtimedwait(t, set_, info, timeout, sigsetsize):
    from snapbox.kernel.syscalls.time import read_timespec

    if sigsetsize != 8:
        raise SyscallError(errno.EINVAL)
    (wanted,) = _SIGSET.unpack(t.mm.read(set_, 8))
    wanted &= ~UNBLOCKABLE
    for holder in (t, t.tg):
        ready = holder.pending & wanted
        if ready:
            sig = (ready & -ready).bit_length()
            data = take_signal(holder, sig) or siginfo(sig, SI_USER)
            if info:
                t.mm.write(info, data)
            return sig
    deadline = t.restart_value(NR.rt_sigtimedwait)
    if deadline is None and timeout:
        deadline = t.kernel.timekeeper.monotonic_ns() + read_timespec(t, timeout)
        t.set_restart(NR.rt_sigtimedwait, deadline)
    if deadline is not None and t.kernel.timekeeper.monotonic_ns() >= deadline:
        raise SyscallError(errno.EAGAIN)
    raise WouldBlock(t.tg.signal_wait, deadline=deadline)


SFD_CLOEXEC, SFD_NONBLOCK = O_CLOEXEC, O_NONBLOCK


@syscall(NR.signalfd4)
def signalfd4(t, fd, mask, sizemask, flags):
    """A signalfd for the signals of `mask` (fd -1), or a new mask for an existing one."""
    flags = i32(flags)
    if sizemask != 8 or flags & ~(SFD_CLOEXEC | SFD_NONBLOCK):
        raise SyscallError(errno.EINVAL)
    (bits,) = _SIGSET.unpack(t.mm.read(mask, 8))
    bits &= ~UNBLOCKABLE  # signalfd(2): SIGKILL and SIGSTOP are silently left out
    fd = i32(fd)
    if fd != -1:
        f = t.fds.get(fd)
        if not isinstance(f, SignalFd):
            raise SyscallError(errno.EINVAL)
        f.mask = bits
        return fd
    return t.fds.install(SignalFd(flags=flags & SFD_NONBLOCK, mask=bits, owner=t.tg), cloexec=bool(flags & SFD_CLOEXEC))


@syscall(NR.signalfd)
def signalfd(t, fd, mask, sizemask):
    return signalfd4(t, fd, mask, sizemask, 0)


def _queued_info(t, target_tgid: int, sig: int, uinfo: int) -> bytes:
    """The caller's siginfo for rt_sigqueueinfo: only a process signalling itself may claim
    to be the kernel or tkill (si_code >= 0 or SI_TKILL), as Linux checks."""
    if not 0 < sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    raw = bytearray(t.mm.read(uinfo, 128))
    code = struct.unpack_from("<i", raw, 8)[0]
    if (code >= 0 or code == SI_TKILL) and target_tgid != t.tg.tgid:
        raise SyscallError(errno.EPERM)
    struct.pack_into("<i", raw, 0, sig)
    return bytes(raw)


@syscall(NR.rt_sigqueueinfo)
def rt_sigqueueinfo(t, tgid, sig, uinfo):
    tgid, sig = i32(tgid), i32(sig)
    tg = t.kernel.tasks.pidns.groups.get(tgid) if tgid > 0 else None
    if tg is None or tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    info = _queued_info(t, tgid, sig, uinfo)
    if not may_signal(t.tg, tg, sig):
        raise SyscallError(errno.EPERM)
    if not _init_ignores(tg, sig):
        t.kernel.send_signal(tg, sig, info)
    return 0


@syscall(NR.pidfd_send_signal)
def pidfd_send_signal(t, pidfd, sig, uinfo, flags):
    """pidfd_send_signal(2): kill(2) of the process a pidfd holds, or whose /proc/PID
    directory the fd is open on (its own siginfo, if given, checked as rt_sigqueueinfo's,
    and naming this signal)."""
    sig = i32(sig)
    if flags or not 0 <= sig <= NSIG:
        raise SyscallError(errno.EINVAL)
    f = t.fds.get(i32(pidfd))
    if isinstance(f, DirFile) and isinstance(f.node, ProcDir) and f.node.kind == "pid":
        tg = t.kernel.tasks.pidns.groups.get(f.node.pid)
        if tg is None or tg.exit_status is not None:
            raise SyscallError(errno.ESRCH)
    else:
        tg = pidfd_process(t, i32(pidfd))
    if uinfo:
        (signo,) = struct.unpack("<i", t.mm.read(uinfo, 4))
        if signo != sig:
            raise SyscallError(errno.EINVAL)
        info = _queued_info(t, tg.tgid, sig, uinfo)
    else:
        info = siginfo(sig, SI_USER, t.tg.tgid)
    if not may_signal(t.tg, tg, sig):
        raise SyscallError(errno.EPERM)
    if sig and not _init_ignores(tg, sig):
        t.kernel.send_signal(tg, sig, info)
    return 0


@syscall(NR.rt_tgsigqueueinfo)
def rt_tgsigqueueinfo(t, tgid, tid, sig, uinfo):
    tgid, tid, sig = i32(tgid), i32(tid), i32(sig)
    target = t.kernel.tasks.pidns.tasks.get(tid)
    if tgid <= 0 or tid <= 0:
        raise SyscallError(errno.EINVAL)
    if target is None or target.tg.tgid != tgid:
        raise SyscallError(errno.ESRCH)
    info = _queued_info(t, tgid, sig, uinfo)
    if not may_signal(t.tg, target.tg, sig):
        raise SyscallError(errno.EPERM)
    if not _init_ignores(target.tg, sig):
        t.kernel.send_signal(target.tg, sig, info, task=target)
    return 0
