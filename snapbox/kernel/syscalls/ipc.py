"""System V IPC: msgget, msgsnd, msgrcv, msgctl; semget, semop, semtimedop, semctl; shmget,
shmat, shmdt, shmctl. The objects themselves: snapbox.kernel.ipc."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.creds import CAP_SYS_RESOURCE, capable
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.ipc import (
    IPC_NOWAIT, MSGMAX, MSGMNB, MSGMNI, SEMMNI, SEMMNS, SEMMSL, SEMOPM, SEMVMX, SEQ_MULTIPLIER, SHM_DEST,
    SHM_LOCKED, SHMALL, SHMMAX, SHMMIN, SHMMNI, MsgQueue, SemSet, ShmSegment, address_spaces,
)
from snapbox.kernel.namespaces import ipc
from snapbox.kernel.syscalls import NR, i32, i64, syscall

IPC_RMID, IPC_SET, IPC_STAT, IPC_INFO = 0, 1, 2, 3
MSG_STAT, MSG_INFO, MSG_STAT_ANY = 11, 12, 13
GETPID, GETVAL, GETALL, GETNCNT, GETZCNT, SETVAL, SETALL, SEM_STAT, SEM_INFO, SEM_STAT_ANY = range(11, 21)
SHM_LOCK, SHM_UNLOCK, SHM_STAT, SHM_INFO, SHM_STAT_ANY = 11, 12, 13, 14, 15
MSG_NOERROR, MSG_EXCEPT, MSG_COPY = 0o10000, 0o20000, 0o40000
SEM_UNDO = 0x1000
SHM_RDONLY, SHM_RND, SHM_REMAP, SHM_EXEC = 0o10000, 0o20000, 0o40000, 0o100000
SHMLBA = 4096
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4

_PERM = struct.Struct("<iIIIIIHH4xQQ")  # struct ipc64_perm
_MSQID = struct.Struct("<48sqqqQQQiiQQ")  # struct msqid64_ds
_SEMID = struct.Struct("<48sqQqQQQQ")  # struct semid64_ds
_SHMID = struct.Struct("<48sQqqqiiQQQ")  # struct shmid64_ds
_MSGINFO = struct.Struct("<iiiiiiiH2x")
_SEMINFO = struct.Struct("<10i")
_SHMINFO = struct.Struct("<9Q")
_SHM_INFO = struct.Struct("<i4x5Q")
_SEMBUF = struct.Struct("<Hhh")
_TIMESPEC = struct.Struct("<qq")


def _now(t) -> int:
    return t.kernel.timekeeper.realtime_ns() // 1_000_000_000


def _ns(t):
    """The IPC objects of `t`'s namespace, with segments whose removal was pending now gone."""
    ns = ipc(t)
    ns.collect(address_spaces(t.kernel), t.kernel.memfile)
    return ns


def _pack_perm(p) -> bytes:
    return _PERM.pack(p.key, p.uid, p.gid, p.cuid, p.cgid, p.mode, p.seq, 0, 0, 0)


def _set_perm(t, obj, raw: bytes) -> None:
    """IPC_SET's common part: the owner's uid and gid and the permission bits."""
    _, uid, gid, _, _, mode, *_ = _PERM.unpack_from(raw)
    if not obj.perm.owned_by(t.tg):
        raise SyscallError(errno.EPERM)
    obj.perm.uid, obj.perm.gid = uid, gid
    obj.perm.mode = (obj.perm.mode & ~0o777) | (mode & 0o777)
    obj.ctime = _now(t)


def _stat_target(ns, kind: str, ident: int, cmd: int, by_index: tuple[int, int]):
    """The object a *_STAT command names (an index for MSG_STAT and the like, else an id),
    and the id to return (0 for IPC_STAT)."""
    if cmd in by_index:
        obj = ns.table(kind).get(ident) if ident >= 0 else None
        if obj is None:
            raise SyscallError(errno.EINVAL)
        return obj, ident + obj.perm.seq * SEQ_MULTIPLIER
    return ns.lookup(kind, ident), 0


def _waited(t, nr: int, err: SyscallError) -> SyscallError:
    """A lookup that failed for a task that was waiting on the object: it was removed."""
    if err.errno == errno.EINVAL and t.restart_value(nr) is not None:
        return SyscallError(errno.EIDRM)
    return err


def _park(t, nr: int, queue, deadline: int | None = None) -> WouldBlock:
    t.set_restart(nr, ("waiting", deadline))
    return WouldBlock(queue, deadline=deadline)


# -- message queues --------------------------------------------------------------------------


@syscall(NR.msgget)
def msgget(t, key, flags):
    def make(perm):
        now = _now(t)
        return MsgQueue(perm=perm, ctime=now)

    _, ident = _ns(t).get("msgs", i32(key), i32(flags), t.tg, MSGMNI, make)
    return ident


def _queue(t, nr: int, ident: int, want: int) -> MsgQueue:
    try:
        q = _ns(t).lookup("msgs", i32(ident))
    except SyscallError as e:
        raise _waited(t, nr, e) from None
    if not q.perm.allows(t.tg, want):
        raise SyscallError(errno.EACCES)
    return q


@syscall(NR.msgsnd)
def msgsnd(t, ident, msgp, msgsz, flags):
    size, flags = i64(msgsz), i32(flags)
    if size < 0 or size > MSGMAX or i32(ident) < 0:
        raise SyscallError(errno.EINVAL)
    q = _queue(t, NR.msgsnd, ident, 0o2)
    mtype = i64(int.from_bytes(t.mm.read(msgp, 8), "little"))
    if mtype < 1:
        raise SyscallError(errno.EINVAL)
    text = t.mm.read(msgp + 8, size)
    if q.used() + size > q.qbytes or len(q.messages) + 1 > q.qbytes:
        if flags & IPC_NOWAIT:
            raise SyscallError(errno.EAGAIN)
        raise _park(t, NR.msgsnd, q.changed)
    q.messages.append([mtype, text])
    q.lspid, q.stime = t.tg.tgid, _now(t)
    q.changed.notify()
    return 0


def _pick(messages: list, msgtyp: int, flags: int) -> int:
    """The index of the message msgrcv(2) takes for `msgtyp`, or -1."""
    if msgtyp == 0:
        return 0 if messages else -1
    if msgtyp > 0:
        for i, (mtype, _) in enumerate(messages):
            if (mtype != msgtyp) if flags & MSG_EXCEPT else (mtype == msgtyp):
                return i
        return -1
    best = -1
    for i, (mtype, _) in enumerate(messages):
        if mtype <= -msgtyp and (best < 0 or mtype < messages[best][0]):
            best = i
    return best


@syscall(NR.msgrcv)
def msgrcv(t, ident, msgp, msgsz, msgtyp, flags):
    size, msgtyp, flags = i64(msgsz), i64(msgtyp), i32(flags)
    if size < 0 or i32(ident) < 0:
        raise SyscallError(errno.EINVAL)
    if flags & MSG_COPY and (flags & MSG_EXCEPT or not flags & IPC_NOWAIT):
        raise SyscallError(errno.EINVAL)
    q = _queue(t, NR.msgrcv, ident, 0o4)
    if flags & MSG_COPY:
        index = msgtyp if 0 <= msgtyp < len(q.messages) else -1
    else:
        index = _pick(q.messages, msgtyp, flags)
    if index < 0:
        if flags & IPC_NOWAIT:
            raise SyscallError(errno.ENOMSG)
        raise _park(t, NR.msgrcv, q.changed)
    mtype, text = q.messages[index]
    if len(text) > size:
        if not flags & MSG_NOERROR:
            raise SyscallError(errno.E2BIG)
        text = text[:size]
    t.mm.write(msgp, mtype.to_bytes(8, "little", signed=True) + text)
    if not flags & MSG_COPY:
        del q.messages[index]
        q.lrpid, q.rtime = t.tg.tgid, _now(t)
        q.changed.notify()
    return len(text)


@syscall(NR.msgctl)
def msgctl(t, ident, cmd, buf):
    ns, ident, cmd = _ns(t), i32(ident), i32(cmd)
    if cmd in (IPC_INFO, MSG_INFO):
        used = cmd == MSG_INFO
        queues = ns.msgs.values()
        t.mm.write(buf, _MSGINFO.pack(
            len(ns.msgs) if used else MSGMNI * MSGMNB // 1024, sum(len(q.messages) for q in queues) if used else MSGMNB,
            MSGMAX, MSGMNB, MSGMNI, 16, sum(q.used() for q in queues) if used else MSGMNB, 0xFFFF))
        return ns.max_index("msgs")
    if cmd in (IPC_STAT, MSG_STAT, MSG_STAT_ANY):
        q, result = _stat_target(ns, "msgs", ident, cmd, (MSG_STAT, MSG_STAT_ANY))
        if cmd != MSG_STAT_ANY and not q.perm.allows(t.tg, 0o4):
            raise SyscallError(errno.EACCES)
        t.mm.write(buf, _MSQID.pack(_pack_perm(q.perm), q.stime, q.rtime, q.ctime, q.used(), len(q.messages),
                                    q.qbytes, q.lspid, q.lrpid, 0, 0))
        return result
    if cmd == IPC_SET:
        q = ns.lookup("msgs", ident)
        raw = t.mm.read(buf, _MSQID.size)
        qbytes = _MSQID.unpack(raw)[6]
        if qbytes > MSGMNB and not capable(t.tg, CAP_SYS_RESOURCE):
            raise SyscallError(errno.EPERM)  # raising msg_qbytes past msgmnb takes CAP_SYS_RESOURCE
        _set_perm(t, q, raw)
        q.qbytes = qbytes
        q.changed.notify()
        return 0
    if cmd == IPC_RMID:
        q = ns.lookup("msgs", ident)
        if not q.perm.owned_by(t.tg):
            raise SyscallError(errno.EPERM)
        ns.remove("msgs", q)
        q.changed.notify()
        return 0
    raise SyscallError(errno.EINVAL)


# -- semaphores ------------------------------------------------------------------------------


@syscall(NR.semget)
def semget(t, key, nsems, flags):
    nsems = i32(nsems)
    if nsems < 0 or nsems > SEMMSL:
        raise SyscallError(errno.EINVAL)

    def make(perm):
        if nsems == 0:
            raise SyscallError(errno.EINVAL)
        return SemSet(perm=perm, values=[0] * nsems, pids=[0] * nsems, ctime=_now(t))

    s, ident = _ns(t).get("sems", i32(key), i32(flags), t.tg, SEMMNI, make)
    if nsems > len(s.values):
        raise SyscallError(errno.EINVAL)
    return ident


def _sem_set(t, nr: int, ident: int, want: int) -> SemSet:
    try:
        s = _ns(t).lookup("sems", i32(ident))
    except SyscallError as e:
        raise _waited(t, nr, e) from None
    if not s.perm.allows(t.tg, want):
        raise SyscallError(errno.EACCES)
    return s


def _semop(t, nr: int, ident, sops, nsops, deadline: int | None):
    nsops = i64(nsops)
    if nsops <= 0 or i32(ident) < 0:
        raise SyscallError(errno.EINVAL)
    if nsops > SEMOPM:
        raise SyscallError(errno.E2BIG)
    raw = t.mm.read(sops, nsops * _SEMBUF.size)
    ops = [_SEMBUF.unpack_from(raw, i * _SEMBUF.size) for i in range(nsops)]
    alters = any(op for _, op, _ in ops)
    s = _sem_set(t, nr, ident, 0o2 if alters else 0o4)
    if any(num >= len(s.values) for num, _, _ in ops):
        raise SyscallError(errno.EFBIG)
    values = list(s.values)
    for num, op, flg in ops:
        val = values[num]
        if op > 0:
            if val + op > SEMVMX:
                raise SyscallError(errno.ERANGE)
            values[num] = val + op
        elif (op == 0 and val != 0) or (op < 0 and val < -op):
            if flg & IPC_NOWAIT:
                raise SyscallError(errno.EAGAIN)
            if deadline is not None and deadline <= t.kernel.timekeeper.monotonic_ns():
                raise SyscallError(errno.EAGAIN)  # semtimedop(2): the timeout expired
            ipc(t).blocked[t] = (s, num, op == 0)
            raise _park(t, nr, s.changed, deadline)
        else:
            values[num] = val + op
    ipc(t).blocked.pop(t, None)
    tgid = t.tg.tgid
    undo = None
    for num, op, flg in ops:
        s.pids[num] = tgid
        if flg & SEM_UNDO and op:
            if undo is None:
                undo = ipc(t).undo.setdefault(tgid, {}).setdefault(ipc(t).ident("sems", s), {})
            undo[num] = undo.get(num, 0) - op
    s.otime = _now(t)
    if values != s.values:
        s.values = values
        s.changed.notify()
    return 0


@syscall(NR.semop)
def semop(t, ident, sops, nsops):
    return _semop(t, NR.semop, ident, sops, nsops, None)


@syscall(NR.semtimedop)
def semtimedop(t, ident, sops, nsops, timeout):
    deadline = None
    if timeout:
        saved = t.restart_value(NR.semtimedop)
        if saved is not None:
            deadline = saved[1]
        else:
            sec, nsec = _TIMESPEC.unpack(t.mm.read(timeout, _TIMESPEC.size))
            if sec < 0 or not 0 <= nsec < 1_000_000_000:
                raise SyscallError(errno.EINVAL)
            deadline = t.kernel.timekeeper.monotonic_ns() + sec * 1_000_000_000 + nsec
    return _semop(t, NR.semtimedop, ident, sops, nsops, deadline)


def _waiting_count(t, s: SemSet, num: int, zero: bool) -> int:
    """GETNCNT / GETZCNT: tasks blocked in semop on semaphore `num` of `s`, waiting for it
    to grow (or to be zero)."""
    return sum(1 for task, (where, n, z) in ipc(t).blocked.items()
               if where is s and n == num and z == zero and s.changed in task.waiting)


def _clear_undo(t, s: SemSet, nums) -> None:
    """SETVAL and SETALL clear the semaphores' SEM_UNDO adjustments in every process."""
    ident = ipc(t).ident("sems", s)
    for sets in ipc(t).undo.values():
        adj = sets.get(ident)
        if adj is not None:
            for num in nums:
                adj.pop(num, None)


@syscall(NR.semctl)
def semctl(t, ident, semnum, cmd, arg):
    ns, ident, semnum, cmd = _ns(t), i32(ident), i32(semnum), i32(cmd)
    if cmd in (IPC_INFO, SEM_INFO):
        used = cmd == SEM_INFO
        t.mm.write(arg, _SEMINFO.pack(SEMMNS, SEMMNI, SEMMNS, SEMMNS, SEMMSL, SEMOPM, SEMOPM,
                                      len(ns.sems) if used else 20, SEMVMX,
                                      sum(len(s.values) for s in ns.sems.values()) if used else SEMVMX))
        return ns.max_index("sems")
    if cmd in (IPC_STAT, SEM_STAT, SEM_STAT_ANY):
        s, result = _stat_target(ns, "sems", ident, cmd, (SEM_STAT, SEM_STAT_ANY))
        if cmd != SEM_STAT_ANY and not s.perm.allows(t.tg, 0o4):
            raise SyscallError(errno.EACCES)
        t.mm.write(arg, _SEMID.pack(_pack_perm(s.perm), s.otime, 0, s.ctime, 0, len(s.values), 0, 0))
        return result
    s = ns.lookup("sems", ident)
    if cmd == IPC_SET:
        _set_perm(t, s, t.mm.read(arg, _SEMID.size))
        return 0
    if cmd == IPC_RMID:
        if not s.perm.owned_by(t.tg):
            raise SyscallError(errno.EPERM)
        gone = ns.ident("sems", s)
        for sets in ns.undo.values():
            sets.pop(gone, None)
        ns.remove("sems", s)
        s.changed.notify()
        return 0
    reads = cmd in (GETPID, GETVAL, GETALL, GETNCNT, GETZCNT)
    if not reads and cmd not in (SETVAL, SETALL):
        raise SyscallError(errno.EINVAL)
    if not s.perm.allows(t.tg, 0o4 if reads else 0o2):
        raise SyscallError(errno.EACCES)
    if cmd == GETALL:
        t.mm.write(arg, struct.pack(f"<{len(s.values)}H", *s.values))
        return 0
    if cmd == SETALL:
        values = list(struct.unpack(f"<{len(s.values)}H", t.mm.read(arg, 2 * len(s.values))))
        if any(v > SEMVMX for v in values):
            raise SyscallError(errno.ERANGE)
        _clear_undo(t, s, range(len(values)))
        s.values, s.ctime = values, _now(t)
        s.pids = [t.tg.tgid] * len(values)
        s.changed.notify()
        return 0
    if not 0 <= semnum < len(s.values):
        raise SyscallError(errno.EINVAL)
    if cmd == GETVAL:
        return s.values[semnum]
    if cmd == GETPID:
        return s.pids[semnum]
    if cmd in (GETNCNT, GETZCNT):
        return _waiting_count(t, s, semnum, cmd == GETZCNT)
    value = i32(arg)  # SETVAL: the union's int
    if not 0 <= value <= SEMVMX:
        raise SyscallError(errno.ERANGE)
    _clear_undo(t, s, (semnum,))
    s.values[semnum], s.pids[semnum], s.ctime = value, t.tg.tgid, _now(t)
    s.changed.notify()
    return 0


# -- shared memory ---------------------------------------------------------------------------


@syscall(NR.shmget)
def shmget(t, key, size, flags):
    size = i64(size)

    def make(perm):
        if size < SHMMIN or size > SHMMAX:
            raise SyscallError(errno.EINVAL)
        try:
            offset = t.kernel.memfile.alloc(size)
        except Exception as e:
            raise SyscallError(errno.ENOMEM, "sandbox memory limit") from e
        return ShmSegment(perm=perm, size=size, offset=offset, cpid=t.tg.tgid, ctime=_now(t))

    seg, ident = _ns(t).get("shms", i32(key), i32(flags), t.tg, SHMMNI, make)
    if size > seg.size:
        raise SyscallError(errno.EINVAL)
    return ident


@syscall(NR.shmat, stopped=True)
def shmat(t, ident, shmaddr, flags):
    ns, flags = _ns(t), i32(flags)
    seg = ns.lookup("shms", i32(ident))
    rdonly = flags & SHM_RDONLY
    if not seg.perm.allows(t.tg, 0o4 if rdonly else 0o6):
        raise SyscallError(errno.EACCES)
    addr = shmaddr
    if addr % SHMLBA:
        if not flags & SHM_RND:
            raise SyscallError(errno.EINVAL)
        addr -= addr % SHMLBA
    if flags & SHM_REMAP and not addr:
        raise SyscallError(errno.EINVAL)
    length = seg.mapped_length()
    mm = t.mm
    if addr:
        mm.check_fixed(addr, length)
        if not flags & SHM_REMAP and mm.overlaps(addr, addr + length):
            raise SyscallError(errno.EINVAL)
    prot = PROT_READ | (0 if rdonly else PROT_WRITE) | (PROT_EXEC if flags & SHM_EXEC else 0)
    addr = mm.map_shm(addr, length, prot, seg.offset, f"/SYSV{seg.perm.key & 0xFFFFFFFF:08x} (deleted)")
    seg.lpid, seg.atime = t.tg.tgid, _now(t)
    return addr


@syscall(NR.shmdt, stopped=True)
def shmdt(t, shmaddr):
    """Detach the segment attached at `shmaddr` (where its first byte is mapped)."""
    ns = _ns(t)
    vma = t.mm.find(shmaddr)
    seg = None
    if vma is not None and vma.start == shmaddr and vma.shared:
        seg = next((s for s in ns.shms.values() if s.offset == vma.offset), None)
    if seg is None:
        raise SyscallError(errno.EINVAL)
    t.mm.unmap_within(shmaddr, seg.mapped_length(), seg.offset)
    seg.lpid, seg.dtime = t.tg.tgid, _now(t)
    _ns(t)
    return 0


@syscall(NR.shmctl)
def shmctl(t, ident, cmd, buf):
    ns, ident, cmd = _ns(t), i32(ident), i32(cmd)
    if cmd == IPC_INFO:
        t.mm.write(buf, _SHMINFO.pack(SHMMAX, SHMMIN, SHMMNI, SHMMNI, SHMALL, 0, 0, 0, 0))
        return ns.max_index("shms")
    if cmd == SHM_INFO:
        pages = sum(s.mapped_length() // 4096 for s in ns.shms.values())
        t.mm.write(buf, _SHM_INFO.pack(len(ns.shms), pages, pages, 0, 0, 0))
        return ns.max_index("shms")
    if cmd in (IPC_STAT, SHM_STAT, SHM_STAT_ANY):
        seg, result = _stat_target(ns, "shms", ident, cmd, (SHM_STAT, SHM_STAT_ANY))
        if cmd != SHM_STAT_ANY and not seg.perm.allows(t.tg, 0o4):
            raise SyscallError(errno.EACCES)
        t.mm.write(buf, _SHMID.pack(_pack_perm(seg.perm), seg.size, seg.atime, seg.dtime, seg.ctime, seg.cpid,
                                    seg.lpid, seg.attached(address_spaces(t.kernel)), 0, 0))
        return result
    seg = ns.lookup("shms", ident)
    if cmd == IPC_SET:
        _set_perm(t, seg, t.mm.read(buf, _SHMID.size))
        return 0
    if cmd == IPC_RMID:
        if not seg.perm.owned_by(t.tg):
            raise SyscallError(errno.EPERM)
        seg.perm.mode |= SHM_DEST
        seg.perm.key = 0  # shmctl(2): a segment marked for destruction has the key IPC_PRIVATE
        _ns(t)
        return 0
    if cmd in (SHM_LOCK, SHM_UNLOCK):
        if not seg.perm.owned_by(t.tg):
            raise SyscallError(errno.EPERM)
        seg.perm.mode = seg.perm.mode | SHM_LOCKED if cmd == SHM_LOCK else seg.perm.mode & ~SHM_LOCKED
        return 0
    raise SyscallError(errno.EINVAL)
