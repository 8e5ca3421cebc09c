"""System information syscalls: uname, sysinfo, getrandom, CPU affinity, resource usage."""

from __future__ import annotations

import errno
import os
import struct

from snapbox.kernel.creds import CAP_SYS_ADMIN, CAP_SYS_NICE, capable, ns_capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.host import UTS_RELEASE, UTS_VERSION, host_meminfo
from snapbox.kernel.namespaces import owner, rename, uts
from snapbox.kernel.syscalls import NR, i32, syscall

GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE = 1, 2, 4


@syscall(NR.uname)
def uname(t, buf):
    names = uts(t)
    fields = ("Linux", names.hostname, UTS_RELEASE, UTS_VERSION, "x86_64", names.domainname)
    t.mm.write(buf, b"".join(f.encode()[:64].ljust(65, b"\0") for f in fields))
    return 0


@syscall(NR.getrandom)
def getrandom(t, buf, count, flags):
    if flags & ~(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE):
        raise SyscallError(errno.EINVAL)
    count = min(count, 1 << 25)
    t.mm.write(buf, os.urandom(count))
    return count


_SYSINFO = struct.Struct("<q3QQQQQQQHxxxxxxQQI")


@syscall(NR.sysinfo)
def sysinfo(t, info):
    mem = host_meminfo()
    uptime = t.kernel.timekeeper.monotonic_ns() // 1_000_000_000
    procs = len(t.kernel.tasks.pidns.tasks)
    data = _SYSINFO.pack(uptime, 0, 0, 0, mem.get("MemTotal", 0), mem.get("MemFree", 0),
                         mem.get("Shmem", 0), mem.get("Buffers", 0), 0, 0, procs, 0, 0, 1)
    t.mm.write(info, data.ljust(112, b"\0"))
    return 0


@syscall(NR.sched_getaffinity)
def sched_getaffinity(t, pid, size, mask):
    ncpu = os.cpu_count() or 1
    nbytes = max(8, (ncpu + 63) // 64 * 8)
    if size < nbytes or size % 8:
        raise SyscallError(errno.EINVAL)
    t.mm.write(mask, affinity(_affinity_target(t, pid)).to_bytes(nbytes, "little"))
    return nbytes


@syscall(NR.sched_setaffinity)
def sched_setaffinity(t, pid, size, mask):
    """The thread's CPU mask, kept (inherited, reported, in /proc) and not given to the
    host: where a stub runs is the sentry's placement."""
    task = _affinity_target(t, pid)
    if t.tg.creds[1] not in (task.tg.creds[0], task.tg.creds[1]) and not capable(t.tg, CAP_SYS_NICE):
        raise SyscallError(errno.EPERM)
    every = (1 << (os.cpu_count() or 1)) - 1
    wanted = int.from_bytes(t.mm.read(mask, min(size, 128)), "little") & every
    if not wanted:
        raise SyscallError(errno.EINVAL)  # no CPU of the sandbox's in it
    task.affinity = 0 if wanted == every else wanted
    return 0


def affinity(task) -> int:
    """A thread's CPU mask."""
    return task.affinity or (1 << (os.cpu_count() or 1)) - 1


def _affinity_target(t, pid):
    pid = i32(pid)
    task = t if pid == 0 else t.kernel.tasks.pidns.tasks.get(pid) if pid > 0 else None
    if task is None or task.tg.exit_status is not None:
        raise SyscallError(errno.ESRCH)
    return task


PRIO_PROCESS, PRIO_PGRP, PRIO_USER = 0, 1, 2


def _prio_targets(t, which: int, who: int) -> list:
    """The threads setpriority and getpriority act on (Linux: a thread, a process group's
    threads, a user's threads); EINVAL for another `which`, ESRCH if none."""
    ns = t.kernel.tasks.pidns
    who = i32(who)
    if which == PRIO_PROCESS:
        task = t if who == 0 else ns.tasks.get(who)
        found = [task] if task is not None and task.tg.exit_status is None else []
    elif which == PRIO_PGRP:
        pgrp = who or t.tg.pgid
        found = [x for tg in ns.groups.values() if tg.pgid == pgrp and tg.exit_status is None for x in tg.tasks]
    elif which == PRIO_USER:
        uid = t.tg.creds[0] if who == 0 else who
        found = [x for tg in ns.groups.values() if tg.creds[0] == uid and tg.exit_status is None for x in tg.tasks]
    else:
        raise SyscallError(errno.EINVAL)
    if not found:
        raise SyscallError(errno.ESRCH)
    return found


@syscall(NR.getpriority)
def getpriority(t, which, who):
    """The highest priority (lowest nice) among the targets, as 20 - nice (the raw call's
    form: libc turns it back into nice)."""
    return 20 - min(x.nice for x in _prio_targets(t, i32(which), who))


@syscall(NR.setpriority)
def setpriority(t, which, who, prio):
    """Set the targets' nice value (clamped to -20..19). Lowering it takes CAP_SYS_NICE
    (EACCES), and so do another user's threads (EPERM). It is kept and reported; the host
    schedules the sandbox's threads as it will."""
    nice = max(-20, min(19, i32(prio)))
    euid, privileged = t.tg.creds[1], capable(t.tg, CAP_SYS_NICE)
    targets = _prio_targets(t, i32(which), who)
    for x in targets:
        if not privileged and euid not in (x.tg.creds[0], x.tg.creds[1]):
            raise SyscallError(errno.EPERM)
        if not privileged and nice < x.nice:
            raise SyscallError(errno.EACCES)
    for x in targets:
        x.nice = nice
    return 0


SCHED_OTHER, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE = 0, 1, 2, 3, 5, 6
SCHED_RESET_ON_FORK = 0x40000000


def _sched_target(t, pid: int) -> None:
    pid = i32(pid)
    if pid < 0:
        raise SyscallError(errno.EINVAL)
    if pid and pid not in t.kernel.tasks.pidns.tasks:
        raise SyscallError(errno.ESRCH)


@syscall(NR.sched_getscheduler)
def sched_getscheduler(t, pid):
    """Every task of the sandbox runs under SCHED_OTHER: its stubs are ordinary host threads."""
    _sched_target(t, pid)
    return SCHED_OTHER


@syscall(NR.sched_getparam)
def sched_getparam(t, pid, param):
    _sched_target(t, pid)
    t.mm.write(param, struct.pack("<i", 0))
    return 0


@syscall(NR.sched_setscheduler)
def sched_setscheduler(t, pid, policy, param):
    _sched_target(t, pid)
    (priority,) = struct.unpack("<i", t.mm.read(param, 4))
    policy = i32(policy) & ~SCHED_RESET_ON_FORK
    if policy in (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE):
        if priority != 0:
            raise SyscallError(errno.EINVAL)
        if policy != SCHED_OTHER:
            raise SyscallError(errno.EPERM, "only SCHED_OTHER is offered to the sandbox")
        return 0
    if policy in (SCHED_FIFO, SCHED_RR):
        if not 1 <= priority <= 99:
            raise SyscallError(errno.EINVAL)
        raise SyscallError(errno.EPERM, "real-time scheduling is not offered to the sandbox")
    raise SyscallError(errno.EINVAL)


@syscall(NR.sched_setparam)
def sched_setparam(t, pid, param):
    """SCHED_OTHER takes no priority but 0."""
    _sched_target(t, pid)
    (priority,) = struct.unpack("<i", t.mm.read(param, 4))
    if priority != 0:
        raise SyscallError(errno.EINVAL)
    return 0


@syscall(NR.sched_rr_get_interval)
def sched_rr_get_interval(t, pid, interval):
    """A SCHED_OTHER task has no round-robin quantum: 0, as this host's scheduler says."""
    _sched_target(t, pid)
    t.mm.write(interval, struct.pack("<qq", 0, 0))
    return 0


IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP, IOPRIO_WHO_USER = 1, 2, 3
IOPRIO_CLASS_NONE, IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE = 0, 1, 2, 3


def _ioprio_targets(t, which: int, who: int) -> list:
    """ioprio_set(2)'s targets: a thread (IOPRIO_WHO_PROCESS), every thread of a process
    group, or of a user's processes (0: the caller's own)."""
    tasks = [x for tg in t.kernel.tasks.pidns.groups.values() if tg.exit_status is None for x in tg.tasks]
    if which == IOPRIO_WHO_PROCESS:
        found = [t] if who == 0 else [x for x in tasks if x.tid == who]
    elif which == IOPRIO_WHO_PGRP:
        pgid = who or t.tg.pgid
        found = [x for x in tasks if x.tg.pgid == pgid]
    elif which == IOPRIO_WHO_USER:
        uid = who or t.tg.creds[0]
        found = [x for x in tasks if x.tg.creds[0] == uid]
    else:
        raise SyscallError(errno.EINVAL)
    if not found:
        raise SyscallError(errno.ESRCH)
    return found


@syscall(NR.ioprio_get)
def ioprio_get(t, which, who):
    """The highest I/O priority among the targets (the lowest class, then level, but a
    class of none last), as Linux reports it."""
    prios = [x.ioprio for x in _ioprio_targets(t, i32(which), i32(who))]
    set_ones = [p for p in prios if p >> 13 != IOPRIO_CLASS_NONE]
    return min(set_ones) if set_ones else prios[0]


@syscall(NR.ioprio_set)
def ioprio_set(t, which, who, ioprio):
    """Kept and reported: the sandbox's I/O goes through the sentry, which does not rank it.
    Checked as Linux checks it: the class, and the level (the low 3 bits; the bits above
    are hints, kept as given)."""
    ioprio = i32(ioprio)
    klass, level = (ioprio >> 13) & 7, ioprio & 7
    if klass not in (IOPRIO_CLASS_NONE, IOPRIO_CLASS_RT, IOPRIO_CLASS_BE, IOPRIO_CLASS_IDLE) or \
            (klass == IOPRIO_CLASS_NONE and level) or ioprio >> 16:
        raise SyscallError(errno.EINVAL)
    privileged = capable(t.tg, CAP_SYS_NICE) or capable(t.tg, CAP_SYS_ADMIN)
    if klass == IOPRIO_CLASS_RT and not privileged:
        raise SyscallError(errno.EPERM)
    targets = _ioprio_targets(t, i32(which), i32(who))
    euid = t.tg.creds[1]
    if not privileged and any(x.tg.creds[0] != euid and x.tg.creds[1] != euid for x in targets):
        raise SyscallError(errno.EPERM)
    for x in targets:
        x.ioprio = ioprio
    return 0


PER_MASK = 0xFF
PER_LINUX, PER_LINUX32 = 0, 8


@syscall(NR.personality)
def personality(t, persona):
    """Set the process's execution domain and flags; returns the old value. 0xffffffff only
    asks. Only Linux's own domains run here (PER_LINUX, and PER_LINUX32's flag-only form):
    others fail with EINVAL and leave the old one. The flags (ADDR_NO_RANDOMIZE, ...) are
    kept and reported; the sandbox's layout does not follow them."""
    old = t.tg.personality
    persona &= 0xFFFFFFFF
    if persona == 0xFFFFFFFF:
        return old
    if persona & PER_MASK not in (PER_LINUX, PER_LINUX32):
        raise SyscallError(errno.EINVAL)
    t.tg.personality = persona
    return old


@syscall(NR.sched_get_priority_max)
def sched_get_priority_max(t, policy):
    return _priority_range(i32(policy))[1]


@syscall(NR.sched_get_priority_min)
def sched_get_priority_min(t, policy):
    return _priority_range(i32(policy))[0]


def _priority_range(policy: int) -> tuple[int, int]:
    if policy in (SCHED_FIFO, SCHED_RR):
        return 1, 99
    if policy in (SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE):
        return 0, 0
    raise SyscallError(errno.EINVAL)


@syscall(NR.getcpu)
def getcpu(t, cpu, node, cache):
    if cpu:
        t.mm.write(cpu, bytes(4))
    if node:
        t.mm.write(node, bytes(4))
    return 0


@syscall(NR.getrusage)
def getrusage(t, who, usage):
    who = i32(who)
    if who == 0:  # RUSAGE_SELF
        ns = sum(t.kernel.cpu_time_ns(x) for x in t.tg.tasks)
        maxrss = max(t.tg.maxrss, t.mm.usage()["VmHWM"])
    elif who == 1:  # RUSAGE_THREAD
        ns = t.kernel.cpu_time_ns(t)
        maxrss = t.mm.usage()["VmHWM"]
    elif who == -1:  # RUSAGE_CHILDREN: the children waited for, and theirs
        ns, maxrss = t.tg.children_cpu_ns, t.tg.children_maxrss
    else:
        raise SyscallError(errno.EINVAL)
    t.mm.write(usage, pack_rusage(ns, maxrss))
    return 0


def pack_rusage(cpu_ns: int, maxrss: int) -> bytes:
    """struct rusage: the CPU time (all of it counted as user time: the sentry does not tell
    the two apart) and ru_maxrss, in KiB; the other counters are not kept (0)."""
    sec, rest = divmod(cpu_ns, 1_000_000_000)
    return struct.pack("<qqqqq", sec, rest // 1000, 0, 0, maxrss // 1024).ljust(144, b"\0")


CLK_TCK = 100


@syscall(NR.times)
def times(t, buf):
    ticks = sum(t.kernel.cpu_time_ns(x) for x in t.tg.tasks) * CLK_TCK // 1_000_000_000
    children = t.tg.children_cpu_ns * CLK_TCK // 1_000_000_000
    if buf:
        t.mm.write(buf, struct.pack("<qqqq", ticks, 0, children, 0))
    return t.kernel.timekeeper.monotonic_ns() * CLK_TCK // 1_000_000_000


def _uts_name(t, name: int, length: int) -> str:
    """The new name of sethostname or setdomainname: CAP_SYS_ADMIN in the user namespace
    owning the UTS namespace, at most 64 bytes."""
    if not ns_capable(t.cred, owner(t.tg.uts), CAP_SYS_ADMIN):
        raise SyscallError(errno.EPERM)
    if length > 64:
        raise SyscallError(errno.EINVAL)
    return t.mm.read(name, length).decode("utf-8", "replace")


@syscall(NR.sethostname)
def sethostname(t, name, length):
    rename(uts(t), "hostname", _uts_name(t, name, length))
    return 0


@syscall(NR.setdomainname)
def setdomainname(t, name, length):
    rename(uts(t), "domainname", _uts_name(t, name, length))
    return 0
