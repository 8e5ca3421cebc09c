"""POSIX message queues: mq_open, mq_unlink, mq_timedsend, mq_timedreceive, mq_notify,
mq_getsetattr. The queues themselves: snapbox.kernel.mqueue."""

from __future__ import annotations

import errno
import logging
import struct

from snapbox.kernel.creds import CAP_FOWNER, CAP_SYS_RESOURCE, capable
from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_ACCMODE, O_CLOEXEC, O_CREAT, O_EXCL, O_NONBLOCK
from snapbox.kernel.mqueue import (
    DEFAULT_MAXMSG, DEFAULT_MSGSIZE, HARD_MSGMAX, HARD_MSGSIZEMAX, MQ_PRIO_MAX, MSG_MAX, MSGSIZE_MAX, SIGEV_NONE,
    SIGEV_SIGNAL, MessageQueue, MqueueFile,
)
from snapbox.kernel.namespaces import ipc
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.time import read_timespec

log = logging.getLogger("snapbox.mqueue")

_ATTR = struct.Struct("<qqqq32x")  # struct mq_attr: flags, maxmsg, msgsize, curmsgs, reserved
_SIGEVENT = struct.Struct("<Qii")  # struct sigevent's head: sigev_value, sigev_signo, sigev_notify
NAME_MAX = 255
SI_MESGQ = -3


def _name(t, addr: int) -> str:
    """A queue's name as the kernel gets it (the C library strips the leading slash)."""
    raw = t.mm.read_cstring(addr, NAME_MAX + 1)
    if b"/" in raw or raw in (b"", b".", b".."):
        raise SyscallError(errno.ENOENT if raw == b"" else errno.EACCES)
    return raw.decode("utf-8", "surrogateescape")


def _queue(t, mqd: int, access: str = "") -> MqueueFile:
    """The message queue descriptor `mqd`; EBADF if it is none, or not open for `access`
    ("read" or "write")."""
    f = t.fds.get(i32(mqd))
    if not isinstance(f, MqueueFile) or (access == "read" and not f.readable()) or \
            (access == "write" and not f.writable()):
        raise SyscallError(errno.EBADF)
    return f


def _deadline(t, nr: int, abs_timeout: int) -> int | None:
    """The sandbox-monotonic deadline of an absolute CLOCK_REALTIME timeout (None: none),
    kept across the call's restarts."""
    if not abs_timeout:
        return None
    saved = t.restart_value(nr)
    if saved is not None:
        return saved
    clock = t.kernel.timekeeper
    return clock.monotonic_ns() + read_timespec(t, abs_timeout) - clock.realtime_ns()


def _wait(t, nr: int, queue, deadline: int | None) -> WouldBlock:
    if deadline is not None and deadline <= t.kernel.timekeeper.monotonic_ns():
        raise SyscallError(errno.ETIMEDOUT)
    t.set_restart(nr, deadline)
    return WouldBlock(queue, deadline=deadline)


@syscall(NR.mq_open)
def mq_open(t, name, oflag, mode, attr):
    name, oflag = _name(t, name), i32(oflag)
    if oflag & O_ACCMODE == O_ACCMODE:
        raise SyscallError(errno.EINVAL)
    queues = ipc(t).mqueues
    q = queues.get(name)
    if q is not None:
        if oflag & O_CREAT and oflag & O_EXCL:
            raise SyscallError(errno.EEXIST)
        want = {0: 0o4, 1: 0o2, 2: 0o6}[oflag & O_ACCMODE]
        if not q.allows(t.tg, want):
            raise SyscallError(errno.EACCES)
    elif not oflag & O_CREAT:
        raise SyscallError(errno.ENOENT)
    else:
        maxmsg, msgsize = DEFAULT_MAXMSG, DEFAULT_MSGSIZE
        if attr:
            _, maxmsg, msgsize, _ = _ATTR.unpack(t.mm.read(attr, _ATTR.size))
            if maxmsg <= 0 or msgsize <= 0:
                raise SyscallError(errno.EINVAL)
            # mq_open(3): privileged creators (CAP_SYS_RESOURCE) may pass the sysctl limits.
            top = (HARD_MSGMAX, HARD_MSGSIZEMAX) if capable(t.tg, CAP_SYS_RESOURCE) else (MSG_MAX, MSGSIZE_MAX)
            if maxmsg > top[0] or msgsize > top[1]:
                raise SyscallError(errno.EINVAL)
        ns = ipc(t)
        ns.mq_inos += 1
        q = MessageQueue(name=name, ino=ns.mq_inos, uid=t.tg.fsuid, gid=t.tg.fsgid, mode=mode & 0o777 & ~t.fs.umask,
                         maxmsg=maxmsg, msgsize=msgsize)
        queues[name] = q
    f = MqueueFile(flags=oflag & (O_ACCMODE | O_NONBLOCK), queue=q)
    return t.fds.install(f, cloexec=bool(oflag & O_CLOEXEC))


@syscall(NR.mq_unlink)
def mq_unlink(t, name):
    name = _name(t, name)
    q = ipc(t).mqueues.get(name)
    if q is None:
        raise SyscallError(errno.ENOENT)
    if t.tg.fsuid != q.uid and not capable(t.tg, CAP_FOWNER):  # the queues' directory is sticky, as /tmp
        raise SyscallError(errno.EACCES)
    del ipc(t).mqueues[name]
    q.name = ""
    return 0


@syscall(NR.mq_timedsend)
def mq_timedsend(t, mqd, msg, length, priority, abs_timeout):
    f = _queue(t, mqd, "write")
    q, priority = f.queue, priority & 0xFFFFFFFF
    if priority >= MQ_PRIO_MAX:
        raise SyscallError(errno.EINVAL)
    if length > q.msgsize:
        raise SyscallError(errno.EMSGSIZE)
    if q.full():
        if f.flags & O_NONBLOCK:
            raise SyscallError(errno.EAGAIN)
        raise _wait(t, NR.mq_timedsend, q.senders, _deadline(t, NR.mq_timedsend, abs_timeout))
    data = t.mm.read(msg, length)
    tell = not q.messages and q.notify_tgid and not q.receivers.waiters
    q.put(priority, data)
    if tell:
        _notify(t, q)
    return 0


def _notify(t, q: MessageQueue) -> None:
    """mq_notify(3): a message reached an empty queue no one waits on: tell the registered
    process once, then forget it."""
    tg = t.kernel.tasks.pidns.groups.get(q.notify_tgid)
    if q.notify_kind == SIGEV_SIGNAL and tg is not None and tg.exit_status is None:
        info = struct.pack("<iii4xiIQ", q.notify_signo, 0, SI_MESGQ, t.tg.tgid, t.tg.creds[0], q.notify_value)
        t.kernel.send_signal(tg, q.notify_signo, info.ljust(128, b"\0"))
    q.notify_tgid = 0


@syscall(NR.mq_timedreceive)
def mq_timedreceive(t, mqd, msg, length, priority_ptr, abs_timeout):
    f = _queue(t, mqd, "read")
    q = f.queue
    if length < q.msgsize:
        raise SyscallError(errno.EMSGSIZE)
    if not q.messages:
        if f.flags & O_NONBLOCK:
            raise SyscallError(errno.EAGAIN)
        raise _wait(t, NR.mq_timedreceive, q.receivers, _deadline(t, NR.mq_timedreceive, abs_timeout))
    priority, data = q.messages[0]
    t.mm.write(msg, data)  # EFAULT before the message is taken
    if priority_ptr:
        t.mm.write(priority_ptr, struct.pack("<I", priority))
    q.take()
    return len(data)


@syscall(NR.mq_notify)
def mq_notify(t, mqd, sevp):
    q = _queue(t, mqd).queue
    if not sevp:
        if q.notify_tgid == t.tg.tgid:
            q.notify_tgid = 0
        return 0
    value, signo, kind = _SIGEVENT.unpack(t.mm.read(sevp, _SIGEVENT.size))
    if kind not in (SIGEV_SIGNAL, SIGEV_NONE):
        # SIGEV_THREAD hands the kernel a netlink socket, which the sandbox does not have.
        log.warning("mq_notify with sigev_notify %d is not supported: EINVAL", kind)
        raise SyscallError(errno.EINVAL)
    if kind == SIGEV_SIGNAL and not 1 <= signo <= 64:
        raise SyscallError(errno.EINVAL)
    live = t.kernel.tasks.pidns.groups.get(q.notify_tgid)
    if q.notify_tgid and live is not None and live.exit_status is None:
        raise SyscallError(errno.EBUSY)
    q.notify_tgid, q.notify_kind, q.notify_signo, q.notify_value = t.tg.tgid, kind, signo, value
    return 0


@syscall(NR.mq_getsetattr)
def mq_getsetattr(t, mqd, new, old):
    f = _queue(t, mqd)
    flags = None
    if new:
        flags = _ATTR.unpack(t.mm.read(new, _ATTR.size))[0]
        if flags & ~O_NONBLOCK:
            raise SyscallError(errno.EINVAL)
    if old:
        q = f.queue
        t.mm.write(old, _ATTR.pack(f.flags & O_NONBLOCK, q.maxmsg, q.msgsize, len(q.messages)))
    if flags is not None:
        f.flags = (f.flags & ~O_NONBLOCK) | flags
    return 0
