"""The Kernel: every kernel object of one sandbox, and the core that runs its tasks.

Here: the Kernel's fields, and step/dispatch/park/wake/pause. Its other methods live by
concern, as gVisor spreads a Task over task_*.go: lifecycle.py (boot, spawn, fork, clone,
execve, exit, reap), signaling.py (signal delivery, frames, faults, job control) and
checkpoint.py (save, restore, lazy loading); its event loop is loop.py.

The loop is single-threaded. It waits on ptrace stops (SIGCHLD through a signalfd, then
waitpid until empty), on host fds, and on the next timer deadline; all kernel state is
changed only from it, so nothing needs a lock. Pausing means: interrupt every running
task and resume none until unpause.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import signal
import struct
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from snapbox.kernel.checkpoint import Checkpointing
from snapbox.kernel.errors import SyscallError, TaskExit, WouldBlock
from snapbox.kernel.eventfiles import TimerFd
from snapbox.kernel.fasync import rearm_all
from snapbox.kernel.filepages import FileCache
from snapbox.kernel.host import HostFile
from snapbox.kernel.inet import EPHEMERAL
from snapbox.kernel.ipc import IpcNamespace, address_spaces
from snapbox.kernel.keys import Keys
from snapbox.kernel.lifecycle import Lifecycle, host_cpu_ns
from snapbox.kernel.loop import TERMINAL_SIGNALS, EventLoop
from snapbox.kernel.signaling import Signaling
from snapbox.kernel import seccomp
from snapbox.kernel.signals import (
    CORE_DUMPED,
    SI_KERNEL,
    SIG_DFL,
    SIG_IGN,
    SIGKILL,
    SIGSYS,
    sigbit,
    siginfo,
)
from snapbox.kernel.syscalls import MASK64, NAMES, NR, STOPPED, TABLE, i32, load_all
from snapbox.kernel.task import (
    Run,
    Task,
    TaskSet,
    queue_signal,
)
from snapbox.kernel.time import Timekeeper
from snapbox.kernel.vdso import Vdso
from snapbox.kernel.waiter import WaitQueue
from snapbox.kernel.vfs import Filesystem
from snapbox.memfile import MemoryFile
from snapbox.memfile.lazy import MemoryLost
from snapbox.platform import ptrace
from snapbox.platform.cpuid import FeatureSet
from snapbox.platform.notify import Listener
from snapbox.platform.stub import VSYSCALL_PAGE, Stub
from snapbox.state import (
    nosave,
    savable,
)

log = logging.getLogger("snapbox.kernel")

WALL = 0x40000000
# Host faults that become the application's own signals.
FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP})
# The calls behind the vsyscall page's entry points, which the host kernel emulates.
VSYSCALLS = frozenset({NR.gettimeofday, NR.time, NR.getcpu})
NR_COMPAT_INT80 = -0x80  # where enosys_logged remembers that int 0x80 was logged
# What SECCOMP_MODE_STRICT leaves a thread.
STRICT_SYSCALLS = frozenset({NR.read, NR.write, NR.exit, NR.rt_sigreturn})
SYS_SECCOMP = 1  # si_code of a SIGSYS from a filter's SECCOMP_RET_TRAP
# rax of a thread taken out of the wait for a notification's answer: the syscall did not run.
ERESTARTSYS = -512 & MASK64

load_all()


# Calls after which an orphaned file (Filesystem.orphans) may have lost its last mapping or
# its last holder: the unmapping ones, and those that close files or remove names.
UNMAPPING = frozenset({NR.munmap, NR.mremap, NR.mmap, NR.shmdt, NR.execve, NR.execveat, NR.exit, NR.exit_group,
                       NR.close, NR.close_range, NR.dup2, NR.dup3, NR.unlink, NR.unlinkat})


@savable
@dataclass(eq=False)
class Kernel(Lifecycle, Signaling, Checkpointing):
    """One sandbox's kernel: tasks, memory, files, time, and the loop that drives them.

    A syscall reaches _dispatch, as a seccomp notification (the fast path: its number and
    arguments, answered through the stub's listener) or as a ptrace stop (the syscalls in
    syscalls.STOPPED, which need the thread's registers), and the handler from
    syscalls.TABLE runs: it returns a result, or raises WouldBlock before any side effect
    and the task is parked (_park) until a WaitQueue or its deadline wakes it (wake), when
    the handler runs again from the start. A task parked in a notification that must stop
    (a signal, a pause) is interrupted out of it, into a ptrace stop at the same syscall."""

    features: FeatureSet
    memfile: MemoryFile
    fs: Filesystem
    timekeeper: Timekeeper = field(default_factory=Timekeeper)
    tasks: TaskSet = field(default_factory=TaskSet)
    hostname: str = "snapbox"
    domainname: str = "(none)"  # the NIS domain name (setdomainname, uname)
    renames: list = field(default_factory=lambda: [0, 0])  # changes of each name (namespaces.rename)
    renamed: WaitQueue = field(default_factory=WaitQueue)  # pollers of /proc/sys/kernel/{hostname,domainname}
    exit_status: int | None = None  # wait(2) status of init once it has exited
    pipe_ino: int = 0x10000  # inode numbers handed to pipes
    foreground: dict = field(default_factory=dict)  # session id -> its terminal's foreground group
    file_cache: FileCache | None = None  # host files' pages shared by read-only mappings
    unix_names: dict = field(default_factory=dict)  # abstract AF_UNIX names (NUL first) -> UnixSocket
    inet_ports: dict = field(default_factory=dict)  # TCP port -> the InetSockets bound to it (inet.Ports)
    udp_ports: dict = field(default_factory=dict)  # UDP port -> the UdpSockets bound to it
    local_ports: tuple = EPHEMERAL  # net.ipv4.ip_local_port_range: where a port 0 bind takes one from
    udplite_ports: dict = field(default_factory=dict)  # the same for UDP-Lite, whose ports are apart
    netlink_ports: dict = field(default_factory=dict)  # netlink port id -> the NetlinkSocket bound to it
    network: dict = field(default_factory=dict)  # runtime.network.Network.as_dict(): mode, address, ...
    published: list = field(default_factory=list)  # inet.Publication: the ports published on the host
    ns_inum: int = 0xF0000100  # the last inode number given to a namespace (snapbox.kernel.namespaces)
    restores: int = 0  # times this sandbox was restored from an image (/proc/snapbox/restored)
    switches: int = 0  # times a task has blocked, giving up its CPU (/proc/stat's ctxt)
    snmp: dict = field(default_factory=dict)  # "Tcp.ActiveOpens"... -> count (/proc/net/snmp, inet.mib)
    net_sysctls: dict = field(default_factory=dict)  # net.* settings written inside (/proc/sys/net)
    keys: Keys = field(default_factory=Keys)  # keyrings (snapbox.kernel.keys)
    ipc: IpcNamespace = field(default_factory=IpcNamespace)  # System V message queues, semaphores, shm
    ptys: dict = field(default_factory=dict)  # pseudo-terminal index -> tty.Pty
    inotify_cookie: int = 0  # the last cookie tying a rename's two inotify events
    vdso: Vdso | None = None  # the vvar page and the vDSO every process gets (None: no vDSO)
    async_io: list = field(default_factory=list)  # fasync.AsyncIO: the files with O_ASYNC

    # Host facts, rebuilt empty on restore.
    loop: EventLoop = nosave(default=None)  # what the sentry waits on; see kernel/loop.py
    by_host: dict = nosave(dict)  # host tid -> Task
    paused: bool = nosave(default=False)
    enosys_logged: set = nosave(set)  # syscall numbers already logged as unimplemented
    strace: Callable | None = nosave(default=None)  # called (task, nr, raw args, result or None) if set
    wakeup: int = nosave(default=-1)  # signalfd that turns readable when SIGCHLD (or SIGIO) arrives
    current: Task | None = nosave(default=None)  # the task whose syscall handler is running
    # A lazy restore: each address space's userfaultfd, which catches first touches of memory
    # still in the image, and an eventfd that turns readable once it is all in.
    faults: dict = nosave(dict)
    loaded: int = nosave(default=-1)
    started: bool = nosave(default=False)  # start() has run: the sandbox was handed to its user
    # A working set being recorded (checkpoint.WorkingSet): (path, image id), written and
    # cleared the first time every task waits in a syscall after one has returned: a
    # server restored waiting for a request records once it has served one.
    recording: tuple | None = nosave(default=None)
    recorded_work: bool = nosave(default=False)  # a syscall has returned since the restore
    # Memory a lazy restore found unreadable before start(): the sandbox ends once started,
    # so that `restore` behaves the same whenever the damage is found.
    memory_error: MemoryLost | None = nosave(default=None)
    on_exit: Callable | None = nosave(default=None)  # called (ThreadGroup) when a process exits
    futexes: dict = nosave(dict)  # MemoryFile offset of a futex word -> WaitQueue of its waiters
    host_sockets: weakref.WeakSet = nosave(weakref.WeakSet)  # live HostSockets (snapbox.kernel.hostnet)
    listeners: dict = nosave(dict)  # listener fd -> Listener of stubs' notifications
    # Checkpoints the sandbox for a task that wrote /proc/snapbox/checkpoint (None: it may
    # not ask; see procfs), and the queue such tasks wait on until it is done.
    snapshot: Callable | None = nosave(default=None)
    snapshot_done: WaitQueue = nosave(WaitQueue)
    # Makes the sandbox's network namespace (returning what `network` becomes): run before
    # the first host socket is made, so that a sandbox that never needs one never pays for it.
    make_network: Callable[[], dict] | None = nosave(default=None)

    def __post_init__(self) -> None:
        if self.file_cache is None:
            self.file_cache = FileCache(self.memfile, self.fs)
        self.loop = EventLoop(self._on_signals)
        if self.vdso is not None:
            self.timekeeper.on_change = lambda: self.vdso.publish(self.memfile, self.timekeeper)

    def after_load(self, ctx) -> None:
        self.__post_init__()


    def network_report(self, network: dict | None = None) -> dict:
        """The network (`network`, else this kernel's) as `snapbox state` and `inspect`
        show it: mode, address..., and the published ports (127.0.0.1:8080->80/tcp)."""
        network = self.network if network is None else network
        if not self.published:
            return dict(network)
        return {**network, "published": [p.text() for p in self.published]}

    def ensure_network(self) -> None:
        """The sandbox's network namespace, made (once) before its first host socket."""
        if self.make_network is None:
            return
        make, self.make_network = self.make_network, None
        try:
            self.network = make()
        except Exception as e:  # pyroute2's errors too: the program sees the network down, the log says why
            log.error("the sandbox's network could not be made: %s", e)
            self.network = {"mode": "none", "error": str(e)}
            raise SyscallError(errno.ENETDOWN, "the sandbox's network could not be made") from None

    def spawn_stub(self) -> Stub:
        """A new stub, its application's syscalls sent to this kernel."""
        # A clone's madvise may have to map its own memory over the base's (mm.discard),
        # which takes a stopped thread: its stubs stop for it under ptrace.
        traced = STOPPED | {NR.madvise} if self.memfile.base >= 0 else STOPPED
        stub = Stub.spawn(self.memfile.fd, traced, base=self.memfile.base)
        listener = stub.listener
        self.listeners[listener.fd] = listener
        self.loop.add_reader(listener.fd, lambda: self._on_notification(listener))
        return stub

    def close_listeners(self) -> None:
        for listener in self.listeners.values():
            self.loop.remove_reader(listener.fd)
            listener.close()
        self.listeners.clear()

    def processes(self) -> list[dict]:
        """The live processes, for `snapbox ps`."""
        out = []
        for tgid, tg in sorted(self.tasks.pidns.groups.items()):
            if tg.exit_status is not None or not tg.tasks:
                continue
            runs = {t.run for t in tg.tasks}
            state = "T" if tg.job_stopped else ("R" if Run.RUNNING in runs else "S")
            out.append({"pid": tgid, "ppid": tg.parent.tgid if tg.parent is not None else 0,
                        "host_pid": tg.mm.stub.pid if tg.mm.stub is not None else 0,
                        "uid": tg.creds[1], "state": state, "threads": len(tg.tasks), "comm": tg.tasks[0].comm,
                        "cmd": " ".join(a.decode(errors="replace") for a in tg.argv)})
        return out


    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start time, the interval timers, and every stopped task."""
        self.timekeeper.resume()
        live = self.tasks.live_tasks()
        if self.async_io and live:
            rearm_all(self, live[0])
        for tg in self.tasks.pidns.groups.values():
            if tg.exit_status is None and tg.itimer_real[0]:
                self.arm_itimer(tg)
            self.arm_cpu_limit(tg)
            self.arm_cpu_itimers(tg)
            for f in tg.fds.files.values():
                if isinstance(f, TimerFd) and f.deadline:
                    f.arm(self)
            for timer in tg.posix_timers.values():
                if timer.deadline and tg.exit_status is None:
                    timer.arm(self, tg)
        self.paused = True
        self.started = True
        if self.memory_error is not None:
            self._memory_lost(self.memory_error)
            return
        self.unpause()

    def rebind_stdio(self) -> None:
        """The sandbox process's stdio has changed: the program's own stdio files follow
        (not those an `exec` passed)."""
        seen = set()
        for tg in self.tasks.pidns.groups.values():
            for f in tg.fds.files.values():
                if isinstance(f, HostFile) and not f.passed and id(f) not in seen:
                    seen.add(id(f))
                    f.rebind()

    def run(self) -> None:
        """Run until init exits."""
        while self.exit_status is None:
            self.step()

    def step(self, timeout: float | None = None) -> None:
        """One turn of the loop: run woken syscalls, wait for events, dispatch them."""
        self._run_queue()
        if self.recording is not None and self.recorded_work and not self.paused and self._idle():
            self.record_working_set()
        self.loop.turn(timeout, busy=bool(self.loop.runq) and not self.paused)
        self._run_queue()

    def _idle(self) -> bool:
        """Whether every task waits in a syscall, none about to run."""
        return all(t.run is Run.SYSCALL and not t.queued for t in self.tasks.live_tasks())

    def _on_signals(self, signals: list[int]) -> None:
        if signal.SIGIO in signals:
            self._image_changing()
        init = self.tasks.init
        for sig in signals:
            if sig in TERMINAL_SIGNALS and init is not None:  # from the console (loop.take_terminal)
                self.signal_foreground(init.sid, sig)
                if sig == signal.SIGHUP and self.foreground_group(init.sid) != init.pgid:
                    self.signal_from_outside([init], sig)  # a hang-up reaches the session's leader too
        self.collect_stops()

    def collect_stops(self) -> None:
        """Collect every pending ptrace stop and exit of our stubs."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._on_status(pid, status)

    def _on_status(self, pid: int, status: int) -> None:
        task = self.by_host.get(pid)
        if task is None:
            return  # a stub we killed, now reaped
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            log.warning("stub %d of pid %d died underneath the sentry", pid, task.tg.tgid)
            self.by_host.pop(pid, None)
            task.host_tid = -1
            self.exit_group(task.tg, SIGKILL)
            return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        if event == ptrace.PTRACE_EVENT_SECCOMP:
            ptrace.getregs(pid, task.regs)
            if task.regs.rip & ~0xFFF == VSYSCALL_PAGE:
                self._vsyscall(task)
                return
            task.run = Run.SYSCALL
            if self.paused:
                self._enqueue(task)
            else:
                self._dispatch(task)
        elif event == ptrace.PTRACE_EVENT_STOP:
            task.interrupt_pending = False
            if task.notif:
                self._left_notification(task)
            elif task.run is Run.RUNNING:
                ptrace.getregs(pid, task.regs)
                self._rewind_withdrawn(task)
                task.run = Run.STOPPED
                if not self.paused:
                    self._deliver_and_resume(task)
            elif task.run is Run.STOPPED and not self.paused:
                self._deliver_and_resume(task)
        elif event == 0 and sig in FAULT_SIGNALS:
            ptrace.getregs(pid, task.regs)
            task.run = Run.STOPPED
            self._fault(task, sig)
        else:
            # A signal from the host (or an event we did not ask for): not the
            # application's business. Suppress it and carry on.
            ptrace.cont(pid, 0)

    def _on_notification(self, listener: Listener) -> None:
        """A syscall on the fast path: run its handler now, unless its thread is on its way
        to a ptrace stop (an interrupt takes it out of the wait: the stop says what next)."""
        note = listener.receive()
        if note is None:
            if listener.hung_up():  # every stub of that filter is gone
                self.loop.remove_reader(listener.fd)
                self.listeners.pop(listener.fd, None)
                listener.close()
            return
        nid, tid, nr, _, ip, args = note
        task = self.by_host.get(tid)
        if task is None or task.run is not Run.RUNNING or task.interrupt_pending:
            return
        task.notif = nid
        task.call = (nr, args, ip)
        task.run = Run.SYSCALL
        self._dispatch(task)

    def _left_notification(self, task: Task) -> None:
        """A task parked in a notification was interrupted out of it: it is stopped at the
        syscall's entry now (rax -ERESTARTSYS, the notification withdrawn), a ptrace-parked
        syscall like any other from here on."""
        regs = task.regs
        ptrace.getregs(task.host_tid, regs)
        task.notif = 0
        if task.result is not None:  # its handler is done: return the result, then the signal
            regs.rax = task.result & MASK64
            regs.orig_rax = MASK64
            task.result = None
            task.run = Run.STOPPED
            task.tg.mm.stub.clobbered.add(task.host_tid)
            if not self.paused:
                self._deliver_and_resume(task)
        elif not self.paused and self._deliverable(task):
            self._interrupt_syscall(task)
        elif not task.waiting and not task.queued:
            self._enqueue(task)  # it was to run again (woken, or its handler needs it stopped)

    def _rewind_withdrawn(self, task: Task) -> None:
        """A running task stopped in the wait for a notification no handler had run for yet:
        put it back before the syscall instruction (it makes the call again when it goes on),
        with registers exact for a checkpoint."""
        regs = task.regs
        if regs.orig_rax != MASK64 and regs.rax == ERESTARTSYS:
            regs.rip -= 2
            regs.rax = regs.orig_rax
            regs.orig_rax = MASK64
            task.tg.mm.stub.clobbered.add(task.host_tid)

    def _vsyscall(self, task: Task) -> None:
        """A call into the vsyscall page (the stub's seccomp filter traces them): answer it
        here, from the sandbox's clock, as the host kernel would have without us. Skipping
        the call (orig_rax -1) makes the host kernel finish the emulation with its `ret`."""
        regs = task.regs
        nr = regs.orig_rax
        entry = TABLE.get(nr) if nr in VSYSCALLS else None
        try:
            result = entry[0](task, *(regs.rdi, regs.rsi, regs.rdx)[:entry[1]]) if entry else -errno.ENOSYS
        except SyscallError as e:
            result = -e.errno
        if self.strace is not None:
            self.strace(task, nr, (regs.rdi, regs.rsi, regs.rdx, 0, 0, 0), result)
        regs.rax = result & MASK64
        regs.orig_rax = MASK64
        ptrace.setregs(task.host_tid, regs)
        task.run = Run.RUNNING
        ptrace.cont(task.host_tid)

    def _compat_syscall(self, task: Task) -> None:
        """An `int 0x80` (the i386 syscall ABI) from 64-bit code. snapbox has no IA32
        emulation: answer as Linux built without it does (the gate does not exist, so the
        instruction faults with SIGSEGV, si_code SI_KERNEL), and never run the 64-bit
        syscall that has the same number."""
        if NR_COMPAT_INT80 not in self.enosys_logged:
            self.enosys_logged.add(NR_COMPAT_INT80)
            log.warning("int 0x80 (32-bit syscall %d) from pid %d: SIGSEGV, no IA32 emulation",
                        task.regs.orig_rax, task.tg.tgid)
        task.regs.rip -= 2  # the fault is reported at the instruction
        task.regs.orig_rax = MASK64
        task.run = Run.STOPPED
        self._force_signal(task, signal.SIGSEGV, siginfo(signal.SIGSEGV, SI_KERNEL, addr=0))

    def _dispatch(self, task: Task) -> None:
        if task.notif:
            if task.interrupt_pending:
                return  # on its way out of the notification: its stop queues it again
            nr, args, ip = task.call
            result = self._call(task, nr, args, ip)
            if result is not None:
                self._answer(task, result)
            return
        regs = task.regs
        if regs.rcx != regs.rip and ptrace.syscall_arch(task.host_tid) != ptrace.AUDIT_ARCH_X86_64:
            # `syscall` leaves the return address in rcx: any other entry is checked with
            # the kernel (a program can forge rcx, but then gets only what `syscall` gives).
            self._compat_syscall(task)
            return
        result = self._call(task, regs.orig_rax, (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9), regs.rip)
        if result is None:
            return
        regs.rax = result & MASK64
        regs.orig_rax = MASK64  # skipped: the host never runs it
        pid = task.host_tid
        if (task.pending | task.tg.pending) & ~task.signal_mask:
            task.run = Run.STOPPED
            task.tg.mm.stub.clobbered.add(pid)
            self._deliver_and_resume(task)
            return
        ptrace.setregs(pid, regs)
        task.tg.mm.stub.clobbered.discard(pid)
        task.run = Run.RUNNING
        ptrace.cont(pid)

    def _call(self, task: Task, nr: int, args, ip: int) -> int | None:
        """Run syscall `nr` (made at `ip`, the address after the instruction) through the
        task's seccomp filters, then its handler: its result, or None if the task is not to
        be resumed (parked, or gone)."""
        if task.seccomp_mode:
            ran, result = self._seccomp(task, nr, args, ip)
            if not ran:
                task.restart = None
                return result
        entry = TABLE.get(nr)
        try:
            if entry is None:
                if nr not in self.enosys_logged:
                    self.enosys_logged.add(nr)
                    log.warning("unimplemented syscall %s (%d): ENOSYS", NAMES.get(nr, "?"), nr)
                result = -errno.ENOSYS
            else:
                fn, nargs = entry
                self.current = task
                stub = task.tg.mm.stub
                stub.active = -1 if task.notif else task.host_tid  # no stopped thread to inject into
                if task.tg.mm.stale and not task.notif:
                    task.tg.mm.resync()  # a file it maps was truncated while it could not be told
                fds = task.tg.fds
                fds.held, fds.seen = task.held, {}
                try:
                    result = fn(task, *args[:nargs])
                finally:
                    self.current = None
                    if task.tg.mm.stub is not None:
                        task.tg.mm.stub.active = None
                    seen, fds.held, fds.seen = fds.seen, {}, None
        except SyscallError as e:
            result = -e.errno
        except WouldBlock as wb:
            for fd, f in seen.items():  # held while parked: a close elsewhere leaves the call its file
                f.refs += 1
                task.held[fd] = f
            self._park(task, wb)
            return None
        except TaskExit:
            if self.strace is not None:
                self.strace(task, nr, args, None)
            return None
        except OSError as e:
            # A host operation on the application's behalf failed: report it as Linux would.
            result = -(e.errno or errno.EIO)
        except MemoryLost as e:
            self._memory_lost(e)  # memory the call needed is damaged in the image restored from
            return None
        except Exception:
            # A bug in a handler must not take the whole sandbox down: log it, fail the call.
            log.exception("syscall %s (%d) of pid %d failed", NAMES.get(nr, "?"), nr, task.tg.tgid)
            result = -errno.EIO
        if not -(1 << 63) <= result < 1 << 64:  # no register holds it: a handler's bug, not the program's
            log.error("syscall %s (%d) of pid %d returned %d", NAMES.get(nr, "?"), nr, task.tg.tgid, result)
            result = -errno.EOVERFLOW
        if self.fs.orphans and nr in UNMAPPING:
            self.collect_orphans()
        if task.run is Run.DEAD:
            return None  # the call ended its own process (a fatal signal to itself)
        if self.recording is not None:
            self.recorded_work = True
        if self.strace is not None:
            self.strace(task, nr, args, result)
        task.restart = None
        if task.held:
            task.let_go()
        return result

    def collect_orphans(self) -> None:
        """Give back the pages of orphaned files (Filesystem.orphans) that no process maps
        any more; those still mapped wait for a later call."""
        shared = sorted((v.offset, v.offset + (v.end - v.start)) for mm in address_spaces(self)
                        for v in mm.vmas if v.shared)
        starts = [s for s, _ in shared]

        def mapped(offset: int) -> bool:
            i = bisect.bisect_right(starts, offset) - 1
            return i >= 0 and offset < shared[i][1]

        kept = []
        for node in self.fs.orphans:
            if any(mapped(off) for off in node.pages.values()):
                kept.append(node)
            else:
                node.release_pages()
        self.fs.orphans = kept

    def _seccomp(self, task: Task, nr: int, args, ip: int) -> tuple[bool, int | None]:
        """What the task's seccomp mode (seccomp(2)) makes of a call: (True, None) to run
        it, else (False, what it returns instead, None if the task does not return)."""
        if task.seccomp_mode == seccomp.SECCOMP_MODE_STRICT:
            if nr in STRICT_SYSCALLS:
                return True, None
            self._kill_thread(task, SIGKILL)
            return False, None
        ret, by = task.seccomp.verdict(i32(nr), seccomp.AUDIT_ARCH_X86_64, ip, args)
        action, data = ret & seccomp.ACTION_FULL, ret & seccomp.RET_DATA
        if action == seccomp.RET_ALLOW:
            return True, None
        if action == seccomp.RET_LOG or by.log:
            log.info("seccomp: pid %d, %s (%d): action %#x", task.tg.tgid, NAMES.get(nr, "?"), nr, ret)
        if action == seccomp.RET_LOG:
            return True, None
        if action == seccomp.RET_ERRNO:
            return False, -min(data, seccomp.MAX_ERRNO)
        if action == seccomp.RET_USER_NOTIF:
            return self._hand_over(task, by.listener, nr, args, ip)
        if action == seccomp.RET_TRACE:
            return False, -errno.ENOSYS  # no tracer: skipped with ENOSYS as on Linux
        if action == seccomp.RET_TRAP:
            if task.tg.sigaction(SIGSYS).handler in (SIG_DFL, SIG_IGN) or task.signal_mask & sigbit(SIGSYS):
                self.exit_group(task.tg, SIGSYS | CORE_DUMPED)  # forced: blocked or ignored, it kills
                return False, None
            info = bytearray(siginfo(SIGSYS, SYS_SECCOMP))
            info[4:8] = data.to_bytes(4, "little")  # si_errno
            info[16:32] = struct.pack("<QiI", ip, i32(nr), seccomp.AUDIT_ARCH_X86_64)
            queue_signal(task, SIGSYS, bytes(info))
            return False, nr  # skipped, its registers rolled back: rax holds the number
        if action == seccomp.RET_KILL_THREAD:
            self._kill_thread(task, SIGSYS)
        else:  # KILL_PROCESS, and what no kernel knows
            self.exit_group(task.tg, SIGSYS | CORE_DUMPED)
        return False, None

    def _hand_over(self, task: Task, listener, nr: int, args, ip: int) -> tuple[bool, int | None]:
        """SECCOMP_RET_USER_NOTIF: the call waits for its filter's supervisor, who answers
        it or lets it run (CONTINUE). Without a listener, ENOSYS, as on Linux. The task
        comes back here each time it wakes: the call is its notification's until it makes
        another one (it gave this one up to a signal)."""
        n = task.seccomp_notif
        if n is not None and n.call != (nr, ip, tuple(args)):
            if listener is not None:
                listener.give_up(n)
            task.seccomp_notif = n = None
        if n is not None and n.state == "replied":
            task.seccomp_notif = None
            return (True, None) if n.proceed else (False, n.result)
        if listener is None or listener.closed:
            return False, -errno.ENOSYS
        if n is None:
            n = task.seccomp_notif = listener.hand_over(task, nr, ip, args)
        self._park(task, WouldBlock(n.done))
        return False, None

    def _kill_thread(self, task: Task, sig: int) -> None:
        """End one thread as a fatal seccomp verdict does; the last one ends its process."""
        if len(task.tg.tasks) <= 1:
            self.exit_group(task.tg, sig if sig == SIGKILL else sig | CORE_DUMPED)
            return
        self._stop_thread(task)  # out of a notification, to a stop where it can be ended
        self.exit_task(task, sig)

    def _answer(self, task: Task, result: int) -> None:
        """Answer a task's notification. If it has a signal to take, the answer would let it
        run on before the handler: it is interrupted out of the wait instead, and the call
        returns `result` from the stop, where the signal frame can be built."""
        if (task.pending | task.tg.pending) & ~task.signal_mask:
            task.result = result
            if not task.interrupt_pending:
                ptrace.interrupt(task.host_tid)
                task.interrupt_pending = True
            return
        nid, task.notif = task.notif, 0
        if task.tg.mm.stub.listener.answer(nid, result):
            task.run = Run.RUNNING
        # else it was killed meanwhile: the death of its stub is on its way

    def _resume(self, task: Task) -> None:
        pid = task.host_tid
        stub = task.tg.mm.stub
        if pid in stub.interrupts_seen:
            stub.interrupts_seen.discard(pid)
            task.interrupt_pending = False
        if task.tg.job_stopped:
            # A stopped process (SIGSTOP, SIGTSTP, ...) runs again only on SIGCONT.
            task.run = Run.STOPPED
            stub.clobbered.add(pid)
            return
        if pid in stub.clobbered or task.regs.orig_rax != MASK64:
            task.regs.orig_rax = MASK64  # a syscall it stopped in is skipped, never run by the host
            ptrace.setregs(pid, task.regs)
            stub.clobbered.discard(pid)
        task.run = Run.RUNNING
        ptrace.cont(pid)


    # -- blocking and waking -------------------------------------------------------------------

    def _park(self, task: Task, wb: WouldBlock) -> None:
        self.switches += 1
        task.waiting = wb.waitables
        for q in wb.waitables:
            q.waiters.append(task)
            if q.host_fd >= 0:
                self.loop.watch(q.host_fd)
        if wb.deadline is not None:
            task.timer_token += 1
            token = task.timer_token
            self.call_at(wb.deadline, lambda: task.timer_token == token and self.wake(task))
        if self._deliverable(task) and not self.paused:
            self._interrupt_syscall(task)

    def wake(self, task: Task) -> None:
        """Make a parked task re-run its syscall."""
        if task.run is not Run.SYSCALL or task.queued:
            return
        for q in task.waiting:
            if task in q.waiters:
                q.waiters.remove(task)
        task.waiting = ()
        task.timer_token += 1
        self._enqueue(task)

    def call_at(self, deadline: int, callback: Callable[[], Any]) -> None:
        """Call `callback()` from the loop once sandbox monotonic time reaches `deadline`."""
        self.loop.call_at(self.timekeeper.to_host(deadline), callback)

    def _enqueue(self, task: Task) -> None:
        task.queued = True
        self.loop.runq.append(task)

    def _run_queue(self) -> None:
        held = []
        runq = self.loop.runq
        while runq and not self.paused:
            task = runq.popleft()
            if task.tg.job_stopped:
                held.append(task)  # runs when the process is continued
                continue
            task.queued = False
            if task.run is Run.SYSCALL:
                self._dispatch(task)
        runq.extend(held)


    # -- pause ---------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop every task where it is; none runs again until unpause()."""
        if self.paused:
            return
        self.paused = True
        # Tasks parked in a notification wait in the host kernel: out of it, into a ptrace stop.
        running = [t for t in self.by_host.values() if t.run is Run.RUNNING or t.notif]
        for t in running:
            if not t.interrupt_pending:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
        for t in running:
            while (t.run is Run.RUNNING or t.notif) and t.host_tid >= 0:
                pid, status = os.waitpid(t.host_tid, WALL)
                self._on_status(pid, status)

    def unpause(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for h in list(self.host_sockets):
            h.take_back(self.loop)  # connections a failed migration had handed over
        for t in list(self.by_host.values()):
            if t.run is Run.STOPPED:
                self._deliver_and_resume(t)
            elif t.run is Run.SYSCALL and not t.queued and self._deliverable(t):
                self._interrupt_syscall(t)
        self._run_queue()


    def cpu_time_ns(self, task: Task) -> int:
        if task.host_tid < 0:
            return task.cpu_base
        return task.cpu_base + host_cpu_ns(task.host_tid) - task.cpu_start
