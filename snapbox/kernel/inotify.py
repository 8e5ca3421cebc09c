"""inotify (inotify(7)): watches on files and directories, and the events the file
operations raise on them.

A watch lives on the watched node (Inode.watches: [InotifyFile, wd] pairs) and in its
inotify instance; the operations that change or use a node call notify() (the node's own
watches, and its directory's with its name) or notify_dir() (a directory's, for a name
made, removed or moved in it). Events queue in the instance, merged with an identical
last one, up to max_queued_events, as Linux queues them; all of it is saved in images.
"""

from __future__ import annotations

import errno
import stat
import struct
from dataclasses import dataclass, field

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.fd import O_NONBLOCK, POLLIN, POLLRDNORM, OpenFile
from snapbox.kernel.signals import SIGIO, siginfo
from snapbox.kernel.waiter import WaitQueue
from snapbox.state import savable

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE, IN_CLOSE_NOWRITE, IN_OPEN = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
IN_MASK_CREATE, IN_MASK_ADD, IN_ISDIR, IN_ONESHOT = 0x10000000, 0x20000000, 0x40000000, 0x80000000
IN_ALL_EVENTS = 0xFFF
WATCH_FLAGS = IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK | IN_MASK_CREATE | IN_MASK_ADD | IN_ONESHOT
# Events a directory's watch also gets for the names in it.
CHILD_EVENTS = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CLOSE_NOWRITE | IN_OPEN
MAX_QUEUED_EVENTS = 16384  # /proc/sys/fs/inotify/max_queued_events
EVENT = struct.Struct("<iIII")  # struct inotify_event, before its name


@savable
@dataclass(eq=False)
class InotifyFile(OpenFile):
    """An inotify instance: its watches (wd -> [node, mask]) and its queue of events."""

    stream = True  # an anonymous inode: pread and pwrite fail with ESPIPE

    watches: dict = field(default_factory=dict)
    next_wd: int = 1
    events: list = field(default_factory=list)  # [wd, mask, cookie, name bytes]
    readable_queue: WaitQueue = field(default_factory=WaitQueue)

    def add_watch(self, node, mask: int) -> int:
        for wd, (watched, old) in self.watches.items():
            if watched is node:
                if mask & IN_MASK_CREATE:
                    raise SyscallError(errno.EEXIST)
                self.watches[wd][1] = (old | mask) if mask & IN_MASK_ADD else mask
                return wd
        wd = self.next_wd
        self.next_wd += 1
        self.watches[wd] = [node, mask]
        node.watches.append([self, wd])
        return wd

    def remove_watch(self, wd: int) -> None:
        """The watch goes, with an IN_IGNORED event (inotify_rm_watch, the node deleted)."""
        node, _ = self.watches.pop(wd)
        node.watches[:] = [w for w in node.watches if not (w[0] is self and w[1] == wd)]
        self.queue(wd, IN_IGNORED, 0, b"")

    def deliver(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        """An event of the watch's node: queued if the watch asked for it."""
        watch = self.watches.get(wd)
        if watch is None or not watch[1] & mask & IN_ALL_EVENTS:
            return
        self.queue(wd, mask, cookie, name)
        if watch[1] & IN_ONESHOT:
            self.remove_watch(wd)

    def queue(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        event = [wd, mask, cookie, name]
        if self.events and self.events[-1] == event:
            return  # merged with the identical last one
        if len(self.events) >= MAX_QUEUED_EVENTS:
            overflow = [-1, IN_Q_OVERFLOW, 0, b""]
            if self.events[-1] != overflow:
                self.events[-1] = overflow
            return
        self.events.append(event)
        self.readable_queue.notify()

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        if not self.events:
            if self.flags & O_NONBLOCK:
                raise SyscallError(errno.EAGAIN)
            raise WouldBlock(self.readable_queue)
        out = bytearray()
        while self.events:
            data = _encode(self.events[0])
            if len(out) + len(data) > count:
                break
            out += data
            self.events.pop(0)
        if not out:
            raise SyscallError(errno.EINVAL)  # not room for the next event
        return bytes(out)

    def unread(self) -> int:
        """FIONREAD: the bytes of every queued event."""
        return sum(len(_encode(e)) for e in self.events)

    def ready(self) -> int:
        return POLLIN | POLLRDNORM if self.events else 0

    def queues(self, t) -> tuple:
        return (self.readable_queue,)

    def stat(self) -> dict:
        return dict(dev=0xD, ino=0, mode=0o600, nlink=1, uid=0, gid=0, rdev=0, size=0, blksize=4096, blocks=0,
                    atime=0, mtime=0, ctime=0)

    def release(self) -> None:
        for node, _ in self.watches.values():
            node.watches[:] = [w for w in node.watches if w[0] is not self]
        self.watches.clear()

    def describe(self) -> str:
        return "anon_inode:inotify"


def _encode(event: list) -> bytes:
    wd, mask, cookie, name = event
    size = (len(name) + 1 + 15) // 16 * 16 if name else 0  # padded with NULs to 16 bytes
    return EVENT.pack(wd, mask, cookie, size) + name.ljust(size, b"\0")


def _isdir(node) -> int:
    return IN_ISDIR if stat.S_ISDIR(node.mode) else 0


# dnotify (fcntl F_NOTIFY): what a directory's registration asks for, and the inotify
# events each stands for.
DN_ACCESS, DN_MODIFY, DN_CREATE, DN_DELETE, DN_RENAME, DN_ATTRIB, DN_MULTISHOT = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x80000000)
DN_EVENTS = ((DN_ACCESS, IN_ACCESS), (DN_MODIFY, IN_MODIFY), (DN_CREATE, IN_CREATE), (DN_DELETE, IN_DELETE),
             (DN_RENAME, IN_MOVED_FROM | IN_MOVED_TO), (DN_ATTRIB, IN_ATTRIB))
POLL_MSG = 3  # si_code of a dnotify signal


@savable
@dataclass(eq=False)
class DirNotify:
    """A directory's dnotify registration (fcntl F_NOTIFY), made through one open file:
    each event it asks for sends the file's owner its signal (F_SETSIG, default SIGIO)
    with si_fd, once unless DN_MULTISHOT. On the node's watches as an inotify instance's
    watch is, under wd 0."""

    file: object = None  # the DirFile it was made with
    fd: int = 0
    tg: object = None  # the process that made it: whose signal it is
    mask: int = 0
    watches: dict = field(default_factory=dict)  # {0: [node, mask]}, as InotifyFile's

    def deliver(self, wd: int, mask: int, cookie: int, name: bytes) -> None:
        if self.file.refs == 0 or self.tg.exit_status is not None:
            self.drop()  # its file closed, or its process gone
            return
        if not any(bit & self.mask and mask & events for bit, events in DN_EVENTS):
            return
        sig = self.file.signum or SIGIO
        info = bytearray(siginfo(sig, POLL_MSG))
        info[16:28] = struct.pack("<qi", POLLIN | POLLRDNORM | 0x400, self.fd)  # si_band (| POLLMSG), si_fd
        self.tg.tasks[0].kernel.send_signal(self.tg, sig, bytes(info))
        if not self.mask & DN_MULTISHOT:
            self.drop()

    def drop(self) -> None:
        node = self.watches.get(0, [None])[0]
        if node is not None:
            node.watches[:] = [w for w in node.watches if w[0] is not self]
        self.watches = {}


def dir_notify(t, f, fd: int, mask: int) -> int:
    """fcntl(F_NOTIFY): register (or, with 0, end) the directory's notifications for `f`."""
    node = f.node
    for w, _ in list(node.watches):
        if isinstance(w, DirNotify) and w.file is f:
            w.drop()
    if mask & ~DN_MULTISHOT:
        reg = DirNotify(file=f, fd=fd, tg=t.tg, mask=mask, watches={0: [node, mask]})
        node.watches.append([reg, 0])
    return 0


def notify(node, mask: int, parent=None, name: str = "") -> None:
    """Event `mask` on `node`: to its directory's watches with its name (`parent`, if it
    was reached through one), then to its own."""
    if parent is not None and parent.watches and mask & CHILD_EVENTS:
        for f, wd in list(parent.watches):
            if f.watches.get(wd, (None, 0))[1] & IN_EXCL_UNLINK and not getattr(node, "nlink", 1):
                continue
            f.deliver(wd, mask | _isdir(node), 0, name.encode(errors="surrogateescape"))
    for f, wd in list(node.watches):
        f.deliver(wd, mask | _isdir(node), 0, b"")


def notify_dir(d, mask: int, name: str, isdir: bool = False, cookie: int = 0) -> None:
    """Event `mask` on directory `d` about the entry `name` (made, removed, moved)."""
    for f, wd in list(d.watches):
        f.deliver(wd, mask | (IN_ISDIR if isdir else 0), cookie, name.encode(errors="surrogateescape"))


def deleted(node) -> None:
    """`node` is gone (its last name and use): IN_DELETE_SELF, and its watches end."""
    for f, wd in list(node.watches):
        f.deliver(wd, IN_DELETE_SELF, 0, b"")
        if wd in f.watches:
            f.remove_watch(wd)


def moved_node(old, new) -> None:
    """A node replaced by its copy (a rootfs file copied up): its watches follow it."""
    new.watches = old.watches
    old.watches = []
    for f, wd in new.watches:
        f.watches[wd][0] = new
