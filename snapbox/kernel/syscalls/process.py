"""Process syscalls: exit, ids, arch_prctl, thread bookkeeping, resource limits."""

from __future__ import annotations

import errno
import logging
import stat
import struct

from snapbox.kernel.creds import (
    ALL_CAPS, CAP_LAST_CAP, CAP_SETGID, CAP_SETPCAP, CAP_SETUID, NGROUPS_MAX, SECBIT_KEEP_CAPS,
    SECBIT_NO_CAP_AMBIENT_RAISE, SECURE_ALL_BITS, SECURE_ALL_LOCKS, ids_changed, may_ptrace, named,
    own_capable, shown, to_kernel,
)
from snapbox.kernel.userns import may_setgroups
from snapbox.kernel import namespaces
from snapbox.kernel.errors import SyscallError, TaskExit, WouldBlock
from snapbox.kernel.eventfiles import PidFile, pidfd_process
from snapbox.kernel.fd import NR_OPEN, O_NONBLOCK, O_RDWR
from snapbox.kernel.procfs import NsFile
from snapbox.kernel.seccomp import SECCOMP_MODE_FILTER, SECCOMP_MODE_STRICT
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.common import AT_FDCWD, start_dir
from snapbox.kernel.syscalls.info import pack_rusage
from snapbox.kernel.syscalls.seccomp import set_filter, set_strict
from snapbox.kernel.task import RLIMIT_DEFAULTS
from snapbox.kernel.waiter import WaitQueue
from snapbox.platform.cpuid import DYNAMIC_XFEATURES, XFEATURE_MAX
from snapbox.platform.stub import StubError

ARCH_SET_GS = 0x1001
ARCH_SET_FS = 0x1002
ARCH_GET_FS = 0x1003
ARCH_GET_GS = 0x1004
ARCH_GET_CPUID = 0x1011
ARCH_SET_CPUID = 0x1012
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
USER_ADDR_LIMIT = 1 << 47
log = logging.getLogger("snapbox.kernel")

RLIMIT_CPU, RLIMIT_STACK = 0, 3
RLIMIT_NOFILE = 7
_RLIMIT = struct.Struct("<QQ")


@syscall(NR.exit, stopped=True)
def exit_(t, code):
    t.kernel.exit_task(t, (code & 0xFF) << 8)
    raise TaskExit


@syscall(NR.exit_group, stopped=True)
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


@syscall(NR.arch_prctl, stopped=True)
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
    if code == ARCH_GET_CPUID:
        return 0 if t.cpuid_faulting else 1
    if code == ARCH_SET_CPUID:
        # CPUID faulting, as the host offers it: the stub's thread gets it, so CPUID in
        # the program raises SIGSEGV as on Linux (ENODEV where the CPU cannot fault).
        faulting = addr == 0
        if faulting != t.cpuid_faulting:
            try:
                t.tg.mm.stub.arch_prctl(t.host_tid, ARCH_SET_CPUID, int(not faulting))
            except StubError:
                raise SyscallError(errno.ENODEV) from None
            t.cpuid_faulting = faulting
        return 0
    features = t.kernel.features
    if code == ARCH_GET_XCOMP_SUPP:
        t.mm.write(addr, struct.pack("<Q", features.xcr0))
        return 0
    if code == ARCH_GET_XCOMP_PERM:
        t.mm.write(addr, struct.pack("<Q", features.xcr0 & ~DYNAMIC_XFEATURES | t.tg.xfeatures_granted))
        return 0
    if code == ARCH_REQ_XCOMP_PERM:
        if addr >= XFEATURE_MAX:
            raise SyscallError(errno.EINVAL)
        wanted = 1 << addr
        if not wanted & DYNAMIC_XFEATURES & features.xcr0:
            raise SyscallError(errno.EOPNOTSUPP)
        if not t.tg.xfeatures_granted & wanted:
            t.tg.mm.stub.arch_prctl(t.host_tid, ARCH_REQ_XCOMP_PERM, addr)
            t.tg.xfeatures_granted |= wanted
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
            t.fds.limit = min(value[0], NR_OPEN)
        if resource == RLIMIT_CPU:
            t.tg.xcpu_at = 0
            t.kernel.arm_cpu_limit(t.tg)
    return 0


@syscall(NR.getrlimit)
def getrlimit(t, resource, old):
    return prlimit64(t, 0, resource, 0, old)


@syscall(NR.setrlimit)
def setrlimit(t, resource, new):
    return prlimit64(t, 0, resource, new, 0)


SIGCHLD = 17
CLONE_VM, CLONE_SIGHAND, CLONE_PIDFD, CLONE_VFORK, CLONE_THREAD = 0x100, 0x800, 0x1000, 0x4000, 0x10000
CLONE_DETACHED, CLONE_PARENT_SETTID, CLONE_PARENT, CLONE_FS, CLONE_NEWNS = 0x400000, 0x100000, 0x8000, 0x200, 0x20000
CLONE_SETTLS = 0x80000
WNOHANG, WUNTRACED, WEXITED, WCONTINUED, WNOWAIT = 1, 2, 4, 8, 0x01000000
__WNOTHREAD, __WALL, __WCLONE = 0x20000000, 0x40000000, 0x80000000
P_ALL, P_PID, P_PGID, P_PIDFD = 0, 1, 2, 3
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_STOPPED, CLD_CONTINUED = 1, 2, 3, 5, 6


@syscall(NR.unshare)
def unshare(t, flags):
    namespaces.unshare(t, flags)
    return 0


@syscall(NR.setns)
def setns(t, fd, nstype):
    f = t.fds.get(i32(fd))
    if not isinstance(f, NsFile):
        raise SyscallError(errno.EINVAL)  # a pidfd too: joining a process's namespaces is not supported
    namespaces.setns(t, f, i32(nstype))
    return 0


@syscall(NR.fork, stopped=True)
def fork(t):
    return t.kernel.fork(t, SIGCHLD)


@syscall(NR.vfork, stopped=True)
def vfork(t):
    return _vforked(t, NR.vfork, lambda: t.kernel.fork(t, SIGCHLD | CLONE_VM | CLONE_VFORK))


def _vforked(t, nr: int, start) -> int:
    """vfork(2) and clone(2) with CLONE_VFORK: start the child (`start()`, its pid), then
    hold the caller, its signals too, until the child execs or exits."""
    pid = t.restart_value(nr)
    if pid is None:
        pid = start()
        t.kernel.tasks.pidns.groups[pid].vfork_done = WaitQueue()
        t.set_restart(nr, pid)
    child = t.kernel.tasks.pidns.groups.get(pid)
    if child is not None and child.vfork_done is not None:
        t.vfork_child = pid
        raise WouldBlock(child.vfork_done)
    t.vfork_child = 0
    return pid


@syscall(NR.clone, stopped=True)
def clone(t, flags, stack, ptid, ctid, tls, *, nr=NR.clone, pidfd=None):
    """clone(2); clone3 comes here too, with its `pidfd` address (clone's CLONE_PIDFD
    writes the pidfd where CLONE_PARENT_SETTID writes the tid, so not both)."""
    if nr == NR.clone:
        flags &= CLONE_LEGACY_FLAGS
    if flags & CLONE_PIDFD:
        if flags & (CLONE_THREAD | CLONE_DETACHED) or (pidfd is None and flags & CLONE_PARENT_SETTID):
            raise SyscallError(errno.EINVAL)
        pidfd = ptid if pidfd is None else pidfd
    # clone(2)'s EINVALs: a thread shares handlers, handlers are shared with memory, init
    # has no parent to share, and CLONE_NEWNS cannot share a filesystem context.
    if flags & CLONE_THREAD and not flags & CLONE_SIGHAND or flags & CLONE_SIGHAND and not flags & CLONE_VM:
        raise SyscallError(errno.EINVAL)
    if flags & CLONE_PARENT and t.tg is t.kernel.tasks.init or flags & CLONE_NEWNS and flags & CLONE_FS:
        raise SyscallError(errno.EINVAL)
    if flags & CLONE_SETTLS and tls >= USER_ADDR_LIMIT:
        raise SyscallError(errno.EPERM)  # as arch_prctl(ARCH_SET_FS) refuses it
    if flags & CLONE_THREAD:
        namespaces.for_clone(t, flags)
        return t.kernel.clone_thread(t, flags, stack, ptid, ctid, tls)

    def start() -> int:
        pid = t.kernel.fork(t, flags, stack, ptid, ctid, tls)
        if flags & CLONE_PIDFD:
            fd = t.fds.install(PidFile(flags=O_RDWR, group=t.kernel.tasks.pidns.groups[pid]), cloexec=True)
            t.mm.write(pidfd, struct.pack("<i", fd))
        return pid

    if flags & CLONE_VFORK:
        return _vforked(t, nr, start)
    return start()


_CLONE_ARGS = struct.Struct("<QQQQQQQQ")  # flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls


CLONE_ARGS_SIZE_VER0, CLONE_ARGS_SIZE_VER2 = 64, 88
CLONE_LEGACY_FLAGS, CLONE_CLEAR_SIGHAND, CLONE_INTO_CGROUP = 0xFFFFFFFF, 0x100000000, 0x200000000
CSIGNAL = 0xFF


@syscall(NR.clone3, stopped=True)
def clone3(t, args, size):
    """clone3(2): the arguments of clone(2) in a struct clone_args of `size` bytes (a
    larger struct than this kernel knows is fine if its extra bytes are zero); set_tid
    and cgroups are not supported (EINVAL, logged)."""
    if size < CLONE_ARGS_SIZE_VER0:
        raise SyscallError(errno.EINVAL)
    if size > 4096:
        raise SyscallError(errno.E2BIG)
    raw = t.mm.read(args, size)
    if any(raw[CLONE_ARGS_SIZE_VER2:]):
        raise SyscallError(errno.E2BIG)
    raw = raw.ljust(CLONE_ARGS_SIZE_VER2, b"\0")
    flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls = _CLONE_ARGS.unpack(raw[:64])
    set_tid, set_tid_size, cgroup = struct.unpack("<QQQ", raw[64:88])
    if (flags & ~(CLONE_LEGACY_FLAGS | CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP) or flags & CSIGNAL
            or flags & CLONE_CLEAR_SIGHAND and flags & CLONE_SIGHAND or exit_signal > 64
            or flags & (CLONE_THREAD | CLONE_PARENT) and exit_signal or bool(stack) != bool(stack_size)
            or set_tid_size > 32 or set_tid_size and not set_tid or set_tid and not set_tid_size):
        raise SyscallError(errno.EINVAL)
    if set_tid_size or flags & CLONE_INTO_CGROUP:
        log.warning("clone3 with set_tid or CLONE_INTO_CGROUP: not supported (EINVAL)")
        raise SyscallError(errno.EINVAL)
    return clone(t, flags | exit_signal, stack + stack_size, parent_tid, child_tid, tls, nr=NR.clone3, pidfd=pidfd)


PIDFD_NONBLOCK = O_NONBLOCK


@syscall(NR.pidfd_open)
def pidfd_open(t, pid, flags):
    """pidfd_open(2): a pidfd of process `pid` (a zombie too, until it is reaped)."""
    pid = i32(pid)
    if flags & ~PIDFD_NONBLOCK or pid <= 0:
        raise SyscallError(errno.EINVAL)
    tg = t.kernel.tasks.pidns.groups.get(pid)
    if tg is None:
        # A thread that leads no process: EINVAL, as Linux without PIDFD_THREAD.
        raise SyscallError(errno.EINVAL if pid in t.kernel.tasks.pidns.tasks else errno.ESRCH)
    return t.fds.install(PidFile(flags=O_RDWR | (flags & O_NONBLOCK), group=tg), cloexec=True)


@syscall(NR.pidfd_getfd)
def pidfd_getfd(t, pidfd, targetfd, flags):
    """pidfd_getfd(2): a duplicate of another process's fd, for a caller that could ptrace it."""
    if flags:
        raise SyscallError(errno.EINVAL)
    tg = pidfd_process(t, i32(pidfd))
    if not may_ptrace(t.tg, tg):
        raise SyscallError(errno.EPERM)
    return t.fds.install(tg.fds.get(i32(targetfd)), cloexec=True)


def _strings(t, addr: int) -> list[bytes]:
    """A NULL-terminated array of C strings (argv, envp)."""
    out = []
    while addr:
        (ptr,) = struct.unpack("<Q", t.mm.read(addr, 8))
        if not ptr:
            break
        out.append(t.mm.read_cstring(ptr, 1 << 17))
        if len(out) > 1 << 16:
            raise SyscallError(errno.E2BIG)
        addr += 8
    return out


@syscall(NR.execve, stopped=True)
def execve(t, path, argv, envp):
    t.kernel.execve(t, t.mm.read_cstring(path), _strings(t, argv), _strings(t, envp))
    return 0


AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH = 0x100, 0x1000


@syscall(NR.execveat, stopped=True)
def execveat(t, dirfd, path, argv, envp, flags):
    """execve(2) of a path relative to dirfd, or with AT_EMPTY_PATH and an empty path of
    the file dirfd refers to (fexecve), named /dev/fd/N to the program as Linux names it;
    AT_SYMLINK_NOFOLLOW refuses a symbolic link (ELOOP)."""
    dirfd, flags = i32(dirfd), i32(flags)
    if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
        raise SyscallError(errno.EINVAL)
    name = t.mm.read_cstring(path)
    args, env = _strings(t, argv), _strings(t, envp)
    if not name and flags & AT_EMPTY_PATH:
        f = t.fds.get(dirfd)
        node = getattr(f, "node", None)
        if node is None:
            raise SyscallError(errno.EACCES)
        shown = b"/dev/fd/%d" % dirfd
        parent = getattr(f, "parent", None)
        t.kernel.execve(t, shown, args, env, found=(parent, getattr(f, "entry", "") if parent else f.name, node))
        return 0
    if not name:
        raise SyscallError(errno.ENOENT)
    fs = t.kernel.fs
    parent, base, node = fs.walk(start_dir(t, dirfd, name), t.fs.root, name, not flags & AT_SYMLINK_NOFOLLOW,
                                 who=t.tg)
    if node is not None and stat.S_ISLNK(node.mode):
        raise SyscallError(errno.ELOOP)
    if name.startswith(b"/") or dirfd == AT_FDCWD:
        shown = name
    else:
        shown = b"/dev/fd/%d/%s" % (dirfd, name)
    t.kernel.execve(t, shown, args, env, found=(parent, base, node))
    return 0


def _matches(t, child, pid: int, options: int) -> bool:
    """eligible_child: `child` is one the wait asks about by `pid` (wait4's: one process,
    any, this process group or another) and by kind: a "clone" child (whose exit signal
    is not SIGCHLD) only with __WCLONE, the others only without, both with __WALL; with
    __WNOTHREAD, only one the calling thread made."""
    if options & __WNOTHREAD and child.parent_tid != t.tid:
        return False
    if not options & __WALL and (child.exit_signal != SIGCHLD) != bool(options & __WCLONE):
        return False
    if pid > 0:
        return child.tgid == pid
    if pid == -1:
        return True
    return child.pgid == (t.tg.pgid if pid == 0 else -pid)


def _rusage(t, addr: int, child) -> None:
    """wait4's and waitid's rusage: the child's, with its own children's added, as Linux's."""
    if addr:
        ns = child.cpu_ns + child.children_cpu_ns + sum(t.kernel.cpu_time_ns(x) for x in child.tasks)
        maxrss = max(child.maxrss, child.children_maxrss, child.mm.usage()["VmHWM"] if child.tasks else 0)
        t.mm.write(addr, pack_rusage(ns, maxrss))


@syscall(NR.wait4)
def wait4(t, pid, status, options, rusage):
    pid, options = i32(pid), options & 0xFFFFFFFF
    if options & ~(WNOHANG | WUNTRACED | WCONTINUED | __WNOTHREAD | __WALL | __WCLONE):
        raise SyscallError(errno.EINVAL)
    children = [c for c in t.tg.children if _matches(t, c, pid, options)]
    if not children:
        raise SyscallError(errno.ECHILD)
    for child in children:
        if child.exit_status is not None:
            value = child.exit_status
        elif child.job_report == "stopped" and options & WUNTRACED:
            value = (child.job_stopped << 8) | 0x7F
        elif child.job_report == "continued" and options & WCONTINUED:
            value = 0xFFFF
        else:
            continue
        if status:
            t.mm.write(status, struct.pack("<i", value))
        _rusage(t, rusage, child)
        if child.exit_status is not None:
            t.kernel.reap(child)
        else:
            child.job_report = ""
        return child.tgid
    if options & WNOHANG:
        return 0
    raise WouldBlock(t.tg.child_exit)


@syscall(NR.waitid)
def waitid(t, idtype, id_, infop, options, rusage):
    idtype, id_, options = i32(idtype), i32(id_), options & 0xFFFFFFFF
    pidfd = None
    if idtype == P_ALL:
        pid = -1
    elif idtype == P_PID and id_ > 0:
        pid = id_
    elif idtype == P_PGID and id_ >= 0:
        pid = -id_ if id_ else 0
    elif idtype == P_PIDFD:
        f = t.fds.get(id_)
        if not isinstance(f, PidFile):
            raise SyscallError(errno.EBADF)
        pid, pidfd = f.group.tgid, f
    else:
        raise SyscallError(errno.EINVAL)
    if (options & ~(WNOHANG | WNOWAIT | WEXITED | WUNTRACED | WCONTINUED | __WNOTHREAD | __WCLONE | __WALL)
            or not options & (WEXITED | WUNTRACED | WCONTINUED)):
        raise SyscallError(errno.EINVAL)
    # A zombie is no child to a wait that does not ask for exits (wait_task_zombie).
    children = [c for c in t.tg.children
                if _matches(t, c, pid, options) and (options & WEXITED or c.exit_status is None)]
    if not children:
        raise SyscallError(errno.ECHILD)
    for child in children:
        if child.exit_status is not None:
            st = child.exit_status
            if st & 0x7F:
                code, value = (CLD_DUMPED if st & 0x80 else CLD_KILLED), st & 0x7F
            else:
                code, value = CLD_EXITED, (st >> 8) & 0xFF
        elif child.job_report == "stopped" and options & WUNTRACED:
            code, value = CLD_STOPPED, child.job_stopped
        elif child.job_report == "continued" and options & WCONTINUED:
            code, value = CLD_CONTINUED, 18
        else:
            continue
        if infop:
            # siginfo_t: si_signo, si_errno, si_code, (pad), si_pid, si_uid, si_status
            t.mm.write(infop, struct.pack("<iiiiiIi", SIGCHLD, 0, code, 0, child.tgid, 0, value).ljust(128, b"\0"))
        _rusage(t, rusage, child)
        if not options & WNOWAIT:
            if child.exit_status is not None:
                t.kernel.reap(child)
            else:
                child.job_report = ""
        return 0
    if options & WNOHANG:
        if infop:
            t.mm.write(infop, bytes(128))
        return 0
    if pidfd is not None and pidfd.flags & O_NONBLOCK:
        raise SyscallError(errno.EAGAIN)  # pidfd_open(2): a PIDFD_NONBLOCK pidfd's child still runs
    raise WouldBlock(t.tg.child_exit)


def _group(t, pid: int):
    if pid == 0:
        return t.tg
    tg = t.kernel.tasks.pidns.groups.get(pid)
    if tg is None:
        raise SyscallError(errno.ESRCH)
    return tg


@syscall(NR.setpgid)
def setpgid(t, pid, pgid):
    pid, pgid = i32(pid), i32(pgid)
    if pgid < 0:
        raise SyscallError(errno.EINVAL)
    tg = _group(t, pid)
    if tg is not t.tg and tg.parent is not t.tg:
        raise SyscallError(errno.ESRCH)
    if tg.sid == tg.tgid:
        raise SyscallError(errno.EPERM)  # a session leader cannot move
    tg.pgid = pgid or tg.tgid
    return 0


@syscall(NR.getpgid)
def getpgid(t, pid):
    return _group(t, i32(pid)).pgid


@syscall(NR.getpgrp)
def getpgrp(t):
    return t.tg.pgid


@syscall(NR.getsid)
def getsid(t, pid):
    return _group(t, i32(pid)).sid


@syscall(NR.setsid)
def setsid(t):
    tg = t.tg
    # EPERM for a session leader, and while a process group has its pid as id (its own
    # as a group leader, as Linux's ksys_setsid).
    if tg.sid == tg.tgid or any(g.pgid == tg.tgid for g in t.kernel.tasks.pidns.groups.values()):
        raise SyscallError(errno.EPERM)
    tg.sid = tg.pgid = tg.tgid
    return tg.sid


PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE, PR_SET_DUMPABLE = 1, 2, 3, 4
PR_SET_NAME, PR_GET_NAME, PR_GET_SECCOMP, PR_SET_SECCOMP, PR_CAPBSET_READ, PR_CAPBSET_DROP = 15, 16, 21, 22, 23, 24
PR_GET_KEEPCAPS, PR_SET_KEEPCAPS, PR_GET_SECUREBITS, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 7, 8, 27, 28, 47
PR_CAP_AMBIENT_IS_SET, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_LOWER, PR_CAP_AMBIENT_CLEAR_ALL = 1, 2, 3, 4
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 36, 37, 38, 39


@syscall(NR.prctl)
def prctl(t, option, arg2, arg3, arg4, arg5):
    option = i32(option)
    tg = t.tg
    if option == PR_SET_NAME:
        t.comm = t.mm.read_cstring(arg2, 4096)[:15].decode("utf-8", "replace")
        return 0
    if option == PR_GET_NAME:
        t.mm.write(arg2, t.comm.encode()[:15].ljust(16, b"\0"))
        return 0
    if option == PR_SET_PDEATHSIG:
        if not 0 <= arg2 <= 64:
            raise SyscallError(errno.EINVAL)
        tg.pdeath_signal = arg2
        return 0
    if option == PR_GET_PDEATHSIG:
        t.mm.write(arg2, struct.pack("<i", tg.pdeath_signal))
        return 0
    if option == PR_GET_DUMPABLE:
        return tg.prctl.get("dumpable", 1)
    if option == PR_SET_DUMPABLE:
        if arg2 not in (0, 1):
            raise SyscallError(errno.EINVAL)
        tg.prctl["dumpable"] = arg2
        return 0
    if option == PR_GET_SECCOMP:
        return t.seccomp_mode
    if option == PR_SET_SECCOMP:
        if arg2 == SECCOMP_MODE_STRICT:
            return set_strict(t)
        if arg2 == SECCOMP_MODE_FILTER:
            return set_filter(t, 0, arg3)
        raise SyscallError(errno.EINVAL)
    if option in (PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_GET_KEEPCAPS, PR_SET_KEEPCAPS, PR_GET_SECUREBITS,
                  PR_SET_SECUREBITS, PR_CAP_AMBIENT):
        return _prctl_caps(t, option, arg2, arg3, arg4, arg5)
    if option == PR_SET_TIMERSLACK:
        tg.prctl["timerslack"] = arg2 or 50_000
        return 0
    if option == PR_GET_TIMERSLACK:
        return tg.prctl.get("timerslack", 50_000)
    if option == PR_SET_CHILD_SUBREAPER:
        tg.prctl["subreaper"] = int(bool(arg2))
        return 0
    if option == PR_GET_CHILD_SUBREAPER:
        t.mm.write(arg2, struct.pack("<i", tg.prctl.get("subreaper", 0)))
        return 0
    if option == PR_SET_NO_NEW_PRIVS:
        if arg2 != 1 or arg3 or arg4 or arg5:
            raise SyscallError(errno.EINVAL)
        tg.prctl["no_new_privs"] = 1
        return 0
    if option == PR_GET_NO_NEW_PRIVS:
        return tg.prctl.get("no_new_privs", 0)
    raise SyscallError(errno.EINVAL)


def _prctl_caps(t, option: int, arg2: int, arg3: int, arg4: int, arg5: int) -> int:
    """prctl(2)'s capability options: the bounding set, keep-caps, securebits, the ambient set."""
    c = t.tg.caps
    if option == PR_GET_KEEPCAPS:
        return int(bool(c.securebits & SECBIT_KEEP_CAPS))
    if option == PR_SET_KEEPCAPS:
        if arg2 not in (0, 1):
            raise SyscallError(errno.EINVAL)
        if c.securebits & (SECBIT_KEEP_CAPS << 1):  # locked
            raise SyscallError(errno.EPERM)
        c.securebits = c.securebits & ~SECBIT_KEEP_CAPS | (SECBIT_KEEP_CAPS if arg2 else 0)
        return 0
    if option == PR_GET_SECUREBITS:
        return c.securebits
    if option == PR_SET_SECUREBITS:
        new = arg2 & 0xFFFFFFFF
        if new & ~(SECURE_ALL_BITS | SECURE_ALL_LOCKS):
            raise SyscallError(errno.EINVAL)
        locked = (c.securebits & SECURE_ALL_LOCKS) >> 1
        if (locked & (c.securebits ^ new)) or c.securebits & SECURE_ALL_LOCKS & ~new \
                or not own_capable(t.tg, CAP_SETPCAP):
            raise SyscallError(errno.EPERM)
        c.securebits = new
        return 0
    if option == PR_CAP_AMBIENT and arg2 == PR_CAP_AMBIENT_CLEAR_ALL:
        if arg3 or arg4 or arg5:
            raise SyscallError(errno.EINVAL)
        c.ambient = 0
        return 0
    cap = arg3 if option == PR_CAP_AMBIENT else arg2
    if cap > CAP_LAST_CAP or (option == PR_CAP_AMBIENT and (arg4 or arg5)):
        raise SyscallError(errno.EINVAL)
    if option == PR_CAPBSET_READ:
        return c.bounding >> cap & 1
    if option == PR_CAPBSET_DROP:
        if not own_capable(t.tg, CAP_SETPCAP):
            raise SyscallError(errno.EPERM)
        c.bounding &= ~(1 << cap)
        return 0
    if arg2 == PR_CAP_AMBIENT_IS_SET:
        return c.ambient >> cap & 1
    if arg2 == PR_CAP_AMBIENT_RAISE:
        if not c.permitted >> cap & 1 or not c.inheritable >> cap & 1 or c.securebits & SECBIT_NO_CAP_AMBIENT_RAISE:
            raise SyscallError(errno.EPERM)
        c.ambient |= 1 << cap
        return 0
    if arg2 == PR_CAP_AMBIENT_LOWER:
        c.ambient &= ~(1 << cap)
        return 0
    raise SyscallError(errno.EINVAL)


# Identity. The sandbox starts as root; a process may drop to other ids as Linux allows.
# Ids cross the boundary as the caller's user namespace names them (snapbox.kernel.userns).
def _creds(t) -> list[int]:
    return t.tg.creds


def _shown(t, index: int) -> int:
    """creds[index] as the caller's user namespace names it."""
    return shown(t.tg.user_ns, _creds(t)[index], "uid" if index < 3 else "gid")


@syscall(NR.getuid)
def getuid(t):
    return _shown(t, 0)


@syscall(NR.geteuid)
def geteuid(t):
    return _shown(t, 1)


@syscall(NR.getgid)
def getgid(t):
    return _shown(t, 3)


@syscall(NR.getegid)
def getegid(t):
    return _shown(t, 4)


def _named(t, ident: int, kind: str) -> int:
    """An id argument as a kernel id: -1 stays -1 (leave it), one the caller's user
    namespace has no name for is EINVAL."""
    return -1 if i32(ident) == -1 else named(t.tg.user_ns, ident, kind)


def _set_ids(t, base: int, real: int, eff: int, saved: int) -> int:
    """Set creds[base:base+3] (the uids, or the gids at 3) to kernel ids; -1 leaves an id
    as it is. The fs id follows the effective one, and a change of uids adjusts the
    capabilities."""
    tg = t.tg
    old, old_fs = list(tg.creds), (tg.fsuid, tg.fsgid)
    for i, want in enumerate((real, eff, saved)):
        if want != -1:
            tg.creds[base + i] = want
    if base == 0:
        tg.fsuid = tg.creds[1]
        ids_changed(tg, old, old_fs[0])
    else:
        tg.fsgid = tg.creds[4]
    _undumpable_if_changed(tg, old, old_fs)
    return 0


def _undumpable_if_changed(tg, old: list, old_fs: tuple) -> None:
    """commit_creds(): a process whose effective or fs ids change is no longer dumpable
    (fs.suid_dumpable, 0), so that what it held as the old ids is not open to the new."""
    if old[1] != tg.creds[1] or old[4] != tg.creds[4] or old_fs != (tg.fsuid, tg.fsgid):
        tg.prctl["dumpable"] = 0


def _require(t, cap: int, *wants: tuple[int, tuple]) -> None:
    """EPERM unless the caller holds `cap` in its user namespace or each wanted kernel id
    (-1: none) is among those allowed it."""
    if own_capable(t.tg, cap):
        return
    for want, allowed in wants:
        if want != -1 and want not in allowed:
            raise SyscallError(errno.EPERM)


@syscall(NR.setresuid)
def setresuid(t, ruid, euid, suid):
    ruid, euid, suid = (_named(t, x, "uid") for x in (ruid, euid, suid))
    ids = tuple(_creds(t)[0:3])
    _require(t, CAP_SETUID, (ruid, ids), (euid, ids), (suid, ids))
    return _set_ids(t, 0, ruid, euid, suid)


@syscall(NR.setresgid)
def setresgid(t, rgid, egid, sgid):
    rgid, egid, sgid = (_named(t, x, "gid") for x in (rgid, egid, sgid))
    ids = tuple(_creds(t)[3:6])
    _require(t, CAP_SETGID, (rgid, ids), (egid, ids), (sgid, ids))
    return _set_ids(t, 3, rgid, egid, sgid)


@syscall(NR.setuid)
def setuid(t, uid):
    uid = named(t.tg.user_ns, uid, "uid")
    if own_capable(t.tg, CAP_SETUID):
        return _set_ids(t, 0, uid, uid, uid)
    _require(t, CAP_SETUID, (uid, (_creds(t)[0], _creds(t)[2])))  # setuid(2): the real or saved uid
    return _set_ids(t, 0, -1, uid, -1)


@syscall(NR.setgid)
def setgid(t, gid):
    gid = named(t.tg.user_ns, gid, "gid")
    if own_capable(t.tg, CAP_SETGID):
        return _set_ids(t, 3, gid, gid, gid)
    _require(t, CAP_SETGID, (gid, (_creds(t)[3], _creds(t)[5])))
    return _set_ids(t, 3, -1, gid, -1)


def _set_re(t, base: int, real: int, eff: int, cap: int) -> int:
    """setre[ug]id(2): unprivileged, the real id may become the effective one, the
    effective one the real or saved one; the saved id becomes the new effective one when
    the real one is set, or the effective one to other than the old real one."""
    kind = "uid" if base == 0 else "gid"
    real, eff = _named(t, real, kind), _named(t, eff, kind)
    r, e, saved_id = _creds(t)[base : base + 3]
    _require(t, cap, (real, (r, e)), (eff, (r, e, saved_id)))
    new_eff = e if eff == -1 else eff
    saved = new_eff if real != -1 or (eff != -1 and new_eff != r) else -1
    return _set_ids(t, base, real, eff, saved)


@syscall(NR.setreuid)
def setreuid(t, ruid, euid):
    return _set_re(t, 0, ruid, euid, CAP_SETUID)


@syscall(NR.setregid)
def setregid(t, rgid, egid):
    return _set_re(t, 3, rgid, egid, CAP_SETGID)


@syscall(NR.setfsuid)
def setfsuid(t, fsuid):
    """setfsuid(2): returns the old fs uid, and sets it if allowed (a privileged caller,
    or one of the real, effective, saved or fs uids)."""
    tg = t.tg
    old = tg.fsuid
    want = to_kernel(tg.user_ns, fsuid, "uid") if i32(fsuid) != -1 else None
    if want is not None and (own_capable(tg, CAP_SETUID) or want in (*tg.creds[0:3], old)):
        tg.fsuid = want
        ids_changed(tg, list(tg.creds), old)
        _undumpable_if_changed(tg, list(tg.creds), (old, tg.fsgid))
    return shown(tg.user_ns, old, "uid")


@syscall(NR.setfsgid)
def setfsgid(t, fsgid):
    tg = t.tg
    old = tg.fsgid
    want = to_kernel(tg.user_ns, fsgid, "gid") if i32(fsgid) != -1 else None
    if want is not None and (own_capable(tg, CAP_SETGID) or want in (*tg.creds[3:6], old)):
        tg.fsgid = want
        _undumpable_if_changed(tg, list(tg.creds), (tg.fsuid, old))
    return shown(tg.user_ns, old, "gid")


@syscall(NR.getresuid)
def getresuid(t, ruid, euid, suid):
    for addr, index in zip((ruid, euid, suid), range(3)):
        t.mm.write(addr, struct.pack("<I", _shown(t, index)))
    return 0


@syscall(NR.getresgid)
def getresgid(t, rgid, egid, sgid):
    for addr, index in zip((rgid, egid, sgid), range(3, 6)):
        t.mm.write(addr, struct.pack("<I", _shown(t, index)))
    return 0


@syscall(NR.getgroups)
def getgroups(t, size, lst):
    groups = t.tg.groups
    size = i32(size)
    if size == 0:
        return len(groups)
    if size < len(groups):
        raise SyscallError(errno.EINVAL)
    ns = t.tg.user_ns
    t.mm.write(lst, struct.pack(f"<{len(groups)}I", *(shown(ns, g, "gid") for g in groups)))
    return len(groups)


@syscall(NR.setgroups)
def setgroups(t, size, lst):
    """setgroups(2): CAP_SETGID in the caller's user namespace, which must allow it
    (/proc/PID/setgroups, and its gid_map written: EPERM), and name every group (EINVAL)."""
    ns = t.tg.user_ns
    if not own_capable(t.tg, CAP_SETGID) or not may_setgroups(ns):
        raise SyscallError(errno.EPERM)
    size = i32(size)
    if size < 0 or size > NGROUPS_MAX:
        raise SyscallError(errno.EINVAL)
    groups = struct.unpack(f"<{size}I", t.mm.read(lst, 4 * size)) if size else ()
    t.tg.groups = sorted(named(ns, g, "gid") for g in groups)  # Linux keeps them sorted
    return 0


CAP_V1, CAP_V2, CAP_V3 = 0x19980330, 0x20071026, 0x20080522  # _LINUX_CAPABILITY_VERSION_*
_CAP_DATA = struct.Struct("<III")  # struct __user_cap_data_struct: effective, permitted, inheritable


class _UnknownVersion(SyscallError):
    def __init__(self) -> None:
        super().__init__(errno.EINVAL)


def _cap_header(t, header: int) -> tuple[int, int]:
    """capget/capset's header: (words of data, pid); an unknown version is answered with
    the one the kernel prefers, and EINVAL."""
    version, pid = struct.unpack("<Ii", t.mm.read(header, 8))
    if version not in (CAP_V1, CAP_V2, CAP_V3):
        t.mm.write(header, struct.pack("<I", CAP_V3))
        raise _UnknownVersion()
    if pid < 0:
        raise SyscallError(errno.EINVAL)
    return (1 if version == CAP_V1 else 2), pid


@syscall(NR.capget)
def capget(t, header, data):
    try:
        words, pid = _cap_header(t, header)
    except _UnknownVersion:
        if not data:
            return 0  # capget(2): how a program asks which version the kernel prefers
        raise
    target = t if pid == 0 else t.kernel.tasks.pidns.tasks.get(pid)
    if target is None:
        raise SyscallError(errno.ESRCH)
    if data:
        c = target.tg.caps
        t.mm.write(data, b"".join(_CAP_DATA.pack(c.effective >> (32 * i) & 0xFFFFFFFF,
                                                 c.permitted >> (32 * i) & 0xFFFFFFFF,
                                                 c.inheritable >> (32 * i) & 0xFFFFFFFF) for i in range(words)))
    return 0


@syscall(NR.capset)
def capset(t, header, data):
    """capset(2): only the caller's own sets; permitted may only shrink, effective stay
    within it, and inheritable gain only what is permitted (or, with CAP_SETPCAP, what
    the bounding set holds)."""
    words, pid = _cap_header(t, header)
    if pid not in (0, t.tid):
        raise SyscallError(errno.EPERM)
    raw = t.mm.read(data, _CAP_DATA.size * words)
    sets = [0, 0, 0]
    for i in range(words):
        for j, value in enumerate(_CAP_DATA.unpack_from(raw, i * _CAP_DATA.size)):
            sets[j] |= value << (32 * i)
    effective, permitted, inheritable = (x & ALL_CAPS for x in sets)
    c = t.tg.caps
    if not own_capable(t.tg, CAP_SETPCAP) and inheritable & ~(c.inheritable | c.permitted):
        raise SyscallError(errno.EPERM)
    if inheritable & ~(c.inheritable | c.bounding) or permitted & ~c.permitted or effective & ~permitted:
        raise SyscallError(errno.EPERM)
    c.effective, c.permitted, c.inheritable = effective, permitted, inheritable
    c.ambient &= permitted & inheritable
    return 0


@syscall(NR.get_robust_list)
def get_robust_list(t, pid, head_ptr, len_ptr):
    pid = i32(pid)
    target = t if pid == 0 else t.kernel.tasks.pidns.tasks.get(pid)
    if target is None:
        raise SyscallError(errno.ESRCH)
    head, length = target.robust_list
    t.mm.write(head_ptr, struct.pack("<Q", head))
    t.mm.write(len_ptr, struct.pack("<Q", length or 24))
    return 0
