"""The syscall table: one module per family registers its handlers with @syscall.

    rw        read, write, pread64, pwrite64, readv, writev, lseek, fsync, sendfile, copy_file_range,
              fadvise64, readahead
    stats     stat, fstat, lstat, newfstatat, statx, access, faccessat(2), readlink(at)
    fdops     open, openat, creat, close, close_range, dup(2,3), fcntl, flock, ioctl, pipe(2)
    names     getcwd, chdir, fchdir, mkdir(at), unlink(at), rmdir, rename(at,at2), link(at),
              symlink(at), mknod(at), getdents64
    attrs     chmod, fchmod(at), chown, fchown(at), lchown, utimensat, truncate, ftruncate, fallocate,
              umask
    common    (no syscalls) what those five share: path arguments, iovecs, blocking writes
    poll      poll, ppoll, select, pselect6, epoll_create(1), epoll_ctl, epoll_wait, epoll_pwait
    events    eventfd, eventfd2
    time      clock_gettime, clock_getres, gettimeofday, time, nanosleep, clock_nanosleep,
              alarm, setitimer, getitimer, timer_*, timerfd_create, timerfd_settime, timerfd_gettime
    mm        brk, mmap, munmap, mprotect, mremap, madvise, msync, mlock(2), mlockall, munlockall,
              memory policies (set/get_mempolicy, mbind), process_vm_readv/writev
    process   exit, exit_group, fork, vfork, clone, clone3, execve, wait4, waitid, ids and
              credentials, process groups and sessions, prctl, arch_prctl, rlimits, robust lists
    signal    rt_sigaction, rt_sigprocmask, rt_sigpending, kill, tgkill, tkill, rt_sigreturn,
              sigaltstack, rt_sigsuspend, pause, rt_sigtimedwait
    futex     futex (the futex table itself: snapbox.kernel.futex)
    net       socket, socketpair, bind, listen, accept(4), connect, send/recv(from,msg,to,mmsg),
              shutdown, get/setsockopt, getsockname, getpeername
    info      uname, sysinfo, getrandom, sched_get/setaffinity, getcpu, getrusage, times, sethostname,
              setdomainname, getpriority, setpriority, sched_setparam, sched_rr_get_interval,
              ioprio_get, ioprio_set, personality
    ipc       System V IPC: msgget, msgsnd, msgrcv, msgctl, semget, semop, semtimedop, semctl,
              shmget, shmat, shmdt, shmctl (the objects: snapbox.kernel.ipc)
    mqueue    POSIX message queues: mq_open, mq_unlink, mq_timedsend, mq_timedreceive, mq_notify,
              mq_getsetattr (the queues: snapbox.kernel.mqueue)
    splice    splice, tee, vmsplice
    aio       Linux AIO: io_setup, io_submit, io_getevents, io_cancel, io_destroy (the rings: snapbox.kernel.aio)
    inotify   inotify_init(1), inotify_add_watch, inotify_rm_watch (the events: snapbox.kernel.inotify)
    seccomp   seccomp, a program's own filters (run by snapbox.kernel.seccomp)
    mount     mount, umount2 (tmpfs, proc and bind mounts inside the sandbox)
    xattr     setxattr, getxattr, listxattr, removexattr and their l- and f- forms
    numbers   the x86-64 syscall numbers and names
"""

from __future__ import annotations

from collections.abc import Callable

from snapbox.kernel.syscalls.numbers import NAMES, NR

# nr -> (handler, number of arguments it takes after the task)
TABLE: dict[int, tuple[Callable, int]] = {}

# Syscalls whose handlers need the calling thread stopped under ptrace: they read or set
# its registers, or run host syscalls in its stub. The others take the fast path.
STOPPED: set[int] = set()

MASK64 = (1 << 64) - 1


def syscall(*numbers: int, stopped: bool = False):
    """Register a handler `fn(task, arg0, ...)` for one or more syscall numbers; `stopped`:
    it needs the thread stopped (see STOPPED)."""

    def register(fn: Callable) -> Callable:
        nargs = fn.__code__.co_argcount - 1
        for nr in numbers:
            if nr in TABLE:
                raise ValueError(f"syscall {NAMES.get(nr, nr)} registered twice")
            TABLE[nr] = (fn, nargs)
            if stopped:
                STOPPED.add(nr)
        return fn

    return register


def i32(x: int) -> int:
    """A register value as a C int (fds, flags, pids)."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def i64(x: int) -> int:
    """A register value as a C long (offsets, signed sizes)."""
    return x - (1 << 64) if x & (1 << 63) else x


def load_all() -> None:
    """Import every family so its handlers are registered."""
    from snapbox.kernel.syscalls import (  # noqa: F401
        aio, attrs, events, fdops, futex, info, inotify, ipc, keys, mm, mount, mqueue, names, net, poll, process,
        rw, seccomp, signal, splice, stats, time, xattr)


__all__ = ["NAMES", "NR", "STOPPED", "TABLE", "i32", "i64", "load_all", "syscall"]
