"""Tasks, thread groups and the PID namespace."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snapbox.kernel.creds import CapSets, Creds
from snapbox.kernel.fd import NR_OPEN, FDTable, drop_ref
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.seccomp import SeccompFilter
from snapbox.kernel.vfs import Dir
from snapbox.kernel.waiter import WaitQueue
from snapbox.platform import ptrace
from snapbox.state import nosave, savable

if TYPE_CHECKING:
    from snapbox.kernel.kernel import Kernel


class Run(enum.Enum):
    """Where a task's host thread is. Never saved: a saved task is always stopped."""

    STOPPED = "stopped"  # in a ptrace stop outside any syscall; its registers are exact
    RUNNING = "running"  # executing application code on the host
    SYSCALL = "syscall"  # in a syscall whose handler has not completed: at a ptrace stop, or waiting
    # for the answer to a seccomp notification (Task.notif)
    DEAD = "dead"


RLIM_INFINITY = (1 << 64) - 1
# Resource limits' defaults, by RLIMIT_* number, as a fresh Linux login shell sees them.
RLIMIT_DEFAULTS = {
    0: (RLIM_INFINITY, RLIM_INFINITY),  # CPU
    1: (RLIM_INFINITY, RLIM_INFINITY),  # FSIZE
    2: (RLIM_INFINITY, RLIM_INFINITY),  # DATA
    3: (8 << 20, RLIM_INFINITY),  # STACK
    4: (0, RLIM_INFINITY),  # CORE
    5: (RLIM_INFINITY, RLIM_INFINITY),  # RSS
    6: (4096, 4096),  # NPROC
    7: (1024, NR_OPEN),  # NOFILE
    8: (8 << 20, 8 << 20),  # MEMLOCK
    9: (RLIM_INFINITY, RLIM_INFINITY),  # AS
    10: (RLIM_INFINITY, RLIM_INFINITY),  # LOCKS
    11: (4096, 4096),  # SIGPENDING
    12: (819200, 819200),  # MSGQUEUE
    13: (0, 0),  # NICE
    14: (0, 0),  # RTPRIO
    15: (RLIM_INFINITY, RLIM_INFINITY),  # RTTIME
}


@savable
@dataclass(eq=False)
class SigAction:
    """One entry of a thread group's signal handler table (struct k_sigaction)."""

    handler: int = 0  # SIG_DFL (0), SIG_IGN (1) or the handler's address
    flags: int = 0  # SA_* flags
    restorer: int = 0  # sa_restorer: where the handler returns to (rt_sigreturn)
    mask: int = 0  # signals blocked while the handler runs


@savable
@dataclass(eq=False)
class FSContext:
    """A process's root and working directories and its umask."""

    root: Dir
    cwd: Dir
    umask: int = 0o022

    def copy(self) -> FSContext:
        return FSContext(root=self.root, cwd=self.cwd, umask=self.umask)


@savable
@dataclass(eq=False)
class ThreadGroup:
    """A process: the tasks sharing one address space, fd table and signal handlers."""

    tgid: int
    mm: MemoryManager
    fds: FDTable
    fs: FSContext
    parent: ThreadGroup | None = None
    tasks: list = field(default_factory=list)  # live Tasks; the leader first
    sigactions: dict = field(default_factory=dict)  # signal number -> SigAction
    argv: list = field(default_factory=list)  # bytes, as passed to execve (for ps, inspect)
    exe: str = ""  # sandbox path of the executable
    rlimits: dict = field(default_factory=dict)  # RLIMIT_* -> (soft, hard), for those set
    pending: int = 0  # signals sent to the process and not yet delivered (sigset bits)
    siginfo: dict = field(default_factory=dict)  # signal -> queued siginfo_t bytes (see queue_signal)
    signal_wait: WaitQueue = field(default_factory=WaitQueue)  # sigtimedwait callers
    exit_status: int | None = None  # wait(2) status once the whole group has exited
    children: list = field(default_factory=list)  # child ThreadGroups, zombies until reaped
    cpu_ns: int = 0  # CPU time its threads used, counted when the group exits
    children_cpu_ns: int = 0  # that of its children waited for, and of theirs (RUSAGE_CHILDREN)
    maxrss: int = 0  # the highest resident size (bytes) of the address spaces it has left (exec, exit)
    io_done: list = field(default_factory=lambda: [0, 0, 0, 0])  # Task.io of its threads that have ended
    parent_tid: int = 0  # the thread of its parent that made it (/proc/PID/task/TID/children)
    exit_signal: int = 17  # what its exit sends its parent (SIGCHLD; a "clone" child's other, or none)
    children_maxrss: int = 0  # the highest maxrss of its children waited for, and of theirs
    child_exit: WaitQueue = field(default_factory=WaitQueue)  # wait4 callers; fired when a child exits
    pgid: int = 0  # process group id
    cred: Creds = field(default_factory=Creds)  # its leader's credentials (see `acting`)
    pdeath_signal: int = 0  # PR_SET_PDEATHSIG: sent when the parent exits
    prctl: dict = field(default_factory=dict)  # other prctl(2) settings by name
    job_stopped: int = 0  # the signal that stopped the process (SIGSTOP, ...), 0 when not stopped
    job_report: str = ""  # "stopped" or "continued": a change wait(WUNTRACED/WCONTINUED) has yet to report
    posix_timers: dict = field(default_factory=dict)  # timer_create(2) id -> PosixTimer
    itimer_real: tuple = (0, 0)  # ITIMER_REAL: (sandbox-monotonic deadline or 0, interval) in ns
    itimer_token: int = nosave(default=0)  # bumped to cancel the armed ITIMER_REAL
    # ITIMER_VIRTUAL (1) and ITIMER_PROF (2): which -> (the process's CPU time in ns at which
    # it fires, interval), while armed.
    itimer_cpu: dict = field(default_factory=dict)
    itimer_cpu_token: int = nosave(default=0)  # bumped to stop watching them
    oom_score_adj: int = 0  # /proc/PID/oom_score_adj, -1000..1000
    oom_score_adj_min: int = 0  # the lowest it may be set to without CAP_SYS_RESOURCE
    name: str = ""  # its leader's name (comm), kept for /proc once it is a zombie
    xcpu_at: int = 0  # CPU time (ns) of its next SIGXCPU past RLIMIT_CPU's soft limit (0: at it)
    cpu_limit_token: int = nosave(default=0)  # bumped to stop watching RLIMIT_CPU
    sid: int = 0  # session id
    personality: int = 0  # personality(2): the execution domain (PER_LINUX) and its flags
    # Dynamic XSAVE components (AMX tile data) it asked for with arch_prctl
    # ARCH_REQ_XCOMP_PERM: kept by fork, dropped by execve.
    xfeatures_granted: int = 0
    aio: dict = field(default_factory=dict)  # Linux AIO: context id (its ring's address) -> aio.AioContext
    # A vfork child's parent waits here until the child execs or exits (None: not vforked,
    # or released already).
    vfork_done: WaitQueue | None = None
    # Namespaces of its own (snapbox.kernel.namespaces): a UtsNamespace, an IpcNamespace;
    # None while it shares the sandbox's first ones (the Kernel's).
    uts: object = None
    ipc: object = None
    exited: WaitQueue = field(default_factory=WaitQueue)  # pidfd pollers: fired at its exit and its reaping
    reaped: bool = False  # waited for (or never a zombie): its pid is free

    def sigaction(self, sig: int) -> SigAction:
        return self.sigactions.get(sig) or SigAction()

    def acting(self) -> Creds:
        """The credentials the process acts with now: those of its thread in a syscall, when
        that thread is one of its own, else its leader's (snapbox.kernel.creds)."""
        if self.tasks:
            current = self.tasks[0].kernel.current
            if current is not None and current.tg is self:
                return current.cred
        return self.cred

    @property
    def creds(self) -> list:
        """[ruid, euid, suid, rgid, egid, sgid] of acting()."""
        return self.acting().ids

    @creds.setter
    def creds(self, ids: list) -> None:
        self.acting().ids = list(ids)

    @property
    def groups(self) -> list:
        return self.acting().groups

    @groups.setter
    def groups(self, groups: list) -> None:
        self.acting().groups = list(groups)

    @property
    def fsuid(self) -> int:
        return self.acting().fsuid

    @fsuid.setter
    def fsuid(self, uid: int) -> None:
        self.acting().fsuid = uid

    @property
    def fsgid(self) -> int:
        return self.acting().fsgid

    @fsgid.setter
    def fsgid(self, gid: int) -> None:
        self.acting().fsgid = gid

    @property
    def caps(self) -> CapSets:
        return self.acting().caps

    @caps.setter
    def caps(self, caps: CapSets) -> None:
        self.acting().caps = caps

    @property
    def user_ns(self):
        """The user namespace of acting() (None: the sandbox's first)."""
        return self.acting().user_ns


@savable
@dataclass(eq=False)
class Task:
    """One application thread, run by one host thread of its process's stub."""

    tid: int
    tg: ThreadGroup
    kernel: Kernel
    comm: str = ""  # the thread name (prctl PR_SET_NAME, /proc/pid/comm), at most 15 bytes
    nice: int = 0  # its nice value, -20..19 (setpriority; inherited by its forks and threads)
    ioprio: int = 0  # ioprio_set(2): class << 13 | level (0: none set, the CPU's nice decides)
    affinity: int = 0  # sched_setaffinity(2)'s CPU mask (0: every CPU); inherited by forks and threads
    # /proc/PID/io's rchar, wchar, syscr, syscw: bytes read and written by the read and write
    # families of calls, and how many such calls.
    io: list = field(default_factory=lambda: [0, 0, 0, 0])
    cred: Creds | None = None  # its credentials (None: its group's, as for a process's first thread)
    mempolicy: tuple = (0, 0)  # set_mempolicy(2): (mode, node mask); one node here, so advisory
    signal_mask: int = 0  # blocked signals, bit (n-1) for signal n
    pending: int = 0  # signals sent to this thread and not yet delivered
    siginfo: dict = field(default_factory=dict)  # signal -> queued siginfo_t bytes (see queue_signal)
    altstack: tuple = (0, 2, 0)  # sigaltstack: (ss_sp, ss_flags, ss_size); SS_DISABLE at first
    large_fpstate: bool = False  # it has used a dynamic XSAVE component: its frames hold them
    cpuid_faulting: bool = False  # arch_prctl ARCH_SET_CPUID 0: CPUID raises SIGSEGV
    seccomp_mode: int = 0  # seccomp(2): 0 none, 1 strict, 2 filters (kept by fork, clone, execve)
    seccomp: SeccompFilter | None = None  # its filters, newest first; shared with whoever inherited them
    seccomp_notif: object = None  # seccomp.Notification: a call of its waiting for its filter's supervisor
    saved_mask: int | None = None  # the mask rt_sigsuspend replaced, restored after the handler
    cpu_base: int = 0  # CPU time (ns) used on earlier hosts, before the current stub
    clear_child_tid: int = 0  # set_tid_address(2)
    robust_list: tuple = (0, 0)  # set_robust_list(2): (head address, length)
    # Progress of an interrupted syscall that must survive a block or a checkpoint:
    # (syscall number, value), e.g. a sleep's deadline or bytes already written.
    restart: tuple | None = None
    # fd -> the file a parked call resolved it to, a reference held until the call ends:
    # the call goes on with that file though another thread closes the fd (FDTable.held).
    held: dict = field(default_factory=dict)
    # Registers and XSAVE area, filled in at checkpoint. A task stopped inside a syscall is
    # saved rewound to the syscall instruction, so after restore it simply makes it again.
    saved_regs: tuple = ()
    saved_fpstate: bytes = b""
    saved_syscall: int = -1  # the syscall it was in at checkpoint (-1: none), for inspect
    # Its write to /proc/snapbox/checkpoint: "wanted", then "taken" (saved so: the write
    # made again after a restore returns) or "failed".
    snapshot: str = ""

    host_tid: int = nosave(default=-1)
    run: Run = nosave(default=Run.STOPPED)
    regs: Any = nosave(ptrace.Regs)  # live registers while stopped (ctypes user_regs_struct)
    interrupt_pending: bool = nosave(default=False)  # PTRACE_INTERRUPT sent, stop not yet seen
    # The seccomp notification its host thread waits in for an answer (0: none), and that
    # syscall's (number, arguments, instruction pointer): a task on the fast path has no
    # registers captured.
    notif: int = nosave(default=0)
    call: tuple = nosave(tuple)
    # The result of that syscall when it is to return under ptrace (a signal to take first).
    result: int | None = nosave(default=None)
    waiting: tuple = nosave(tuple)  # WaitQueues this task is parked on
    timer_token: int = nosave(default=0)  # bumped to cancel a pending wake-up timer
    queued: bool = nosave(default=False)  # in the kernel's run queue
    futex_bitset: int = nosave(default=0)  # FUTEX_WAIT_BITSET mask while parked on a futex
    vfork_child: int = 0  # the vfork child it waits for, its signals held till then
    futex_pi: int = nosave(default=0)  # the word of the PI futex it waits to lock (0: none)
    futex_requeue: int = nosave(default=0)  # FUTEX_WAIT_REQUEUE_PI: the PI futex it is to be moved to
    cpu_start: int = nosave(default=0)  # host CPU time (ns) of host_tid when it took this task

    @property
    def mm(self) -> MemoryManager:
        return self.tg.mm

    def __post_init__(self) -> None:
        if self.cred is None:
            self.cred = self.tg.cred

    @property
    def fds(self) -> FDTable:
        return self.tg.fds

    @property
    def fs(self) -> FSContext:
        return self.tg.fs

    def set_restart(self, nr: int, value: Any) -> None:
        """Record progress of syscall `nr` that must survive a block or a checkpoint."""
        self.restart = (int(nr), value)

    def let_go(self) -> None:
        """The call the task was in has ended: drop the files it held (Task.held)."""
        held, self.held = self.held, {}
        for f in held.values():
            drop_ref(f)

    def restart_value(self, nr: int) -> Any:
        """The saved progress of syscall `nr`, if this task is re-entering it."""
        if self.restart is not None and self.restart[0] == nr:
            return self.restart[1]
        return None


SIGRTMIN = 32
RT_QUEUE_MAX = 4096  # queued instances of one real-time signal (RLIMIT_SIGPENDING's default)


def queue_signal(holder: Task | ThreadGroup, sig: int, info: bytes) -> None:
    """Make `sig` pending on a task or a process. A standard signal is pending once at
    most (a second one is merged into the first); real-time signals queue, each instance
    with its own siginfo, delivered in the order sent (signal(7))."""
    bit = 1 << (sig - 1)
    queue = holder.siginfo.setdefault(sig, [])
    if sig < SIGRTMIN and holder.pending & bit:
        return
    if len(queue) < RT_QUEUE_MAX:
        queue.append(info)
    holder.pending |= bit


def take_signal(holder: Task | ThreadGroup, sig: int) -> bytes | None:
    """Dequeue the oldest instance of pending `sig` (its siginfo, None if it carried none);
    the signal stays pending while more instances are queued."""
    queue = holder.siginfo.get(sig)
    if isinstance(queue, bytes):  # an image from before signals queued: one instance
        queue = [queue]
    info = queue.pop(0) if queue else None
    if queue:
        holder.siginfo[sig] = queue
    else:
        holder.siginfo.pop(sig, None)
        holder.pending &= ~(1 << (sig - 1))
    return info


def discard_signals(holder: Task | ThreadGroup, mask: int) -> None:
    """Forget the pending signals in sigset `mask`, every queued instance."""
    holder.pending &= ~mask
    for sig in [s for s in holder.siginfo if mask >> (s - 1) & 1]:
        del holder.siginfo[sig]


@savable
@dataclass(eq=False)
class PIDNamespace:
    """Thread and process ids, as the sandbox sees them."""

    next_id: int = 1
    tasks: dict = field(default_factory=dict)  # tid -> live Task
    groups: dict = field(default_factory=dict)  # tgid -> ThreadGroup, zombies included

    def allocate(self) -> int:
        while self.next_id in self.tasks or self.next_id in self.groups:
            self.next_id += 1
        tid = self.next_id
        self.next_id += 1
        return tid


@savable
@dataclass(eq=False)
class TaskSet:
    """Every task of the sandbox."""

    pidns: PIDNamespace = field(default_factory=PIDNamespace)
    init: ThreadGroup | None = None  # pid 1: when it exits, the sandbox is over

    def live_tasks(self) -> list[Task]:
        return list(self.pidns.tasks.values())
