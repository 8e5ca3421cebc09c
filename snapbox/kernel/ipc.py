"""System V IPC: message queues, semaphore sets and shared memory segments (svipc(7)).

One IpcNamespace per sandbox, saved with the kernel. Each kind has its own table of
objects by index; an object's id is `seq * SEQ_MULTIPLIER + index`, as Linux makes them,
so a stale id of a removed object is refused (EINVAL, or EIDRM for a task that was waiting
on it) instead of naming its successor. Keys other than IPC_PRIVATE name one object each.

A task that must wait (msgsnd on a full queue, msgrcv with nothing matching, semop that
cannot proceed) is parked on the object's WaitQueue and runs its call again when woken,
like every other blocking call: a checkpoint taken meanwhile saves it at the syscall, and
it waits again after the restore.

A shared memory segment is one contiguous range of the MemoryFile, allocated zeroed at
shmget; shmat maps it MAP_SHARED, so forks share it and a checkpoint saves it with the
rest of memory. Its attach count is counted, not kept: the shared VMAs of every address
space that lie in the segment's range (a fork's copies, a VMA split by mprotect, each count
as on Linux). A segment marked for removal is destroyed once that count is 0, checked at
each IPC call and detach.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

from snapbox.kernel.creds import CAP_IPC_OWNER, CAP_SYS_ADMIN, ns_capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import nosave, savable

IPC_PRIVATE = 0
IPC_CREAT, IPC_EXCL, IPC_NOWAIT = 0o1000, 0o2000, 0o4000
SEQ_MULTIPLIER = 32768  # ipcmni: ids are seq * this + index
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000  # shm_perm.mode bits of a segment

# Linux's defaults (ipc/msg.c, sem.c, shm.c; include/uapi/linux/{msg,sem,shm}.h)
MSGMAX, MSGMNB, MSGMNI = 8192, 16384, 32000
SEMMSL, SEMMNS, SEMOPM, SEMMNI, SEMVMX = 32000, 1024000000, 500, 32000, 32767
SHMMIN, SHMMNI = 1, 4096
SHMMAX = SHMALL = (1 << 64) - 1 - (1 << 24)


@savable
@dataclass(eq=False)
class IpcPerm:
    """struct ipc64_perm: who owns an object and who may use it."""

    key: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    mode: int  # the low 9 bits are permissions; shm adds SHM_DEST and SHM_LOCKED
    seq: int

    def allows(self, tg, want: int) -> bool:
        """ipcperms(): `want` (0o4 read, 0o2 write, or both) granted to process `tg` (one
        holding CAP_IPC_OWNER in the user namespace owning its IPC namespace is granted
        everything)."""
        euid, egid, groups = tg.creds[1], tg.creds[4], tg.groups
        if ns_capable(tg.acting(), getattr(tg.ipc, "owner", None), CAP_IPC_OWNER):
            return True
        if euid in (self.uid, self.cuid):
            granted = self.mode >> 6
        elif egid in (self.gid, self.cgid) or self.gid in groups or self.cgid in groups:
            granted = self.mode >> 3
        else:
            granted = self.mode
        return want & ~granted & 0o7 == 0

    def owned_by(self, tg) -> bool:
        """May process `tg` IPC_SET or IPC_RMID the object (owner, creator, or CAP_SYS_ADMIN)?"""
        return tg.creds[1] in (self.uid, self.cuid) or ns_capable(tg.acting(), getattr(tg.ipc, "owner", None),
                                                                    CAP_SYS_ADMIN)


@savable
@dataclass(eq=False)
class MsgQueue:
    perm: IpcPerm
    messages: list = field(default_factory=list)  # [mtype, bytes], oldest first
    qbytes: int = MSGMNB  # the most bytes the queue may hold (msg_qbytes)
    stime: int = 0  # seconds of the last msgsnd, msgrcv and change
    rtime: int = 0
    ctime: int = 0
    lspid: int = 0  # pid of the last msgsnd and msgrcv
    lrpid: int = 0
    changed: WaitQueue = field(default_factory=WaitQueue)  # senders and receivers waiting

    def used(self) -> int:
        return sum(len(m[1]) for m in self.messages)


@savable
@dataclass(eq=False)
class SemSet:
    perm: IpcPerm
    values: list = field(default_factory=list)  # semval of each semaphore
    pids: list = field(default_factory=list)  # sempid: the last process to change each
    otime: int = 0  # seconds of the last semop, and of the last change
    ctime: int = 0
    changed: WaitQueue = field(default_factory=WaitQueue)  # semop callers waiting


@savable
@dataclass(eq=False)
class ShmSegment:
    perm: IpcPerm
    size: int  # shm_segsz, as asked for (the mapping is whole pages)
    offset: int  # where its pages lie in the MemoryFile
    cpid: int = 0
    lpid: int = 0  # the last process to attach or detach
    atime: int = 0
    dtime: int = 0
    ctime: int = 0

    def mapped_length(self) -> int:
        return (self.size + 4095) & ~4095

    def attached(self, spaces) -> int:
        """shm_nattch: the VMAs of these address spaces that map this segment."""
        end = self.offset + self.mapped_length()
        return sum(1 for mm in spaces for v in mm.vmas if v.shared and self.offset <= v.offset < end)


@savable
@dataclass(eq=False)
class IpcNamespace:
    """The sandbox's System V IPC objects."""

    msgs: dict = field(default_factory=dict)  # index -> MsgQueue
    sems: dict = field(default_factory=dict)  # index -> SemSet
    shms: dict = field(default_factory=dict)  # index -> ShmSegment
    seq: int = 0  # the next object's sequence number
    mqueues: dict = field(default_factory=dict)  # name -> POSIX MessageQueue (snapbox.kernel.mqueue)
    mq_inos: int = 0  # inode numbers given to message queues so far
    inum: int = 0  # its inode number in /proc/PID/ns (0: the sandbox's first; see namespaces)
    owner: object = None  # the UserNamespace it was made in (None: the sandbox's first)
    # SEM_UNDO adjustments: tgid -> {semid: {semnum: adjustment}}, applied when it exits
    undo: dict = field(default_factory=dict)
    # Tasks blocked in semop -> (SemSet, semaphore, waiting for zero?), for GETNCNT/GETZCNT;
    # an entry counts only while its task is still parked on that set.
    blocked: dict = nosave(dict)

    def collect(self, spaces, memfile) -> None:
        """Destroy the segments marked for removal that nothing maps any more."""
        for index, seg in list(self.shms.items()):
            if seg.perm.mode & SHM_DEST and not seg.attached(spaces):
                del self.shms[index]
                memfile.release(seg.offset, seg.mapped_length())

    def exited(self, tgid: int) -> None:
        """Process `tgid` is gone: apply its SEM_UNDO adjustments (clamped to the
        semaphores' range, as Linux does)."""
        for ident, adjust in self.undo.pop(tgid, {}).items():
            try:
                s = self.lookup("sems", ident)
            except SyscallError:
                continue
            for num, delta in adjust.items():
                s.values[num] = min(max(s.values[num] + delta, 0), SEMVMX)
                s.pids[num] = tgid
            s.changed.notify()

    def table(self, kind: str) -> dict:
        return getattr(self, kind)

    def find_key(self, kind: str, key: int):
        for obj in self.table(kind).values():
            if obj.perm.key == key and key != IPC_PRIVATE:
                return obj
        return None

    def lookup(self, kind: str, ident: int):
        """The object of id `ident` (EINVAL if there is none, or it is an earlier one's)."""
        if ident < 0:
            raise SyscallError(errno.EINVAL)
        obj = self.table(kind).get(ident % SEQ_MULTIPLIER)
        if obj is None or obj.perm.seq != ident // SEQ_MULTIPLIER:
            raise SyscallError(errno.EINVAL)
        return obj

    def get(self, kind: str, key: int, flags: int, tg, limit: int, make):
        """msgget/semget/shmget: the id of the object of `key`, made by `make(perm)` (which
        checks its own arguments first) when there is none and IPC_CREAT asks for one."""
        table = self.table(kind)
        obj = self.find_key(kind, key)
        if obj is not None:
            if flags & IPC_CREAT and flags & IPC_EXCL:
                raise SyscallError(errno.EEXIST)
            want = (flags >> 6 | flags >> 3 | flags) & 0o7
            if not obj.perm.allows(tg, want):
                raise SyscallError(errno.EACCES)
            return obj, self.ident(kind, obj)
        if key != IPC_PRIVATE and not flags & IPC_CREAT:
            raise SyscallError(errno.ENOENT)
        if len(table) >= limit:
            raise SyscallError(errno.ENOSPC)
        index = next(i for i in range(len(table) + 1) if i not in table)
        creds = tg.creds
        perm = IpcPerm(key=key, uid=creds[1], gid=creds[4], cuid=creds[1], cgid=creds[4], mode=flags & 0o777,
                       seq=self.seq)
        obj = make(perm)
        self.seq = (self.seq + 1) % (1 << 16)  # seq is an unsigned short in ipc64_perm
        table[index] = obj
        return obj, index + perm.seq * SEQ_MULTIPLIER

    def ident(self, kind: str, obj) -> int:
        for index, o in self.table(kind).items():
            if o is obj:
                return index + obj.perm.seq * SEQ_MULTIPLIER
        raise SyscallError(errno.EIDRM)

    def remove(self, kind: str, obj) -> None:
        table = self.table(kind)
        for index, o in list(table.items()):
            if o is obj:
                del table[index]

    def max_index(self, kind: str) -> int:
        """IPC_INFO's result: the highest index in use (0 if none)."""
        return max(self.table(kind), default=0)


def address_spaces(kernel) -> list:
    """Every live process's address space, once each (vfork children share their parent's)."""
    spaces = {}
    for tg in kernel.tasks.pidns.groups.values():
        if tg.exit_status is None and tg.mm is not None:
            spaces[id(tg.mm)] = tg.mm
    return list(spaces.values())
