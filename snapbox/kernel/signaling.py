"""Signals: sending, delivery on real x86-64 signal frames, sigreturn, faults, job control.

The methods of Kernel that decide what a signal does to a task: run its handler (a frame
on its stack, its syscall interrupted or restarted), carry out a default action (kill,
stop, continue), or wait while it is blocked.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import struct

from snapbox.kernel.errors import SyscallError, TaskExit
from snapbox.kernel.signals import (
    BUS_ADRERR,
    CLD_CONTINUED,
    CLD_STOPPED,
    CORE_DUMPED,
    EFLAGS_USER,
    REDZONE,
    SA_NOCLDSTOP,
    SA_NODEFER,
    SA_ONSTACK,
    SA_RESETHAND,
    SA_RESTART,
    SEGV_ACCERR,
    SI_USER,
    SIG_DFL,
    SIG_IGN,
    SIGCHLD,
    SIGKILL,
    SS_AUTODISARM,
    SS_DISABLE,
    altstack_from,
    UCONTEXT_SIZE,
    XSTATE_MAX,
    Default,
    build_frame,
    default_action,
    fit_xstate,
    parse_frame,
    sigbit,
    frame_xstate_size,
    siginfo,
    xsave_for_frame,
)
from snapbox.kernel.syscalls import MASK64, NR
from snapbox.kernel.task import Run, SigAction, Task, ThreadGroup, discard_signals, queue_signal, take_signal
from snapbox.platform import ptrace
from snapbox.platform.cpuid import DYNAMIC_XFEATURES, FeatureSet

log = logging.getLogger("snapbox.kernel")

# signal(7): calls that fail with EINTR after a handler even with SA_RESTART.
NEVER_RESTARTED = frozenset({NR.poll, NR.ppoll, NR.select, NR.pselect6, NR.nanosleep, NR.clock_nanosleep,
                             NR.rt_sigsuspend, NR.pause, NR.rt_sigtimedwait, NR.epoll_wait,
                             NR.epoll_pwait, NR.epoll_pwait2, NR.msgsnd, NR.msgrcv, NR.semop, NR.semtimedop})
# signal(7): calls that fail with EINTR after a stop and SIGCONT, even with no handler.
EINTR_WITHOUT_HANDLER = frozenset({NR.epoll_wait, NR.epoll_pwait, NR.epoll_pwait2, NR.semop, NR.semtimedop,
                                   NR.rt_sigtimedwait})
# Calls that return what they did so far, rather than EINTR, when interrupted part way.
PARTIAL_RESULT_SYSCALLS = frozenset({NR.write, NR.writev, NR.sendto, NR.sendmsg, NR.recvmmsg})
SLEEP_SYSCALLS = frozenset({NR.nanosleep, NR.clock_nanosleep})
STOP_SIGNALS = sigbit(signal.SIGSTOP) | sigbit(signal.SIGTSTP) | sigbit(signal.SIGTTIN) | sigbit(signal.SIGTTOU)


RLIMIT_CPU, RLIM_INFINITY = 0, (1 << 64) - 1
NS = 1_000_000_000
CPU_LIMIT_POLL_NS = 5_000_000  # the closest look at a process's CPU time near its limit


# What reaches a PID namespace's init from outside even without a handler (SIGCONT continues
# it whatever its disposition).
OUTSIDE_FORCED = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT})


class Signaling:
    """Kernel methods for signals and job control (mixed into Kernel)."""

    def _fault(self, task: Task, sig: int) -> None:
        """A signal the stub's own execution raised: a fault becomes the application's
        signal (with the host's siginfo: si_code, si_addr); one sent from the host is
        not the application's business."""
        info = ptrace.getsiginfo(task.host_tid)
        code = struct.unpack_from("<i", info, 8)[0]
        if code <= 0:
            self._resume(task)
            return
        if sig == signal.SIGSEGV and code == SEGV_ACCERR:
            addr = struct.unpack_from("<Q", info, 16)[0]
            mm = task.tg.mm
            mm.stub.active = task.host_tid
            try:
                past = mm.file_fault(addr)
            finally:
                mm.stub.active = None
            if past is False:  # a file mapping's page its file has grown to since
                self._resume(task)
                return
            if past:  # past its file's end: SIGBUS, as Linux's filemap_fault says
                sig, info = signal.SIGBUS, siginfo(signal.SIGBUS, BUS_ADRERR, addr=addr)
        self._force_signal(task, sig, info)

    def _force_signal(self, task: Task, sig: int, info: bytes) -> None:
        """force_sig_info(): deliver a synchronous signal to a stopped task; blocked or
        ignored, it kills the process with its default action."""
        bit = sigbit(sig)
        act = task.tg.sigaction(sig)
        if act.handler in (SIG_DFL, SIG_IGN) or task.signal_mask & bit:
            # force_sig_info(): a fault that cannot be handled kills with the default action.
            self.exit_group(task.tg, sig | CORE_DUMPED)
            return
        queue_signal(task, sig, info)
        task.tg.mm.stub.clobbered.add(task.host_tid)
        if not self.paused:
            self._deliver_and_resume(task)

    def _stop_group(self, tg: ThreadGroup, sig: int) -> None:
        """Stop every task of `tg` (the default action of SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU)."""
        if tg.job_stopped or tg.exit_status is not None:
            return
        tg.job_stopped = sig
        tg.job_report = "stopped"
        discard_signals(tg, sigbit(signal.SIGCONT))
        for t in tg.tasks:
            if t.run is Run.RUNNING and not t.interrupt_pending and not self.paused:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
        self._notify_parent(tg, CLD_STOPPED, sig)

    def _continue_group(self, tg: ThreadGroup) -> None:
        """SIGCONT: a stopped process goes on (whatever the signal's disposition)."""
        for t in tg.tasks:
            discard_signals(t, STOP_SIGNALS)
        discard_signals(tg, STOP_SIGNALS)
        if not tg.job_stopped:
            return
        tg.job_stopped = 0
        tg.job_report = "continued"
        self._notify_parent(tg, CLD_CONTINUED, signal.SIGCONT)
        if self.paused:
            return
        for t in tg.tasks:
            if t.run is Run.STOPPED:
                self._deliver_and_resume(t)
            elif t.run is Run.SYSCALL and not t.waiting and not t.queued:
                self._enqueue(t)

    def _notify_parent(self, tg: ThreadGroup, code: int, status: int) -> None:
        parent = tg.parent
        if parent is None or parent.exit_status is not None:
            return
        parent.child_exit.notify()
        if not parent.sigaction(SIGCHLD).flags & SA_NOCLDSTOP:
            self.send_signal(parent, SIGCHLD, siginfo(SIGCHLD, code, tg.tgid, 0, status))

    def arm_itimer(self, tg: ThreadGroup) -> None:
        """(Re)start tg's ITIMER_REAL from tg.itimer_real: SIGALRM at its deadline."""
        tg.itimer_token += 1
        deadline, _ = tg.itimer_real
        if not deadline:
            return
        token = tg.itimer_token

        def fire() -> None:
            if tg.itimer_token != token or tg.exit_status is not None:
                return
            when, interval = tg.itimer_real
            tg.itimer_real = (when + interval, interval) if interval else (0, 0)
            self.send_signal(tg, signal.SIGALRM)
            self.arm_itimer(tg)

        self.call_at(deadline, fire)

    def arm_cpu_limit(self, tg: ThreadGroup) -> None:
        """Watch tg's CPU time against its RLIMIT_CPU (setrlimit(2)): SIGXCPU at the soft
        limit and each second past it, SIGKILL at the hard one. The CPU time cannot grow
        faster than the wall clock times its threads, so the next look is no later than
        the limit could be reached."""
        tg.cpu_limit_token += 1
        soft, hard = tg.rlimits.get(RLIMIT_CPU, (RLIM_INFINITY, RLIM_INFINITY))
        if (soft, hard) == (RLIM_INFINITY, RLIM_INFINITY) or tg.exit_status is not None:
            return
        token = tg.cpu_limit_token

        def check() -> None:
            if tg.cpu_limit_token != token or tg.exit_status is not None:
                return
            used = sum(self.cpu_time_ns(task) for task in tg.tasks)
            if hard != RLIM_INFINITY and used >= hard * NS:
                self.send_signal(tg, signal.SIGKILL)
                return
            xcpu = max(tg.xcpu_at, soft * NS) if soft != RLIM_INFINITY else None
            if xcpu is not None and used >= xcpu:
                tg.xcpu_at = used - (used - soft * NS) % NS + NS  # the next whole second past the soft limit
                self.send_signal(tg, signal.SIGXCPU)
                xcpu = tg.xcpu_at
            target = min(x for x in (xcpu, hard * NS if hard != RLIM_INFINITY else None) if x is not None)
            wait = max(CPU_LIMIT_POLL_NS, (target - used) // max(1, len(tg.tasks)))
            self.call_at(self.timekeeper.monotonic_ns() + wait, check)

        check()

    def arm_cpu_itimers(self, tg: ThreadGroup) -> None:
        """Watch tg's CPU time against its ITIMER_VIRTUAL and ITIMER_PROF (SIGVTALRM and
        SIGPROF, each interval after), as arm_cpu_limit watches RLIMIT_CPU. Both count
        the process's threads' CPU time (the time the sentry spends on its calls is the
        sentry's, not counted as the program's system time)."""
        tg.itimer_cpu_token += 1
        if not tg.itimer_cpu or tg.exit_status is not None:
            return
        token = tg.itimer_cpu_token

        def check() -> None:
            if tg.itimer_cpu_token != token or tg.exit_status is not None:
                return
            used = self.process_cpu_ns(tg)
            for which, (at, interval) in sorted(tg.itimer_cpu.items()):
                if used >= at:
                    if interval:
                        nxt = at + interval
                        if nxt <= used:  # overrun: the next whole interval past now
                            nxt = used + interval - (used - at) % interval
                        tg.itimer_cpu[which] = (nxt, interval)
                    else:
                        del tg.itimer_cpu[which]
                    self.send_signal(tg, signal.SIGVTALRM if which == 1 else signal.SIGPROF)
            if tg.itimer_cpu:
                target = min(at for at, _ in tg.itimer_cpu.values())
                wait = max(CPU_LIMIT_POLL_NS, (target - used) // max(1, len(tg.tasks)))
                self.call_at(self.timekeeper.monotonic_ns() + wait, check)

        check()

    def process_cpu_ns(self, tg: ThreadGroup) -> int:
        return sum(self.cpu_time_ns(task) for task in tg.tasks)

    def signal_from_outside(self, groups: list[ThreadGroup], sig: int) -> None:
        """Send `sig` from outside the sandbox (its runtime, or its terminal) to `groups`:
        as on Linux, a PID namespace's init takes only the signals it handles, and SIGKILL,
        SIGSTOP and SIGCONT."""
        init = self.tasks.init
        for tg in groups:
            if tg is init and sig not in OUTSIDE_FORCED and tg.sigaction(sig).handler == SIG_DFL:
                continue
            self.send_signal(tg, sig)

    def foreground_group(self, sid: int) -> int:
        """The foreground process group of session `sid`'s terminal (TIOCSPGRP sets it;
        until then the session leader's group, whose id is the session's)."""
        return self.foreground.get(sid, sid)

    def signal_foreground(self, sid: int, sig: int) -> None:
        """What a terminal does with ^C, ^\\, ^Z and a resize: `sig` to the processes of its
        session's foreground group."""
        pgrp = self.foreground_group(sid)
        self.signal_from_outside([tg for tg in self.tasks.pidns.groups.values()
                                  if tg.exit_status is None and tg.pgid == pgrp], sig)

    def send_signal(self, tg: ThreadGroup, sig: int, info: bytes | None = None,
                    task: Task | None = None) -> None:
        """Send `sig` to a process, or to one of its threads (`task`). It is delivered when
        a thread that does not block it next returns to user space; a thread that is
        running is interrupted for it, one that is blocked in a syscall is woken."""
        if tg.exit_status is not None:
            return
        if sig == SIGKILL:
            self.exit_group(tg, SIGKILL)
            return
        if sig == signal.SIGCONT:
            self._continue_group(tg)
        elif sigbit(sig) & STOP_SIGNALS:
            discard_signals(tg, sigbit(signal.SIGCONT))
            if sig == signal.SIGSTOP:
                self._stop_group(tg, sig)  # it cannot be caught, blocked or ignored
                return
        bit = sigbit(sig)
        act = tg.sigaction(sig)
        ignored = act.handler == SIG_IGN or (act.handler == SIG_DFL and default_action(sig) is Default.IGNORE)
        targets = [task] if task is not None else list(tg.tasks)
        if ignored and all(not t.signal_mask & bit for t in targets):
            return  # signal(7): an ignored signal is discarded when it is generated
        info = info if info is not None else siginfo(sig, SI_USER)
        holder = task if task is not None else tg
        queue_signal(holder, sig, info)
        tg.signal_wait.notify()
        for t in targets:
            if not t.signal_mask & bit:
                self._kick(t)
                break

    def _deliverable(self, t: Task) -> int:
        if t.vfork_child:
            return 0  # held till its vfork child execs or exits, as Linux holds it
        return (t.pending | t.tg.pending) & ~t.signal_mask

    def _kick(self, t: Task) -> None:
        """Get `t` to a point where it can take a signal."""
        if self.paused:
            return  # unpause() looks at every task
        if t.run is Run.RUNNING:
            if not t.interrupt_pending:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
        elif t.run is Run.SYSCALL and not t.queued and t is not self.current:
            self._interrupt_syscall(t)

    def _interrupt_syscall(self, t: Task) -> None:
        """A signal arrived for a task blocked in a syscall: end or restart the syscall
        (signal(7), "Interruption of system calls"), deliver, and let the task run. A task
        parked in a notification is first interrupted out of it: its stop comes back here."""
        if t.notif:
            if not t.interrupt_pending:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
            return
        regs = t.regs
        nr = regs.orig_rax
        for q in t.waiting:
            if t in q.waiters:
                q.waiters.remove(t)
        t.waiting = ()
        t.timer_token += 1
        sig = _lowest(self._deliverable(t))
        act = t.tg.sigaction(sig)
        progress = t.restart_value(nr)
        handled = act.handler not in (SIG_DFL, SIG_IGN)
        partial = progress[0] if isinstance(progress, tuple) else progress  # (count, deadline) too
        if nr in PARTIAL_RESULT_SYSCALLS and partial:
            regs.rax = partial
        elif not handled and nr not in EINTR_WITHOUT_HANDLER:
            # No handler runs (a stop, SIGCONT): the call goes on where it was, its
            # progress and deadline kept, as Linux restarts it (ERESTARTSYS, ERESTARTNOHAND).
            regs.rip -= 2
            regs.rax = regs.orig_rax
            t.run = Run.STOPPED
            t.tg.mm.stub.clobbered.add(t.host_tid)
            self._deliver_and_resume(t)
            return
        elif handled and act.flags & SA_RESTART and nr not in NEVER_RESTARTED:
            regs.rip -= 2  # make the syscall again once the handler returns
            regs.rax = regs.orig_rax
        else:
            regs.rax = -errno.EINTR & MASK64
            if nr in SLEEP_SYSCALLS and progress is not None:
                self._write_remaining(t, nr, progress)
        t.restart = None
        t.let_go()
        t.run = Run.STOPPED
        t.tg.mm.stub.clobbered.add(t.host_tid)
        self._deliver_and_resume(t)

    def _write_remaining(self, t: Task, nr: int, deadline: int) -> None:
        regs = t.regs
        rem = regs.rsi if nr == NR.nanosleep else regs.r10
        if nr == NR.clock_nanosleep and regs.rsi & 1:  # TIMER_ABSTIME: nothing to report
            return
        if rem:
            left = max(0, deadline - self.timekeeper.monotonic_ns())
            with contextlib.suppress(SyscallError):
                t.mm.write(rem, struct.pack("<qq", *divmod(left, 1_000_000_000)))

    def _deliver_and_resume(self, t: Task) -> None:
        if self._deliver_signals(t) and t.run is not Run.DEAD:
            self._resume(t)

    def _deliver_signals(self, t: Task) -> bool:
        """Act on the lowest deliverable signal: discard it, carry out its default action,
        or set up its handler's frame. Returns False if the task is gone."""
        while True:
            pending = self._deliverable(t)
            if not pending:
                return True
            sig = _lowest(pending)
            bit = sigbit(sig)
            holder = t if t.pending & bit else t.tg
            info = take_signal(holder, sig) or siginfo(sig, SI_USER)
            act = t.tg.sigaction(sig)
            if act.handler == SIG_IGN:
                continue
            if act.handler == SIG_DFL:
                action = default_action(sig)
                if action in (Default.TERM, Default.CORE):
                    self.exit_group(t.tg, sig | (CORE_DUMPED if action is Default.CORE else 0))
                    return False
                if action is Default.STOP:
                    self._stop_group(t.tg, sig)
                    t.tg.mm.stub.clobbered.add(t.host_tid)
                    t.run = Run.STOPPED
                    return True  # _resume keeps it stopped
                continue
            # Then the next deliverable signal, on top: its handler runs first (Linux
            # delivers every signal the handlers' masks leave unblocked before returning).
            if not self._setup_frame(t, sig, act, info):
                return False

    def _setup_frame(self, t: Task, sig: int, act: SigAction, info: bytes) -> bool:
        regs = t.regs
        old_mask = t.saved_mask if t.saved_mask is not None else t.signal_mask
        t.saved_mask = None
        ss_sp, ss_flags, ss_size = t.altstack
        on_altstack = ss_size and ss_sp <= regs.rsp < ss_sp + ss_size
        if act.flags & SA_ONSTACK and not ss_flags & SS_DISABLE and not on_altstack:
            sp = ss_sp + ss_size
        else:
            sp = regs.rsp - REDZONE
        fp_area = xsave_for_frame(ptrace.get_xstate(t.host_tid, XSTATE_MAX), self.frame_xfeatures(t))
        frame, data, fp_addr = build_frame(regs, sp, old_mask, t.altstack, fp_area, info, act.restorer)
        if ss_flags & SS_AUTODISARM:
            t.altstack = (0, SS_DISABLE, 0)  # off while the handler runs; its sigreturn restores it
        try:
            t.mm.write(fp_addr, fp_area)
            t.mm.write(frame, data)
        except SyscallError:
            # No room for the frame (a blown stack): Linux kills with SIGSEGV.
            self.exit_group(t.tg, signal.SIGSEGV | CORE_DUMPED)
            return False
        regs.rip = act.handler
        regs.rsp = frame
        regs.rdi = sig
        regs.rsi = frame + 8 + UCONTEXT_SIZE
        regs.rdx = frame + 8
        regs.rax = 0
        regs.orig_rax = MASK64
        regs.eflags &= ~(0x400 | 0x100 | 0x10000)  # DF, TF, RF
        mask = old_mask | act.mask | (0 if act.flags & SA_NODEFER else sigbit(sig))
        t.signal_mask = mask & ~(sigbit(SIGKILL) | sigbit(signal.SIGSTOP))
        if act.flags & SA_RESETHAND:
            t.tg.sigactions.pop(sig, None)
        t.tg.mm.stub.clobbered.add(t.host_tid)
        return True

    def frame_xfeatures(self, t: Task) -> int:
        """The XSAVE components `t`'s signal frames hold: those enabled for every process,
        and the dynamic ones (AMX tile data) once the process was given them and the
        thread used them (then Linux has enlarged its FP state for good)."""
        granted = t.tg.xfeatures_granted
        if granted and not t.large_fpstate:
            xstate = ptrace.get_xstate(t.host_tid, 576)
            t.large_fpstate = int.from_bytes(xstate[512:520], "little") & granted != 0
        return self.features.xcr0 & ~DYNAMIC_XFEATURES | (granted if t.large_fpstate else 0)

    def sigreturn(self, t: Task) -> int:
        """rt_sigreturn(2): restore the context the handler's frame saved."""
        regs = t.regs
        frame = regs.rsp - 8
        try:
            uc = parse_frame(t.mm.read(frame + 8, UCONTEXT_SIZE))
            fpstate = None
            if uc["fpstate"]:
                size = frame_xstate_size(t.mm.read(uc["fpstate"] + 464, 20))
                fpstate = t.mm.read(uc["fpstate"], size)
        except SyscallError:
            self.exit_group(t.tg, signal.SIGSEGV | CORE_DUMPED)
            raise TaskExit from None
        for name, value in uc["gprs"].items():
            if name == "eflags":
                regs.eflags = (regs.eflags & ~EFLAGS_USER) | (value & EFLAGS_USER)
            else:
                setattr(regs, name, value)
        regs.orig_rax = MASK64
        t.signal_mask = uc["mask"] & ~(sigbit(SIGKILL) | sigbit(signal.SIGSTOP))
        # The alternate stack as the frame saved it (SS_AUTODISARM's comes back), unless the
        # restored stack pointer is on the current one (Linux's restore_altstack).
        ss_sp, _, ss_size = t.altstack
        if not (ss_size and ss_sp <= regs.rsp < ss_sp + ss_size):
            with contextlib.suppress(SyscallError):
                t.altstack = altstack_from(*uc["stack"])
        if fpstate is not None:
            area = bytearray(fit_xstate(fpstate, FeatureSet.host()))
            if len(area) >= 520:  # only components the thread may have (not AMX it never used)
                bv = int.from_bytes(area[512:520], "little") & self.frame_xfeatures(t)
                area[512:520] = bv.to_bytes(8, "little")
            try:
                ptrace.set_xstate(t.host_tid, bytes(area))
            except ptrace.PtraceError:
                # An XSAVE area the CPU refuses (reserved bits set): Linux's SIGSEGV.
                self.exit_group(t.tg, signal.SIGSEGV | CORE_DUMPED)
                raise TaskExit from None
        return regs.rax


def _lowest(mask: int) -> int:
    """The lowest-numbered signal in a sigset."""
    return (mask & -mask).bit_length()
