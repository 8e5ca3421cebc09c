"""POSIX message queues (mq_overview(7)): named queues of messages with priorities, in the
sandbox's IPC namespace (IpcNamespace.mqueues), each open one an mqueue file descriptor.

A queue keeps its messages highest priority first, oldest first within a priority. A
sender that finds it full and a receiver that finds it empty are parked on its WaitQueues
and make their call again when woken (or when their timeout passes), like every blocking
call here: a checkpoint saves them at the syscall and they wait again after the restore.
An unlinked queue lives on while a descriptor refers to it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from snapbox.kernel.creds import may_access
from snapbox.kernel.fd import POLLIN, POLLOUT, OpenFile
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

# Linux's defaults and limits (ipc/mqueue.c, include/linux/ipc_namespace.h)
DEFAULT_MAXMSG, DEFAULT_MSGSIZE = 10, 8192
MSG_MAX, MSGSIZE_MAX = 10, 8192  # /proc/sys/fs/mqueue/msg_max, msgsize_max: an unprivileged creator's ceiling
HARD_MSGMAX, HARD_MSGSIZEMAX = 65536, 16 << 20  # a privileged one's (CAP_SYS_RESOURCE)
MQ_PRIO_MAX = 32768
SIGEV_SIGNAL, SIGEV_NONE = 0, 1


@savable
@dataclass(eq=False)
class MessageQueue:
    """One queue: its attributes, its messages and who is to be told of the next one."""

    name: str  # without the leading slash; "" once unlinked
    ino: int  # its inode number (fstat), unique in the namespace
    uid: int  # owner and group: its creator's effective ids
    gid: int
    mode: int  # permission bits
    maxmsg: int  # mq_maxmsg: messages it holds at most
    msgsize: int  # mq_msgsize: the largest message
    messages: list = field(default_factory=list)  # [priority, bytes], highest priority first, FIFO within
    order: list = field(default_factory=list)  # -priority of each message, for bisect; kept in step
    # mq_notify(3): the registered process (0: none), how (SIGEV_SIGNAL or SIGEV_NONE), its
    # signal and sigev_value.
    notify_tgid: int = 0
    notify_kind: int = SIGEV_NONE
    notify_signo: int = 0
    notify_value: int = 0
    receivers: WaitQueue = field(default_factory=WaitQueue)  # waiting for a message
    senders: WaitQueue = field(default_factory=WaitQueue)  # waiting for room

    def full(self) -> bool:
        return len(self.messages) >= self.maxmsg

    def put(self, priority: int, data: bytes) -> None:
        i = bisect.bisect_right(self.order, -priority)
        self.messages.insert(i, [priority, data])
        self.order.insert(i, -priority)
        self.receivers.notify()

    def take(self) -> tuple[int, bytes]:
        priority, data = self.messages.pop(0)
        del self.order[0]
        self.senders.notify()
        return priority, data

    def allows(self, tg, want: int) -> bool:
        """Process `tg` may open it for `want` (MAY_READ, MAY_WRITE or both), as a file
        of these permissions."""
        return may_access(tg, self, want)

    def status(self) -> bytes:
        """What read(2) of a descriptor shows (mq_overview(7))."""
        return (f"QSIZE:{sum(len(m[1]) for m in self.messages):<10} NOTIFY:{self.notify_kind if self.notify_tgid else 0:<5} "
                f"SIGNO:{self.notify_signo if self.notify_tgid else 0:<5} NOTIFY_PID:{self.notify_tgid:<6}\n").encode()


@savable
@dataclass(eq=False)
class MqueueFile(OpenFile):
    """An open message queue descriptor (mq_open): O_RDONLY, O_WRONLY or O_RDWR, and
    O_NONBLOCK."""

    queue: MessageQueue | None = None

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        text = self.queue.status()
        start = self.offset if offset is None else offset
        data = text[start : start + count]
        if offset is None:
            self.offset += len(data)
        return data

    def ready(self) -> int:
        q = self.queue
        return (POLLIN if q.messages else 0) | (0 if q.full() else POLLOUT)

    def queues(self, t) -> tuple:
        return (self.queue.receivers, self.queue.senders)

    def stat(self) -> dict:
        q = self.queue
        return dict(dev=0x13, ino=q.ino, mode=0o100000 | q.mode, nlink=1 if q.name else 0, uid=q.uid,
                    gid=q.gid, rdev=0, size=len(q.status()), blksize=4096, blocks=0, atime=0, mtime=0, ctime=0)

    def describe(self) -> str:
        return f"mqueue /{self.queue.name} ({len(self.queue.messages)} messages)"
