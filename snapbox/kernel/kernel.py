"""The Kernel: every kernel object of one sandbox, and the event loop that runs it.

The loop is single-threaded. It waits on ptrace stops (SIGCHLD through a signalfd, then
waitpid until empty), on host fds, and on the next timer deadline; all kernel state is
changed only from it, so nothing needs a lock. Pausing means: interrupt every running
task and resume none until unpause.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import heapq
import logging
import os
import selectors
import signal
import ctypes
import stat
import struct
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import zstandard

from snapbox import __version__
from snapbox.kernel import elf
from snapbox.kernel.devices import mount_dev
from snapbox.kernel.procfs import mount_proc
from snapbox.kernel.errors import SyscallError, TaskExit, WouldBlock
from snapbox.kernel.eventfiles import TimerFd
from snapbox.kernel.filepages import FileCache, FilePages
from snapbox.kernel.locks import release_owner
from snapbox.kernel.fd import FDTable
from snapbox.kernel.host import HostFile
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.signals import (
    CLD_CONTINUED,
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    CLD_STOPPED,
    CORE_DUMPED,
    EFLAGS_USER,
    REDZONE,
    SA_NOCLDSTOP,
    SA_NOCLDWAIT,
    SA_NODEFER,
    SA_ONSTACK,
    SA_RESETHAND,
    SA_RESTART,
    SI_KERNEL,
    SI_USER,
    SIG_DFL,
    SIG_IGN,
    SIGCHLD,
    SIGKILL,
    SS_DISABLE,
    SS_ONSTACK,
    UCONTEXT_SIZE,
    Default,
    build_frame,
    default_action,
    parse_frame,
    sigbit,
    siginfo,
    xsave_for_frame,
)
from snapbox.kernel.syscalls import MASK64, NAMES, NR, TABLE, load_all
from snapbox.kernel.syscalls.futex import exit_robust_list
from snapbox.kernel.syscalls.futex import wake as futex_wake
from snapbox.kernel.task import FSContext, PIDNamespace, Run, SigAction, Task, TaskSet, ThreadGroup
from snapbox.kernel.time import Timekeeper
from snapbox.kernel.vfs import Filesystem, LowerNode, MemRegular
from snapbox.kernel.waiter import WaitQueue
from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.memfile.lazy import MemoryLost
from snapbox.memfile.memfile import CHUNK_HEAD_SIZE
from snapbox.platform import ptrace, uffd
from snapbox.platform.cpuid import FeatureSet
from snapbox.platform.stub import APP_TOP, Stub, StubError
from snapbox.state import (
    ImageError,
    SnapboxError,
    decode_graph,
    encode_graph,
    encode_graph_with_stats,
    nosave,
    savable,
)
from snapbox.state.image import ImageReader, ImageWriter

log = logging.getLogger("snapbox.kernel")

# signal(7): calls that fail with EINTR after a handler even with SA_RESTART.
NEVER_RESTARTED = frozenset({NR.poll, NR.ppoll, NR.select, NR.pselect6, NR.nanosleep, NR.clock_nanosleep,
                             NR.rt_sigsuspend, NR.pause, NR.rt_sigtimedwait, NR.epoll_wait,
                             NR.epoll_pwait, NR.epoll_pwait2})
# Calls that return what they did so far, rather than EINTR, when interrupted part way.
PARTIAL_RESULT_SYSCALLS = frozenset({NR.write, NR.writev})
SLEEP_SYSCALLS = frozenset({NR.nanosleep, NR.clock_nanosleep})
STOP_SIGNALS = sigbit(signal.SIGSTOP) | sigbit(signal.SIGTSTP) | sigbit(signal.SIGTTIN) | sigbit(signal.SIGTTOU)

WALL = 0x40000000
MAX_KERNEL_SECTION = 1 << 30  # bound on the decompressed kernel graph of an image
XSTATE_MAX = 1 << 14  # room for any XSAVE area
MAX_WAIT = 86400.0  # the longest one turn of the event loop waits, in seconds
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_VFORK, CLONE_PARENT, CLONE_THREAD = 0x4000, 0x8000, 0x10000
CLONE_SETTLS, CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x80000, 0x100000, 0x200000, 0x1000000
# Host faults that become the application's own signals.
FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP})
# The calls behind the vsyscall page's entry points, which the host kernel emulates.
VSYSCALLS = frozenset({NR.gettimeofday, NR.time, NR.getcpu})
NR_COMPAT_INT80 = -0x80  # where enosys_logged remembers that int 0x80 was logged

load_all()


@dataclass
class LoadContext:
    """What a restore supplies that the image does not: host facts of the new sandbox."""

    rootfs: str | None = None  # the restoring bundle's rootfs (None: the one saved)


@savable
@dataclass(eq=False)
class Kernel:
    """One sandbox's kernel: tasks, memory, files, time, and the loop that drives them."""

    features: FeatureSet
    memfile: MemoryFile
    fs: Filesystem
    timekeeper: Timekeeper = field(default_factory=Timekeeper)
    tasks: TaskSet = field(default_factory=TaskSet)
    hostname: str = "snapbox"
    exit_status: int | None = None  # wait(2) status of init once it has exited
    pipe_ino: int = 0x10000  # inode numbers handed to pipes
    tty_pgrp: int = 0  # the terminal's foreground process group (TIOCSPGRP), 0 for init's
    file_cache: FileCache | None = None  # host files' pages shared by read-only mappings
    unix_names: dict = field(default_factory=dict)  # abstract AF_UNIX names (NUL first) -> UnixSocket

    # Loop state: host facts, rebuilt empty on restore.
    selector: Any = nosave(default=None)
    by_host: dict = nosave(dict)  # host tid -> Task
    runq: Any = nosave(collections.deque)  # Tasks whose syscall handler must (re)run
    timers: list = nosave(list)  # heap of (host monotonic ns, seq, callback)
    timer_seq: int = nosave(default=0)
    paused: bool = nosave(default=False)
    host_queues: dict = nosave(dict)  # (host fd, event) -> WaitQueue
    watched: dict = nosave(dict)  # host fd -> selector event mask registered
    enosys_logged: set = nosave(set)  # syscall numbers already logged as unimplemented
    strace: Callable | None = nosave(default=None)  # called (task, nr, raw args, result or None) if set
    wakeup: int = nosave(default=-1)  # signalfd that turns readable when SIGCHLD (or SIGIO) arrives
    current: Task | None = nosave(default=None)  # the task whose syscall handler is running
    # A lazy restore: each address space's userfaultfd, which catches first touches of memory
    # still in the image, and an eventfd that turns readable once it is all in.
    faults: dict = nosave(dict)
    loaded: int = nosave(default=-1)
    started: bool = nosave(default=False)  # start() has run: the sandbox was handed to its user
    # Memory a lazy restore found unreadable before start(): the sandbox ends once started,
    # so that `restore` behaves the same whenever the damage is found.
    memory_error: MemoryLost | None = nosave(default=None)
    on_exit: Callable | None = nosave(default=None)  # called (ThreadGroup) when a process exits
    futexes: dict = nosave(dict)  # MemoryFile offset of a futex word -> WaitQueue of its waiters

    def __post_init__(self) -> None:
        if self.file_cache is None:
            self.file_cache = FileCache(self.memfile, self.fs)
        self._init_loop()

    def after_load(self, ctx) -> None:
        self.__post_init__()

    def _init_loop(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.wakeup = _signal_wakeup()
        self.selector.register(self.wakeup, selectors.EVENT_READ, self._on_signals)

    # -- building a sandbox --------------------------------------------------------------

    @classmethod
    def boot(cls, rootfs: str, argv: list[bytes], env: list[bytes], cwd: str = "/",
             hostname: str = "snapbox", memory_limit: int = 0, mounts: list | None = None,
             user: tuple[int, int] = (0, 0)) -> Kernel:
        """A kernel with one process (pid 1) ready to run argv[0], stdio = ours; its
        memory (all processes together) limited to `memory_limit` bytes if not 0; `mounts`
        are ("tmpfs", destination, "") and ("bind" or "rw-bind", destination, host source) entries."""
        memfile = MemoryFile(limit=memory_limit)
        fs = Filesystem(rootfs=rootfs, memfile=memfile)
        mount_dev(fs, terminal=os.isatty(0))
        k = cls(features=FeatureSet.host(), memfile=memfile, fs=fs, hostname=hostname)
        mount_proc(k)
        for kind, destination, source in mounts or ():
            try:
                if kind == "tmpfs":
                    fs.mount_tmpfs(destination)
                else:
                    fs.mount_bind(destination, source, writable=kind == "rw-bind")
            except SyscallError as e:
                raise SnapboxError(f"cannot mount {destination} ({e})") from None
        k.tasks.init = k.spawn(argv, env, cwd, creds=user)
        return k

    def spawn(self, argv: list[bytes], env: list[bytes], cwd: str, stdio: list[int] | None = None,
              creds: tuple[int, int] = (0, 0)) -> ThreadGroup:
        """A new process running argv[0] with no parent (init, or one `exec` adds).

        Its stdio is the sandbox process's, or the host fds `stdio` (which it takes).
        `creds` is (uid, gid). Starts when the kernel runs (at once if it is running).
        """
        fs = self.fs
        root = fs.root
        try:
            _, _, cwd_node = fs.walk(root, root, cwd.encode())
        except SyscallError:
            cwd_node = None
        if cwd_node is None or not cwd_node.is_dir():
            raise SnapboxError(f"working directory {cwd} does not exist in the sandbox")
        path = argv[0]
        if b"/" not in path:
            path = self._search_path(path, env)
        try:
            parent, name, node = fs.walk(cwd_node, root, path)
        except SyscallError:
            node = None
        if node is None or node.is_dir():
            raise SnapboxError(f"executable {path.decode(errors='replace')} not found in the sandbox")
        pidns: PIDNamespace = self.tasks.pidns
        mm = MemoryManager(memfile=self.memfile, cache=self.file_cache)
        exe = _resolved(parent, name)
        try:
            data, pages = self._program_file(node)
            image, entry, sp = self._load_program(mm, data, pages, exe, argv, env, path, cwd_node)
        except SyscallError as e:
            mm.release_all()
            raise SnapboxError(f"cannot run {exe}: {e.args[1] or os.strerror(e.errno)}") from None
        tgid = pidns.allocate()
        fds = FDTable()
        for i in range(3):
            if stdio is None:
                fds.install_at(i, HostFile(flags=2, stdio=i))
            else:
                fds.install_at(i, HostFile(flags=2, stdio=i, passed=True, fd=stdio[i]))
        uid, gid = creds
        tg = ThreadGroup(tgid=tgid, mm=mm, fds=fds, fs=FSContext(root=root, cwd=cwd_node),
                         argv=list(argv), exe=exe, pgid=tgid, sid=tgid, creds=[uid, uid, uid, gid, gid, gid])
        task = Task(tid=tgid, tg=tg, kernel=self, comm=os.path.basename(path).decode(errors="replace")[:15])
        tg.tasks.append(task)
        pidns.tasks[tgid] = task
        pidns.groups[tgid] = tg
        stub = Stub.spawn(self.memfile.fd)
        mm.attach(stub)
        regs = ptrace.copy_regs(stub.base_regs)
        for reg in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                    "r12", "r13", "r14", "r15", "fs_base", "gs_base"):
            setattr(regs, reg, 0)
        regs.rip = entry
        regs.rsp = sp
        self._bind(task, stub.pid, regs)
        if not self.paused and self.tasks.init is not None:
            self._resume(task)
        return tg

    def _load_program(self, mm: MemoryManager, data: bytes, pages: FilePages | None, exe: str,
                      argv: list[bytes], env: list[bytes], path: bytes, cwd) -> tuple[elf.LoadedImage, int, int]:
        """Map a program (its content `data`, its cached `pages` if any) and its dynamic
        loader, if it names one, and build its stack. Returns the image, the address to
        start at, and the initial stack pointer."""
        try:
            image = elf.load(mm, data, exe, pages=pages)
        finally:
            if pages is not None:
                self.file_cache.forget_unused(pages)
        mm.brk_start = mm.brk = image.end
        entry, interp_base = image.entry, 0
        if image.interp:
            try:
                _, _, node = self.fs.walk(cwd, self.fs.root, image.interp.encode())
            except SyscallError:
                node = None
            if node is None or node.is_dir():
                raise SyscallError(errno.ENOENT, f"its loader {image.interp} is not in the sandbox")
            data, pages = self._program_file(node)
            try:
                loader = elf.load(mm, data, image.interp, base=elf.INTERP_BASE, pages=pages)
            finally:
                if pages is not None:
                    self.file_cache.forget_unused(pages)
            if loader.interp:
                raise SyscallError(errno.ELIBBAD, f"its loader {image.interp} needs a loader itself")
            entry, interp_base = loader.entry, loader.base
        sp = elf.build_stack(mm, image, argv, env, path, self.features.hwcap(), interp_base)
        return image, entry, sp

    def _program_file(self, node) -> tuple[bytes, FilePages | None]:
        """A program's content, and its cache entry if its pages can be mapped from the
        cache (the caller forgets the entry if it maps none)."""
        data = self._read_whole(node)
        return data, self.file_cache.get(node) if isinstance(node, LowerNode) else None

    def processes(self) -> list[dict]:
        """The live processes, for `snapbox ps`."""
        out = []
        for tgid, tg in sorted(self.tasks.pidns.groups.items()):
            if tg.exit_status is not None or not tg.tasks:
                continue
            runs = {t.run for t in tg.tasks}
            state = "T" if tg.job_stopped else ("R" if Run.RUNNING in runs else "S")
            out.append({"pid": tgid, "ppid": tg.parent.tgid if tg.parent is not None else 0,
                        "uid": tg.creds[1], "state": state, "threads": len(tg.tasks), "comm": tg.tasks[0].comm,
                        "cmd": " ".join(a.decode(errors="replace") for a in tg.argv)})
        return out

    def _search_path(self, name: bytes, env: list[bytes]) -> bytes:
        paths = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for e in env:
            if e.startswith(b"PATH="):
                paths = e[5:]
        root = self.fs.root
        for d in paths.split(b":"):
            candidate = (d or b".") + b"/" + name
            try:
                _, _, node = self.fs.walk(root, root, candidate)
            except SyscallError:
                continue
            if node is not None and not node.is_dir():
                return candidate
        raise SnapboxError(f"executable {name.decode(errors='replace')} not found in PATH")

    def _read_whole(self, node) -> bytes:
        if isinstance(node, MemRegular):
            return node.read(0, node.length)
        if isinstance(node, LowerNode):
            fd = self.fs.host(node.layer).open(node.path, os.O_RDONLY)
            try:
                with os.fdopen(fd, "rb", closefd=False) as f:
                    return f.read()
            finally:
                os.close(fd)
        raise SnapboxError("executable is not a regular file")

    def _bind(self, task: Task, host_tid: int, regs: ptrace.Regs) -> None:
        """Make host thread `host_tid` run `task`, starting from `regs`."""
        task.host_tid = host_tid
        task.regs = regs
        task.run = Run.STOPPED
        task.cpu_start = _host_cpu_ns(host_tid)
        ptrace.setregs(host_tid, regs)
        task.tg.mm.stub.clobbered.discard(host_tid)
        self.by_host[host_tid] = task

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start time, the interval timers, and every stopped task."""
        self.timekeeper.resume()
        for tg in self.tasks.pidns.groups.values():
            if tg.exit_status is None and tg.itimer_real[0]:
                self.arm_itimer(tg)
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

    def run(self) -> None:
        """Run until init exits."""
        while self.exit_status is None:
            self.step()

    def step(self, timeout: float | None = None) -> None:
        """One turn of the loop: run woken syscalls, wait for events, dispatch them."""
        self._run_queue()
        wait = self._next_timeout()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        for key, mask in self.selector.select(wait):
            key.data(mask)
        self._fire_timers()
        self._run_queue()

    def _next_timeout(self) -> float | None:
        if self.runq and not self.paused:
            return 0
        if self.timers:
            # A deadline years away (a program may ask for one) is waited for a day at a time:
            # epoll's timeout is an int of milliseconds.
            return min(max(0.0, (self.timers[0][0] - time.monotonic_ns()) / 1e9), MAX_WAIT)
        return None

    def _on_signals(self, mask: int) -> None:
        try:
            data = os.read(self.wakeup, _SIGINFO_SIZE * 16)  # the pending signals (they coalesce)
        except BlockingIOError:
            data = b""
        if any(data[i] == signal.SIGIO for i in range(0, len(data), _SIGINFO_SIZE)):
            self._image_changing()
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
        if sig == ptrace.SYSCALL_STOP_SIG:
            ptrace.getregs(pid, task.regs)
            task.run = Run.SYSCALL
            if self.paused:
                self._enqueue(task)
            else:
                self._dispatch(task)
        elif event == ptrace.PTRACE_EVENT_STOP:
            task.interrupt_pending = False
            if task.run is Run.RUNNING:
                ptrace.getregs(pid, task.regs)
                task.run = Run.STOPPED
                if not self.paused:
                    self._deliver_and_resume(task)
            elif task.run is Run.STOPPED and not self.paused:
                self._deliver_and_resume(task)
        elif event == 0 and sig in FAULT_SIGNALS:
            ptrace.getregs(pid, task.regs)
            task.run = Run.STOPPED
            self._fault(task, sig)
        elif event == ptrace.PTRACE_EVENT_SECCOMP:
            self._vsyscall(task)
        else:
            # A signal from the host (or an event we did not ask for): not the
            # application's business. Suppress it and carry on.
            if task.run is Run.RUNNING:
                ptrace.sysemu(pid, 0)
            else:
                ptrace.cont(pid, 0)

    def _fault(self, task: Task, sig: int) -> None:
        """A signal the stub's own execution raised: a fault becomes the application's
        signal (with the host's siginfo: si_code, si_addr); one sent from the host is
        not the application's business."""
        info = ptrace.getsiginfo(task.host_tid)
        code = struct.unpack_from("<i", info, 8)[0]
        if code <= 0:
            self._resume(task)
            return
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
        task.pending |= bit
        task.siginfo[sig] = info
        task.tg.mm.stub.clobbered.add(task.host_tid)
        if not self.paused:
            self._deliver_and_resume(task)

    def _vsyscall(self, task: Task) -> None:
        """A call into the vsyscall page (the stub's seccomp filter traces them): answer it
        here, from the sandbox's clock, as the host kernel would have without us. Skipping
        the call (orig_rax -1) makes the host kernel finish the emulation with its `ret`."""
        regs = task.regs
        ptrace.getregs(task.host_tid, regs)
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
        ptrace.sysemu(task.host_tid)

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
        regs = task.regs
        if regs.rcx != regs.rip and ptrace.syscall_arch(task.host_tid) != ptrace.AUDIT_ARCH_X86_64:
            # `syscall` leaves the return address in rcx: any other entry is checked with
            # the kernel (a program can forge rcx, but then gets only what `syscall` gives).
            self._compat_syscall(task)
            return
        nr = regs.orig_rax
        raw = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) if self.strace is not None else None
        entry = TABLE.get(nr)
        try:
            if entry is None:
                if nr not in self.enosys_logged:
                    self.enosys_logged.add(nr)
                    log.warning("unimplemented syscall %s (%d): ENOSYS", NAMES.get(nr, "?"), nr)
                result = -errno.ENOSYS
            else:
                fn, nargs = entry
                args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)[:nargs]
                self.current = task
                stub = task.tg.mm.stub
                stub.active = task.host_tid
                try:
                    result = fn(task, *args)
                finally:
                    self.current = None
                    if task.tg.mm.stub is not None:
                        task.tg.mm.stub.active = None
        except SyscallError as e:
            result = -e.errno
        except WouldBlock as wb:
            self._park(task, wb)
            return
        except TaskExit:
            if raw is not None:
                self.strace(task, nr, raw, None)
            return
        except OSError as e:
            # A host operation on the application's behalf failed: report it as Linux would.
            result = -(e.errno or errno.EIO)
        except MemoryLost as e:
            self._memory_lost(e)  # memory the call needed is damaged in the image restored from
            return
        except Exception:
            # A bug in a handler must not take the whole sandbox down: log it, fail the call.
            log.exception("syscall %s (%d) of pid %d failed", NAMES.get(nr, "?"), nr, task.tg.tgid)
            result = -errno.EIO
        if task.run is Run.DEAD:
            return  # the call ended its own process (a fatal signal to itself)
        if raw is not None:
            self.strace(task, nr, raw, result)
        task.restart = None
        regs.rax = result & MASK64
        pid = task.host_tid
        if (task.pending | task.tg.pending) & ~task.signal_mask:
            task.run = Run.STOPPED
            task.tg.mm.stub.clobbered.add(pid)
            self._deliver_and_resume(task)
            return
        ptrace.setregs(pid, regs)
        task.tg.mm.stub.clobbered.discard(pid)
        task.run = Run.RUNNING
        ptrace.sysemu(pid)

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
        if pid in stub.clobbered:
            ptrace.setregs(pid, task.regs)
            stub.clobbered.discard(pid)
        task.run = Run.RUNNING
        ptrace.sysemu(pid)

    # -- job control -----------------------------------------------------------------------------

    def _stop_group(self, tg: ThreadGroup, sig: int) -> None:
        """Stop every task of `tg` (the default action of SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU)."""
        if tg.job_stopped or tg.exit_status is not None:
            return
        tg.job_stopped = sig
        tg.job_report = "stopped"
        tg.pending &= ~sigbit(signal.SIGCONT)
        for t in tg.tasks:
            if t.run is Run.RUNNING and not t.interrupt_pending and not self.paused:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
        self._notify_parent(tg, CLD_STOPPED, sig)

    def _continue_group(self, tg: ThreadGroup) -> None:
        """SIGCONT: a stopped process goes on (whatever the signal's disposition)."""
        for t in tg.tasks:
            t.pending &= ~STOP_SIGNALS
        tg.pending &= ~STOP_SIGNALS
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

    # -- blocking and waking -------------------------------------------------------------------

    def _park(self, task: Task, wb: WouldBlock) -> None:
        task.waiting = wb.waitables
        for q in wb.waitables:
            q.waiters.append(task)
            if q.host_fd >= 0:
                self._watch(q.host_fd)
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

    def _enqueue(self, task: Task) -> None:
        task.queued = True
        self.runq.append(task)

    def _run_queue(self) -> None:
        held = []
        while self.runq and not self.paused:
            task = self.runq.popleft()
            if task.tg.job_stopped:
                held.append(task)  # runs when the process is continued
                continue
            task.queued = False
            if task.run is Run.SYSCALL:
                self._dispatch(task)
        self.runq.extend(held)

    def call_at(self, deadline: int, callback: Callable[[], Any]) -> None:
        """Call `callback()` from the loop once sandbox monotonic time reaches `deadline`."""
        self.timer_seq += 1
        heapq.heappush(self.timers, (self.timekeeper.to_host(deadline), self.timer_seq, callback))

    def _fire_timers(self) -> None:
        now = time.monotonic_ns()
        while self.timers and self.timers[0][0] <= now:
            _, _, callback = heapq.heappop(self.timers)
            callback()

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

    def host_queue(self, fd: int, event: int) -> WaitQueue:
        """The WaitQueue fired when host fd `fd` is ready for `event`."""
        q = self.host_queues.get((fd, event))
        if q is None:
            q = self.host_queues[(fd, event)] = WaitQueue(host_fd=fd, host_events=event)
        return q

    def _watch(self, fd: int) -> None:
        mask = 0
        for ev in (selectors.EVENT_READ, selectors.EVENT_WRITE):
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
            self.selector.modify(fd, mask, lambda m, fd=fd: self._host_ready(fd, m))
        else:
            self.selector.register(fd, mask, lambda m, fd=fd: self._host_ready(fd, m))
        if mask:
            self.watched[fd] = mask

    def _host_ready(self, fd: int, mask: int) -> None:
        for ev in (selectors.EVENT_READ, selectors.EVENT_WRITE):
            q = self.host_queues.get((fd, ev))
            if q is not None and mask & ev:
                q.notify()
        self._watch(fd)

    def add_reader(self, fileobj, callback: Callable[[], None]) -> None:
        """Have the loop call `callback()` when `fileobj` is readable (the control socket)."""
        self.selector.register(fileobj, selectors.EVENT_READ, lambda m: callback())

    def remove_reader(self, fileobj) -> None:
        self.selector.unregister(fileobj)

    # -- pause ---------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop every task where it is; none runs again until unpause()."""
        if self.paused:
            return
        self.paused = True
        running = [t for t in self.by_host.values() if t.run is Run.RUNNING]
        for t in running:
            if not t.interrupt_pending:
                ptrace.interrupt(t.host_tid)
                t.interrupt_pending = True
        for t in running:
            while t.run is Run.RUNNING and t.host_tid >= 0:
                pid, status = os.waitpid(t.host_tid, WALL)
                self._on_status(pid, status)

    def unpause(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for t in list(self.by_host.values()):
            if t.run is Run.STOPPED:
                self._deliver_and_resume(t)
            elif t.run is Run.SYSCALL and not t.queued and self._deliverable(t):
                self._interrupt_syscall(t)
        self._run_queue()

    # -- exit and signals ------------------------------------------------------------------------

    # -- processes ------------------------------------------------------------------------------

    def fork(self, t: Task, flags: int, stack: int = 0, ptid: int = 0, ctid: int = 0, tls: int = 0) -> int:
        """fork(2), or clone(2) without shared memory: a new process holding a copy of the
        caller's address space, its fds, handlers and registers. Returns the child's pid."""
        parent = t.tg
        pidns = self.tasks.pidns
        mm = parent.mm.fork()
        try:
            stub = parent.mm.stub.fork(t.host_tid)
        except (OSError, SnapboxError) as e:
            mm.release_all()
            log.warning("fork: no stub for the child: %s", e)
            raise SyscallError(errno.EAGAIN) from None
        tgid = pidns.allocate()
        fds = FDTable(cloexec=set(parent.fds.cloexec), limit=parent.fds.limit)
        for fd, f in parent.fds.files.items():
            f.refs += 1
            fds.files[fd] = f
        tg = ThreadGroup(
            tgid=tgid, mm=mm, fds=fds, parent=parent,
            fs=FSContext(root=parent.fs.root, cwd=parent.fs.cwd, umask=parent.fs.umask),
            sigactions={n: SigAction(a.handler, a.flags, a.restorer, a.mask) for n, a in parent.sigactions.items()},
            argv=list(parent.argv), exe=parent.exe, rlimits=dict(parent.rlimits),
            pgid=parent.pgid, sid=parent.sid, creds=list(parent.creds), groups=list(parent.groups),
            prctl={k: v for k, v in parent.prctl.items() if k != "subreaper"})
        child = Task(tid=tgid, tg=tg, kernel=self, comm=t.comm, signal_mask=t.signal_mask)
        tg.tasks.append(child)
        pidns.tasks[tgid] = child
        pidns.groups[tgid] = tg
        parent.children.append(tg)
        mm.attach(stub)
        self._start_child(t, child, stub.pid, flags, stack, ptid, ctid, tls)
        return tgid

    def _start_child(self, t: Task, child: Task, host_tid: int, flags: int, stack: int, ptid: int,
                     ctid: int, tls: int) -> None:
        """The clone(2) work common to a new process and a new thread: the tid words, the
        registers and FP state of the caller (rax 0), then run it."""
        tid_bytes = child.tid.to_bytes(4, "little")
        if flags & CLONE_CHILD_SETTID:
            child.mm.write(ctid, tid_bytes)
        if flags & CLONE_PARENT_SETTID:
            t.mm.write(ptid, tid_bytes)
        if flags & CLONE_CHILD_CLEARTID:
            child.clear_child_tid = ctid
        regs = ptrace.copy_regs(t.regs)
        regs.rax = 0
        regs.orig_rax = MASK64
        if stack:
            regs.rsp = stack
        if flags & CLONE_SETTLS:
            regs.fs_base = tls
        ptrace.set_xstate(host_tid, ptrace.get_xstate(t.host_tid, XSTATE_MAX))
        self._bind(child, host_tid, regs)
        if not self.paused:
            self._resume(child)

    def _stop_thread(self, task: Task) -> None:
        """Bring a running thread to a stop (so a syscall can be injected into it)."""
        if task.run is Run.RUNNING:
            if not task.interrupt_pending:
                ptrace.interrupt(task.host_tid)
                task.interrupt_pending = True
            while task.run is Run.RUNNING:
                pid, status = os.waitpid(task.host_tid, WALL)
                saved, self.paused = self.paused, True
                try:
                    self._on_status(pid, status)
                finally:
                    self.paused = saved

    def execve(self, t: Task, path: bytes, argv: list[bytes], envp: list[bytes], depth: int = 0) -> None:
        """execve(2): replace the caller's program. Fails with no side effect, or succeeds
        with the task's registers set to the new program's entry."""
        parent, name, node = self.fs.walk(t.fs.cwd, t.fs.root, path)
        if node is None:
            raise SyscallError(errno.ENOENT)
        if node.is_dir() or not stat.S_ISREG(node.mode) or not node.mode & 0o111:
            raise SyscallError(errno.EACCES)
        data, pages = self._program_file(node)
        if data[:2] == b"#!":
            # A script: run its interpreter with the script's path (binfmt_script).
            head = data[:258]
            if pages is not None:
                self.file_cache.forget_unused(pages)
            if depth >= 4:
                raise SyscallError(errno.ELOOP)
            end = head.find(b"\n")
            line = (head[2:end] if end >= 0 else head[2:])[:255].strip()
            interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
            if not interp:
                raise SyscallError(errno.ENOEXEC)
            new_argv = [interp] + ([arg.strip()] if arg.strip() else []) + [path] + argv[1:]
            self.execve(t, interp, new_argv, envp, depth + 1)
            return
        mm = MemoryManager(memfile=self.memfile, cache=self.file_cache)
        try:
            exe = _resolved(parent, name)
            image, entry, sp = self._load_program(mm, data, pages, exe, argv, envp, path, t.fs.cwd)
        except BaseException:
            mm.release_all()
            raise
        # The point of no return: the old program is gone from here on.
        tg = t.tg
        stub = tg.mm.stub
        for other in [x for x in tg.tasks if x is not t]:
            self._stop_thread(other)
            self._drop(other)
            tg.tasks.remove(other)
            stub.exit_thread(other.host_tid)
        stub.unmap(0, APP_TOP)
        tg.mm.release_all()
        tg.mm = mm
        mm.attach(stub)
        for fd in sorted(tg.fds.cloexec):
            tg.fds.close(fd)
        tg.sigactions = {n: a for n, a in tg.sigactions.items() if a.handler == SIG_IGN}
        tg.argv = list(argv)
        tg.exe = exe
        t.comm = os.path.basename(path).decode(errors="replace")[:15]  # execve(2): the name it was run by
        regs = t.regs
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                     "r12", "r13", "r14", "r15", "fs_base", "gs_base"):
            setattr(regs, name, 0)
        regs.rip = entry
        regs.rsp = sp
        ptrace.set_xstate(t.host_tid, stub.base_xstate)

    def exit_task(self, task: Task, status: int) -> None:
        """exit(2) of one thread; the last thread's exit ends its thread group."""
        if len(task.tg.tasks) <= 1:
            self.exit_group(task.tg, status)
            return
        exit_robust_list(task)
        self._clear_child_tid(task)
        self._drop(task)
        task.tg.tasks.remove(task)
        task.tg.mm.stub.exit_thread(task.host_tid)

    def _clear_child_tid(self, task: Task) -> None:
        """set_tid_address(2): at thread exit, zero the word and wake one futex waiter
        (how pthread_join learns a thread is gone)."""
        if task.clear_child_tid:
            with contextlib.suppress(SyscallError):
                task.mm.write(task.clear_child_tid, bytes(4))
                futex_wake(task, task.clear_child_tid, 1)

    def clone_thread(self, t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
        """clone(2) with CLONE_THREAD: a new task in the caller's process, run by a new
        host thread of the same stub."""
        tg = t.tg
        stub = tg.mm.stub
        host_tid = stub.clone_thread(t.host_tid)
        pidns = self.tasks.pidns
        tid = pidns.allocate()
        child = Task(tid=tid, tg=tg, kernel=self, comm=t.comm, signal_mask=t.signal_mask)
        tg.tasks.append(child)
        pidns.tasks[tid] = child
        self._start_child(t, child, host_tid, flags, stack, ptid, ctid, tls)
        return tid

    def exit_group(self, tg: ThreadGroup, status: int) -> None:
        """End every task of `tg` with wait status `status`; init's exit ends the sandbox."""
        if tg.exit_status is not None:
            return
        for task in list(tg.tasks):
            exit_robust_list(task)
            self._drop(task)
        tg.tasks.clear()
        stub = tg.mm.stub
        if stub is not None:
            stub.kill()
            tg.mm.stub = None
        fd = self.faults.pop(tg.mm, None)
        if fd is not None:
            self.selector.unregister(fd)
            os.close(fd)
        tg.mm.release_all()
        for f in tg.fds.files.values():
            node = getattr(f, "node", None)
            if node is not None and getattr(node, "locks", None):
                release_owner(self.fs, node, tg.tgid)
        tg.fds.close_all()
        tg.exit_status = status
        init = self.tasks.init
        for child in tg.children:
            if child.pdeath_signal and child.exit_status is None:
                self.send_signal(child, child.pdeath_signal)
            if tg is not init:
                child.parent = init
                init.children.append(child)
        if tg is not init:
            tg.children = []
        parent = tg.parent
        if parent is not None and parent.exit_status is None:
            act = parent.sigaction(SIGCHLD)
            if act.handler == SIG_IGN or act.flags & SA_NOCLDWAIT:
                self.reap(tg)  # sigaction(2): the child does not become a zombie
            else:
                code = (CLD_DUMPED if status & CORE_DUMPED else CLD_KILLED) if status & 0x7F else CLD_EXITED
                value = status & 0x7F if status & 0x7F else (status >> 8) & 0xFF
                self.send_signal(parent, SIGCHLD, siginfo(SIGCHLD, code, tg.tgid, 0, value))
            parent.child_exit.notify()
        if self.on_exit is not None:
            self.on_exit(tg)
        if tg is init:
            self.exit_status = status
            for other in list(self.tasks.pidns.groups.values()):
                if other.exit_status is None:
                    self.exit_group(other, SIGKILL)

    def reap(self, tg: ThreadGroup) -> None:
        """Forget an exited child: its pid is free again."""
        if tg.parent is not None and tg in tg.parent.children:
            tg.parent.children.remove(tg)
        self.tasks.pidns.groups.pop(tg.tgid, None)

    def _drop(self, task: Task) -> None:
        task.run = Run.DEAD
        for q in task.waiting:
            if task in q.waiters:
                q.waiters.remove(task)
        task.waiting = ()
        task.timer_token += 1
        self.by_host.pop(task.host_tid, None)
        self.tasks.pidns.tasks.pop(task.tid, None)

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
            tg.pending &= ~sigbit(signal.SIGCONT)
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
        if not holder.pending & bit:  # standard signals do not queue: one pending at most
            holder.pending |= bit
            holder.siginfo[sig] = info
        tg.signal_wait.notify()
        for t in targets:
            if not t.signal_mask & bit:
                self._kick(t)
                break

    def _deliverable(self, t: Task) -> int:
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
        (signal(7), "Interruption of system calls"), deliver, and let the task run."""
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
        if nr in PARTIAL_RESULT_SYSCALLS and progress:
            regs.rax = progress
        elif act.handler not in (SIG_DFL, SIG_IGN) and act.flags & SA_RESTART and nr not in NEVER_RESTARTED:
            regs.rip -= 2  # make the syscall again once the handler returns
            regs.rax = regs.orig_rax
        else:
            regs.rax = -errno.EINTR & MASK64
            if nr in SLEEP_SYSCALLS and progress is not None:
                self._write_remaining(t, nr, progress)
        t.restart = None
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
            holder.pending &= ~bit
            info = holder.siginfo.pop(sig, None) or siginfo(sig, SI_USER)
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
            return self._setup_frame(t, sig, act, info)

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
        fpstate = ptrace.get_xstate(t.host_tid, XSTATE_MAX)
        frame, data, fp_addr = build_frame(regs, sp, old_mask, t.altstack, fpstate, info, act.restorer)
        try:
            t.mm.write(fp_addr, xsave_for_frame(fpstate, self.features.xcr0))
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

    def sigreturn(self, t: Task) -> int:
        """rt_sigreturn(2): restore the context the handler's frame saved."""
        regs = t.regs
        frame = regs.rsp - 8
        try:
            uc = parse_frame(t.mm.read(frame + 8, UCONTEXT_SIZE))
            fpstate = t.mm.read(uc["fpstate"], max(self.features.xsave_size, 512)) if uc["fpstate"] else None
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
        ss_sp, ss_flags, ss_size = uc["stack"]
        if not ss_flags & SS_ONSTACK:
            t.altstack = (ss_sp, ss_flags & ~SS_ONSTACK, ss_size)
        if fpstate is not None:
            ptrace.set_xstate(t.host_tid, _fit_xstate(fpstate, FeatureSet.host()))
        return regs.rax

    def cpu_time_ns(self, task: Task) -> int:
        if task.host_tid < 0:
            return task.cpu_base
        return task.cpu_base + _host_cpu_ns(task.host_tid) - task.cpu_start

    def shutdown(self) -> None:
        """Kill every stub (the sandbox is being torn down)."""
        self.kill_stubs()
        self.collect_stops()
        self.memfile.stop_loading()

    def kill_stubs(self) -> None:
        """SIGKILL every stub, without waiting: no task runs again."""
        for tg in self.tasks.pidns.groups.values():
            if tg.mm.stub is not None:
                tg.mm.stub.kill()

    # -- save and restore ---------------------------------------------------------------------------

    def save(self, f: IO[bytes], compress: bool = True, meta: dict | None = None,
             progress: Callable[[int, int], None] | None = None, store_file_pages: bool = False) -> dict:
        """Write a checkpoint image of this (paused) kernel to `f`. Returns the image summary.

        Order (as gVisor's Kernel.SaveTo): time stopped, CPU features, kernel graph, memory.
        `progress(done, total)` is called as memory bytes are written. Host files' cached
        pages are references the restore reads back, unless `store_file_pages`.
        """
        if not self.paused:
            raise SnapboxError("internal: save needs a paused kernel")
        self.memfile.finish_loading()
        self.timekeeper.stop()
        try:
            for t in self.tasks.live_tasks():
                regs = ptrace.copy_regs(t.regs)
                t.saved_syscall = -1
                if t.run is Run.SYSCALL:
                    # Rewind to the syscall instruction: the task will make the call again.
                    t.saved_syscall = regs.orig_rax
                    regs.rip -= 2
                    regs.rax = regs.orig_rax
                t.saved_regs = ptrace.regs_to_tuple(regs)
                t.saved_fpstate = ptrace.get_xstate(t.host_tid, max(self.features.xsave_size, 512))
                t.cpu_base = self.cpu_time_ns(t)
                t.cpu_start = _host_cpu_ns(t.host_tid)
            header = {"snapbox": __version__, "created": time.time(), "host": os.uname().nodename,
                      "kernel": os.uname().release, "compression": "zstd" if compress else "none"}
            header.update(meta or {})
            w = ImageWriter(f, header)
            with w.section("cpuid") as s:
                s.write_chunk(encode_graph(self.features))
            skip = self.file_cache.before_image(store_file_pages)
            graph, stats = encode_graph_with_stats(self)
            with w.section("kernel") as s:
                s.write_chunk(zstandard.ZstdCompressor(level=3).compress(graph))
            total = self.memfile.allocated
            report = (lambda done: progress(done, total)) if progress else None
            with w.section("memory") as s:
                for chunk, crc in self.memfile.save_chunks(compress, lambda: w.pos, report, skip):
                    s.write_chunk(chunk, crc)
            summary = {"graph_bytes": len(graph), "graph_sha256": hashlib.sha256(graph).digest(), "types": stats,
                       "memory_allocated": self.memfile.allocated - self.file_cache.unread_bytes(),
                       "memory_saved": self.memfile.saved_bytes,
                       "file_references": len(skip), "file_bytes_referenced": self.file_cache.referenced_bytes()}
            w.finish(summary)
            summary["sections"] = w.summary
            return summary
        finally:
            for t in self.tasks.live_tasks():
                t.saved_regs = ()
                t.saved_fpstate = b""
                t.saved_syscall = -1

    @classmethod
    def read_image(cls, f: IO[bytes], ctx: LoadContext, check_cpu: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   load_memory: bool = True, lazy: bool = False) -> tuple[Kernel, dict]:
        """Read a whole image: the CPU feature set first (checked against this host unless
        `check_cpu` is false), then the graph, then memory (checked, and copied into the
        MemoryFile if `load_memory`), then the trailer. Starts nothing. Returns the kernel
        and the trailer's summary.

        With `lazy` (and `f` a regular file), memory stays in the image: only its chunks'
        places are read here, and each chunk is loaded (and checked) when first needed, or
        by background threads meanwhile. A read lease on the image makes whoever opens it
        to change it wait until all is loaded."""
        r = ImageReader(f)
        features = decode_graph(r.read_section("cpuid"))
        if not isinstance(features, FeatureSet):
            raise ImageError("image cpuid section does not hold a CPU feature set")
        if check_cpu:
            features.check_host(FeatureSet.host())
        try:
            raw = zstandard.ZstdDecompressor().decompress(r.read_section("kernel"),
                                                         max_output_size=MAX_KERNEL_SECTION)
        except zstandard.ZstdError as e:
            raise ImageError(f"image kernel section is corrupt ({e})") from None
        kernel = decode_graph(raw, ctx)
        if not isinstance(kernel, Kernel):
            raise ImageError("image kernel section does not hold a kernel")
        kernel.paused = True
        total = kernel.memfile.allocated
        report = (lambda done: progress(done, total)) if progress else None
        if load_memory and lazy and _is_file(f):
            kernel._load_lazily(r, f)
        elif load_memory:
            kernel.memfile.load_chunks(r.section("memory"), report)
        else:
            for _ in r.section("memory"):
                pass
        try:
            summary = r.finish()
            digest = summary.get("graph_sha256")
            if digest is not None and digest != hashlib.sha256(raw).digest():
                # The chunks' checksums held, yet the graph is not the one written: whatever
                # it says (of host files, say) is not to be believed.
                raise ImageError("image is corrupt (its kernel graph does not match the trailer's digest)")
            if load_memory:
                try:
                    kernel.file_cache.restore()
                except MemoryLost as e:
                    kernel._memory_lost(e)  # a lazy restore: the sandbox ends once started
        except BaseException:
            kernel.memfile.stop_loading()  # a lazy restore's loaders
            raise
        summary["meta"] = r.meta
        summary["format"] = r.version
        summary["sections"] = r.sections_read
        return kernel, summary

    @classmethod
    def load(cls, f: IO[bytes], ctx: LoadContext,
             progress: Callable[[int, int], None] | None = None) -> Kernel:
        """Restore from an image: read it whole and checked, then give every process a new
        stub with its memory mapped and its registers set. No task runs until start()."""
        kernel, _ = cls.read_image(f, ctx, progress=progress)
        kernel.attach_stubs()
        return kernel

    def _load_lazily(self, r: ImageReader, f: IO[bytes]) -> None:
        self.loaded = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.selector.register(self.loaded, selectors.EVENT_READ, lambda m: self._memory_loaded())
        fd = os.dup(f.fileno())
        # A read lease: whoever opens the image to write or truncate it waits (and SIGIO tells
        # us) until the rest of memory is loaded and the image closed.
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as e:
            log.warning("no lease on the image (%s): it must not change until memory is loaded", e.strerror)
        index = r.section_index("memory", CHUNK_HEAD_SIZE)
        self.memfile.load_lazily(fd, index, lambda: os.eventfd_write(self.loaded, 1))

    def _image_changing(self) -> None:
        """Someone opens the image of a lazy restore to change it: load the rest first."""
        if self.memfile.lazy is None:
            return
        log.info("the image is being changed: loading the rest of memory now")
        try:
            self.memfile.finish_loading()  # closes the image: the lease goes, their open goes on
        except ImageError as e:
            self._memory_lost(e)

    def _catch_first_touches(self, mm: MemoryManager) -> None:
        """Have the stub of `mm` stop at its first touch of memory a lazy restore has not
        loaded yet, and tell us."""
        lazy = self.memfile.lazy
        ranges = [(v.start, v.end - v.start) for v in mm.vmas if lazy.pending(v.offset, v.end - v.start)]
        if not ranges:
            return
        try:
            fd = uffd.open_for(mm.stub)
        except StubError as e:
            # userfaultfd(2) may be filtered out (a container's seccomp profile): load it all now.
            log.warning("%s: memory is loaded before the program runs", e)
            try:
                self.memfile.finish_loading()
            except MemoryLost as lost:
                self._memory_lost(lost)
            return
        self.faults[mm] = fd
        for start, length in ranges:
            uffd.register(fd, start, length)
        self.selector.register(fd, selectors.EVENT_READ, lambda m: self._on_faults(mm, fd))

    def _on_faults(self, mm: MemoryManager, fd: int) -> None:
        for addr in uffd.faults(fd):
            vma = mm.find(addr)
            if vma is not None:
                try:
                    self.memfile.ensure_loaded(vma.offset + (addr - vma.start), PAGE_SIZE)
                except ImageError as e:
                    self._memory_lost(e)
                    return
            uffd.resolve(fd, addr)

    def _memory_loaded(self) -> None:
        """The lazy restore's background threads are done (or one failed)."""
        try:
            self.memfile.finish_loading()
        except ImageError as e:
            self._memory_lost(e)
            return
        self._stop_catching()

    def _stop_catching(self) -> None:
        for fd in self.faults.values():
            self.selector.unregister(fd)
            os.close(fd)  # the registrations go with it, and waiting threads wake
        self.faults.clear()
        if self.loaded >= 0:
            self.selector.unregister(self.loaded)
            os.close(self.loaded)
            self.loaded = -1

    def _memory_lost(self, e: MemoryLost) -> None:
        """Memory a lazy restore left in the image cannot be read back: the sandbox ends,
        its processes killed with SIGKILL (before start(): as soon as it starts)."""
        if not self.started:
            self.memory_error = self.memory_error or e
            return
        if self.memfile.lazy is None:
            return  # ended already, by a loss found before
        log.error("memory could not be restored: %s; every process is killed", e)
        # No more loading: freeing the processes' memory must not go back to the image.
        self.memfile.stop_loading()
        self._stop_catching()
        for tg in list(self.tasks.pidns.groups.values()):
            self.exit_group(tg, SIGKILL)

    def attach_stubs(self) -> None:
        """After read_image: give every process a new stub with its memory mapped and its
        registers set; the clock stays stopped until start()."""
        self.timekeeper.stopped = True
        host = FeatureSet.host()
        for tg in self.tasks.pidns.groups.values():
            if tg.exit_status is not None or not tg.tasks:
                continue
            stub = Stub.spawn(self.memfile.fd)
            tg.mm.attach(stub, lazy=self.memfile.lazy is not None)
            if self.memfile.lazy is not None:
                self._catch_first_touches(tg.mm)
            for i, t in enumerate(tg.tasks):
                if not t.saved_regs:
                    raise ImageError(f"image holds task {t.tid} without registers")
                host_tid = stub.pid if i == 0 else stub.clone_thread(stub.pid)
                regs = ptrace.regs_from_tuple(t.saved_regs)
                regs.orig_rax = MASK64
                ptrace.set_xstate(host_tid, _fit_xstate(t.saved_fpstate, host))
                self._bind(t, host_tid, regs)
                t.saved_regs = ()
                t.saved_fpstate = b""


def _is_file(f: IO[bytes]) -> bool:
    """Whether `f` is a regular file (an image a lazy restore can go back to), not a pipe."""
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _fit_xstate(data: bytes, host: FeatureSet) -> bytes:
    """An XSAVE area from the image, sized for this host's XSAVE layout.

    The host check guarantees the image's state components are a subset of the host's,
    and the standard XSAVE layout puts each component at a fixed offset, so the area only
    needs padding (absent components are in their initial state) or trimming to the size
    the host's kernel expects; XSTATE_BV keeps to the host's enabled components.
    """
    size = max(host.xsave_size, 512)
    out = bytearray(data[:size].ljust(size, b"\0"))
    if size >= 520:
        bv = int.from_bytes(out[512:520], "little") & (host.xcr0 or 0x3)
        out[512:520] = bv.to_bytes(8, "little")
    return bytes(out)


def _resolved(parent, name: str) -> str:
    """The sandbox path of the node named `name` in directory `parent` (symlinks resolved)."""
    base = parent.path()
    return base + name if base.endswith("/") else f"{base}/{name}"


def _lowest(mask: int) -> int:
    """The lowest-numbered signal in a sigset."""
    return (mask & -mask).bit_length()


_SIGNAL_FD = -1
_SFD_NONBLOCK_CLOEXEC = os.O_NONBLOCK | os.O_CLOEXEC
_SIGINFO_SIZE = 128  # struct signalfd_siginfo, ssi_signo first
# Read from the signalfd: SIGCHLD (stubs stopping), SIGIO (a lazy restore's image lease breaking).
SENTRY_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGIO})


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


def _host_cpu_ns(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0

