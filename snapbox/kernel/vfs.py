"""The root filesystem: the bundle's rootfs read-only beneath an in-memory writable layer.

Directories are all `Dir` nodes: a directory of the rootfs gets one the first time it is
walked through (it then merges its lower directory), so a file can be created anywhere.
Regular files written by the sandbox live in `MemRegular` nodes whose pages are MemoryFile
ranges; files of the rootfs stay `LowerNode`s until opened for writing (copy-up).

Host files are reached only through `Lower.open`, which resolves a path beneath the rootfs
with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS): the sentry
resolves `..` and symlinks itself, in sandbox terms, so no host path outside the rootfs
can ever be named.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import stat as st
import time
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

from snapbox.kernel.creds import MAY_EXEC, check, searches_freely
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.fd import O_APPEND, O_PATH, OpenFile
from snapbox.kernel.inotify import (
    IN_ACCESS, IN_CLOSE_NOWRITE, IN_CLOSE_WRITE, IN_MODIFY, deleted, moved_node, notify,
)
from snapbox.kernel.locks import release_owner
from snapbox.kernel.waiter import WaitQueue
from snapbox.memfile import PAGE_SIZE, MemoryFile
from snapbox.memfile.memfile import OutOfMemory
from snapbox.state import nosave, savable

OVERLAY_DEV = 0x2A  # st_dev of every node of the root filesystem
# fcntl(2) file seals (F_ADD_SEALS), on memfd files.
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE = 1, 2, 4, 8, 16
SYMLOOP_MAX = 40
KEPT_DIRS = 32  # directory fds a layer keeps for lookups

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


@dataclass(eq=False)
class Lower:
    """The read-only lower layer: a host directory, opened once, reached only beneath."""

    path: str  # host path of the rootfs
    fd: int = -1  # O_PATH fd of the rootfs, opened on first use
    closer: weakref.finalize | None = None  # closes fd when called, or when this is collected
    # O_PATH fds of the directories looked in last (relative path -> fd, the latest last),
    # opened beneath like any other: a lookup is then one fstatat of a single name in one.
    dirs: collections.OrderedDict = field(default_factory=collections.OrderedDict)

    @property
    def dirfd(self) -> int:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise SyscallError(e.errno, f"rootfs {self.path}") from None
            self.closer = weakref.finalize(self, os.close, self.fd)
        return self.fd

    def open(self, rel: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
        """Open `rel` (relative to the rootfs, no symlinks in it) and return a host fd."""
        rel = rel or "."
        how = _OpenHow(flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode if flags & os.O_CREAT else 0,
                       _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, self.dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            e = ctypes.get_errno()
            # A symlink as the last component: ELOOP from O_NOFOLLOW; the caller uses O_PATH.
            raise SyscallError(e)
        return fd

    def lstat(self, rel: str, kept: bool = False) -> os.stat_result:
        """The host's lstat of `rel`; `kept`: through a kept fd of its directory, for layers
        only the sandbox changes (directories the host renames would be looked in stale)."""
        parent, _, name = rel.rpartition("/")
        if kept and name not in ("", ".", ".."):
            try:
                return os.stat(name, dir_fd=self._kept_dir(parent), follow_symlinks=False)
            except OSError as e:
                raise SyscallError(e.errno) from None
        fd = self.open(rel, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def _kept_dir(self, rel: str) -> int:
        fd = self.dirs.pop(rel, None)
        if fd is None:
            fd = self.open(rel, os.O_PATH | os.O_DIRECTORY)
            if not self.dirs:
                weakref.finalize(self, _close_all, self.dirs)
            elif len(self.dirs) >= KEPT_DIRS:
                os.close(self.dirs.popitem(last=False)[1])
        self.dirs[rel] = fd
        return fd

    def readlink(self, rel: str) -> bytes:
        fd = self.open(rel, os.O_PATH)
        try:
            return _readlink_fd(fd)
        finally:
            os.close(fd)

    def at(self, rel: str, op, *args, **kwargs):
        """Run os.op(basename, *args, dir_fd=<its directory, opened beneath>): how a
        read-write bind mount changes its host directory."""
        parent, _, name = rel.rpartition("/")
        dirfd = self.open(parent, os.O_PATH | os.O_DIRECTORY)
        try:
            return op(name, *args, dir_fd=dirfd, **kwargs)
        except OSError as e:
            raise SyscallError(e.errno) from None
        finally:
            os.close(dirfd)

    def listdir(self, rel: str, kept: bool = False) -> dict[str, int]:
        """The names in directory `rel`, each with its file type (stat.S_IFDIR, S_IFREG or
        S_IFLNK, from the host's directory entry, so nothing is stat'ed; 0 for any other or
        an unknown type); `kept`: opened from a kept fd of its parent (see lstat)."""
        parent, _, name = rel.rpartition("/")
        if kept and name not in ("", ".", ".."):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self._kept_dir(parent))
            except OSError as e:
                raise SyscallError(e.errno) from None
        else:
            fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as entries:
                return {e.name: _entry_type(e) for e in entries}
        except OSError as e:
            raise SyscallError(e.errno) from None
        finally:
            os.close(fd)

    def close(self) -> None:
        _close_all(self.dirs)
        if self.fd >= 0:
            self.closer()
            self.fd = -1


def _entry_type(entry: os.DirEntry) -> int:
    """The type a directory entry gives, without a stat (DirEntry stats only for DT_UNKNOWN,
    and never follows a symlink here)."""
    if entry.is_symlink():
        return st.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return st.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return st.S_IFREG
    return 0


def _close_all(fds: dict) -> None:
    while fds:
        os.close(fds.popitem()[1])


def _readlink_fd(fd: int) -> bytes:
    buf = ctypes.create_string_buffer(4096)
    n = _libc.readlinkat(fd, b"", buf, 4096)
    if n < 0:
        raise SyscallError(ctypes.get_errno())
    return buf.raw[:n]


def now_ns() -> int:
    return time.time_ns()


@savable
@dataclass(eq=False)
class Inode:
    """What every node of the filesystem has: identity, type and permission bits, times."""

    ino: int = 0
    mode: int = 0  # S_IF* type bits and permission bits
    uid: int = 0
    gid: int = 0
    nlink: int = 1
    atime: int = 0  # ns since the epoch
    mtime: int = 0
    ctime: int = 0
    locks: list = field(default_factory=list)  # [owner, F_RDLCK/F_WRLCK, start, end] advisory locks
    rdev: int = 0  # the device number of a device node
    xattrs: dict = field(default_factory=dict)  # extended attributes: name -> value, both bytes
    watches: list = field(default_factory=list)  # inotify watches: [InotifyFile, wd]

    def size(self) -> int:
        return 0

    def stat(self) -> dict:
        size = self.size()
        return dict(dev=OVERLAY_DEV, ino=self.ino, mode=self.mode, nlink=self.nlink, uid=self.uid,
                    gid=self.gid, rdev=self.rdev, size=size, blksize=PAGE_SIZE, blocks=(size + 511) // 512,
                    atime=self.atime, mtime=self.mtime, ctime=self.ctime)

    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)


@savable
@dataclass(eq=False)
class MemRegular(Inode):
    """A regular file of the writable layer; its data lives in MemoryFile pages."""

    memfile: MemoryFile | None = None
    pages: dict = field(default_factory=dict)  # page index -> MemoryFile offset; absent = zeros
    length: int = 0  # the file size in bytes
    opens: int = 0  # open file descriptions of this file; pages go when this and nlink are 0
    seals: int = 0  # F_SEAL_* bits (memfd_create(2)): what no one may do to this file any more

    def size(self) -> int:
        return self.length

    def read(self, offset: int, count: int) -> bytes:
        end = min(offset + count, self.length)
        out = bytearray()
        pos = offset
        while pos < end:
            index, within = divmod(pos, PAGE_SIZE)
            n = min(PAGE_SIZE - within, end - pos)
            off = self.pages.get(index)
            out += self.memfile.read(off + within, n) if off is not None else bytes(n)
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if self.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) or \
                (self.seals & F_SEAL_GROW and offset + len(data) > self.length):
            raise SyscallError(errno.EPERM)
        view = memoryview(data)
        pos = offset
        while view:
            index, within = divmod(pos, PAGE_SIZE)
            n = min(PAGE_SIZE - within, len(view))
            self.memfile.write(self.page(index) + within, view[:n])
            view = view[n:]
            pos += n
        self.length = max(self.length, pos)
        self.mtime = self.ctime = now_ns()

    def page(self, index: int) -> int:
        """The MemoryFile offset of page `index`, allocated (zeroed) if it has none yet."""
        off = self.pages.get(index)
        if off is None:
            try:
                off = self.pages[index] = self.memfile.alloc(PAGE_SIZE)
            except OutOfMemory:
                raise SyscallError(errno.ENOSPC, "sandbox memory limit") from None
        return off

    def truncate(self, length: int, mapped: bool = False) -> None:
        """Make the file `length` bytes long. The pages past a shorter end are given back,
        or, while a shared mapping holds them (`mapped`), emptied and kept for it: its
        pages there are not there until the file grows back over them."""
        if (length < self.length and self.seals & F_SEAL_SHRINK) or (length > self.length and self.seals & F_SEAL_GROW):
            raise SyscallError(errno.EPERM)
        if length < self.length:
            last = (length + PAGE_SIZE - 1) // PAGE_SIZE
            for index in [i for i in self.pages if i >= last]:
                if mapped:
                    self.memfile.punch(self.pages[index], PAGE_SIZE)
                else:
                    self.memfile.release(self.pages.pop(index), PAGE_SIZE)
            within = length % PAGE_SIZE
            if within and (length // PAGE_SIZE) in self.pages:
                off = self.pages[length // PAGE_SIZE]
                self.memfile.write(off + within, bytes(PAGE_SIZE - within))
        self.length = length
        self.mtime = self.ctime = now_ns()

    def allocate(self, offset: int, length: int, keep_size: bool) -> None:
        """fallocate(2): give [offset, offset+length) pages of its own (zeroed where there
        were none) and, unless `keep_size`, make the file at least that long."""
        end = offset + length
        if self.seals & F_SEAL_GROW and not keep_size and end > self.length:
            raise SyscallError(errno.EPERM)
        for index in range(offset // PAGE_SIZE, (end + PAGE_SIZE - 1) // PAGE_SIZE):
            self.page(index)
        if not keep_size and end > self.length:
            self.length = end
        self.ctime = now_ns()

    def punch(self, offset: int, length: int) -> None:
        """FALLOC_FL_PUNCH_HOLE: [offset, offset+length) reads as zeros; whole pages in it
        are given back. The size stays."""
        if self.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
            raise SyscallError(errno.EPERM)
        end = min(offset + length, (self.length + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
        pos = offset
        while pos < end:
            index, within = divmod(pos, PAGE_SIZE)
            n = min(PAGE_SIZE - within, end - pos)
            off = self.pages.get(index)
            if off is not None:
                if n == PAGE_SIZE:
                    self.memfile.release(self.pages.pop(index), PAGE_SIZE)
                else:
                    self.memfile.write(off + within, bytes(n))
            pos += n
        self.mtime = self.ctime = now_ns()

    def release_pages(self) -> None:
        for off in self.pages.values():
            self.memfile.release(off, PAGE_SIZE)
        self.pages.clear()


@savable
@dataclass(eq=False)
class MemSymlink(Inode):
    target: bytes = b""

    def size(self) -> int:
        return len(self.target)


@savable
@dataclass(eq=False)
class LowerNode(Inode):
    """A non-directory of the read-only rootfs, described by its path beneath it."""

    path: str = ""  # relative to its layer's host directory; never contains a symlink or ".."
    length: int = 0
    layer: int = 0  # which host directory (Filesystem.layers) it lives in

    def size(self) -> int:
        return self.length


@savable
@dataclass(eq=False)
class Dir(Inode):
    """A directory: entries of the writable layer merged over a lower directory, if any."""

    seek_end: ClassVar[bool] = False  # lseek SEEK_END works on it (it does not on tmpfs's)
    name: str = ""  # the name in its parent (for getcwd); "/" for the root
    parent: Dir | None = None  # None only for the root
    entries: dict = field(default_factory=dict)  # name -> Inode, upper entries and cached lower ones
    # name -> inode number of a lower name getdents64 listed before anything looked it up:
    # the node made at its lookup takes that number.
    inos: dict = field(default_factory=dict)
    whiteouts: set = field(default_factory=set)  # lower names deleted in this layer
    tmpfs: bool = False  # the top of a tmpfs mount (or /dev): writable even with a read-only root
    lower: str | None = None  # path of the merged lower directory ("" = its layer's top), or None
    layer: int = 0  # the host directory (Filesystem.layers) `lower` is in: 0 is the rootfs

    def path(self) -> str:
        parts = []
        d = self
        while d.parent is not None:
            parts.append(d.name)
            d = d.parent
        return "/" + "/".join(reversed(parts))


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MOUNTABLE = ("tmpfs", "ramfs", "proc")  # the filesystems mount(2) makes in a sandbox (/proc/filesystems)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 0x400, 0x800, 1 << 21, 1 << 24


@savable
@dataclass(eq=False)
class Mount:
    """A mount on the sandbox's tree, its bundle's or one made with mount(2): its top
    `node` stands at `parent`/`name`, over what was there (`covered`, put back when it is
    unmounted)."""

    parent: Dir
    name: str
    node: Inode
    covered: Inode | None = None
    fstype: str = "tmpfs"
    source: str = "tmpfs"
    flags: int = 0  # mount(2)'s MS_NOSUID, MS_NODEV, MS_NOEXEC and atime flags, as given
    expiring: bool = False  # umount2(MNT_EXPIRE) marked it: the next one takes it away

    def path(self) -> str:
        return self.parent.path().rstrip("/") + "/" + self.name

    def line(self) -> str:
        """Its line of /proc/mounts."""
        opts = ["ro" if self.flags & MS_RDONLY else "rw"]
        opts += [name for bit, name in ((MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"), (MS_NOEXEC, "noexec"),
                                        (MS_NOATIME, "noatime"), (MS_NODIRATIME, "nodiratime"))
                 if self.flags & bit]
        if not self.flags & (MS_NOATIME | MS_STRICTATIME):
            opts.append("relatime")
        return f"{self.source} {_escaped(self.path())} {self.fstype} {','.join(opts)} 0 0\n"


def _escaped(path: str) -> str:
    """A path as /proc/mounts writes it: space, tab, newline and backslash in octal."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def within(d: Dir | None, top) -> bool:
    """Whether directory `d` is `top` or beneath it."""
    while d is not None:
        if d is top:
            return True
        d = d.parent
    return False


@savable
@dataclass(eq=False)
class Filesystem:
    """The sandbox's root filesystem."""

    rootfs: str  # host path of the lower layer (the bundle's rootfs)
    memfile: MemoryFile
    root: Dir | None = None
    next_ino: int = 2
    binds: list = field(default_factory=list)  # host directories of bind mounts (layers 1...)
    rw_layers: set = field(default_factory=set)  # layers mounted read-write: changes go to the host
    readonly_root: bool = False  # root.readonly: outside tmpfs mounts and rw binds, nothing changes
    # Files of the writable layer and memfds no name and no open file holds any more: their
    # pages go once no mapping holds them either (Kernel.collect_orphans), as on Linux,
    # where a shared mapping keeps its file alive after close and unlink.
    orphans: list = field(default_factory=list)
    mounts: list = field(default_factory=list)  # Mount: the bundle's, then mount(2)'s, in order
    lowers: list = nosave(list)  # Lower of each layer: the rootfs, then each bind
    lock_queues: dict = nosave(dict)  # id(inode) -> WaitQueue of tasks waiting for its locks

    def __post_init__(self) -> None:
        self.lowers = [Lower(p) for p in [self.rootfs, *self.binds]]
        if self.root is None:
            self.root = self._lower_dir(None, "/", "", 0)

    def after_load(self, ctx) -> None:
        if ctx is not None and ctx.rootfs:
            self.rootfs = ctx.rootfs
        self.lowers = [Lower(p) for p in [self.rootfs, *self.binds]]

    @property
    def lower(self) -> Lower:
        """The rootfs layer."""
        return self.lowers[0]

    def host(self, layer: int) -> Lower:
        return self.lowers[layer]

    def lock_queue(self, node: Inode) -> WaitQueue:
        q = self.lock_queues.get(id(node))
        if q is None:
            q = self.lock_queues[id(node)] = WaitQueue()
        return q

    def new_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino

    def _lower_dir(self, parent: Dir | None, name: str, rel: str, layer: int, s: os.stat_result | None = None,
                   ino: int = 0) -> Dir:
        s = s or self.host(layer).lstat(rel)
        return Dir(ino=ino or self.new_ino(), mode=s.st_mode, uid=s.st_uid, gid=s.st_gid, nlink=s.st_nlink,
                   atime=s.st_atime_ns, mtime=s.st_mtime_ns, ctime=s.st_ctime_ns,
                   name=name, parent=parent, lower=rel, layer=layer)

    def lookup(self, d: Dir, name: str) -> Inode:
        """The child `name` of `d`, or ENOENT."""
        dynamic = getattr(d, "child", None)
        if dynamic is not None:
            return dynamic(name)  # a synthetic directory (/proc)
        node = d.entries.get(name)
        if node is not None:
            return node
        if d.lower is None or name in d.whiteouts:
            raise SyscallError(errno.ENOENT)
        rw = d.layer in self.rw_layers  # the host may change it: look each time, keep nothing
        rel = f"{d.lower}/{name}" if d.lower else name
        try:
            s = self.host(d.layer).lstat(rel, kept=not rw)
        except SyscallError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise SyscallError(errno.ENOENT) from None
            raise
        ino = 0 if rw else d.inos.pop(name, 0)
        if st.S_ISDIR(s.st_mode):
            node = self._lower_dir(d, name, rel, d.layer, s, ino)
        else:
            node = LowerNode(ino=ino or self.new_ino(), mode=s.st_mode, uid=s.st_uid, gid=s.st_gid,
                             nlink=s.st_nlink, atime=s.st_atime_ns, mtime=s.st_mtime_ns,
                             ctime=s.st_ctime_ns, path=rel, length=s.st_size, rdev=s.st_rdev, layer=d.layer)
        if not rw:
            d.entries[name] = node
        return node

    def _mount_point(self, destination: str) -> tuple[Dir, str]:
        """The directory holding `destination` (made in the writable layer as needed)."""
        parts = [p for p in destination.split("/") if p]
        if not parts or ".." in parts:
            raise SyscallError(errno.EINVAL, f"bad mount destination {destination!r}")
        d = self.root
        for part in parts[:-1]:
            try:
                node = self.lookup(d, part)
            except SyscallError:
                node = self.make_dir(d, part, 0o755)
            if not isinstance(node, Dir):
                raise SyscallError(errno.ENOTDIR, f"mount destination {destination}: {part} is not a directory")
            d = node
        return d, parts[-1]

    def make_dir(self, parent: Dir, name: str, mode: int, uid: int = 0, gid: int = 0) -> Dir:
        now = now_ns()
        d = Dir(ino=self.new_ino(), mode=st.S_IFDIR | (mode & 0o7777), nlink=2, atime=now, mtime=now,
                ctime=now, name=name, parent=parent, uid=uid, gid=gid)
        parent.entries[name] = d
        parent.whiteouts.discard(name)
        return d

    def mount_tmpfs(self, destination: str, mode: int = 0o1777) -> None:
        """An empty in-memory directory at `destination`."""
        parent, name = self._mount_point(destination)
        covered = parent.entries.get(name)
        self.attach(parent, name, covered, self.new_tmpfs(parent, name, mode), "tmpfs", "tmpfs")

    def new_tmpfs(self, parent: Dir, name: str, mode: int, uid: int = 0, gid: int = 0) -> Dir:
        now = now_ns()
        return Dir(ino=self.new_ino(), mode=st.S_IFDIR | (mode & 0o7777), nlink=2, atime=now, mtime=now,
                   ctime=now, name=name, parent=parent, uid=uid, gid=gid, tmpfs=True)

    def attach(self, parent: Dir, name: str, covered: Inode | None, node: Inode, fstype: str, source: str,
               flags: int = 0) -> Mount:
        """Mount `node` at `parent`/`name`, over `covered`."""
        parent.entries[name] = node
        parent.whiteouts.discard(name)
        m = Mount(parent=parent, name=name, node=node, covered=covered, fstype=fstype, source=source, flags=flags)
        self.mounts.append(m)
        return m

    def detach(self, m: Mount) -> None:
        """Unmount `m`: what it covered is back."""
        if m.covered is None:
            m.parent.entries.pop(m.name, None)
        else:
            m.parent.entries[m.name] = m.covered
        self.mounts.remove(m)

    def mount_at(self, parent: Dir, name: str, node: Inode) -> Mount | None:
        """The mount whose top `node` is, found at `parent`/`name` (the last one made
        there: mounts stack)."""
        for m in reversed(self.mounts):
            if m.node is node and m.parent is parent and m.name == name:
                return m
        return None

    def mount_flags(self, node: Inode, parent: Dir) -> int:
        """The flags of the mount `node` (found in `parent`) is on (MS_NOEXEC...)."""
        tops = {id(m.node): m for m in self.mounts}
        m = tops.get(id(node))
        d = parent
        while m is None and d is not None:
            m = tops.get(id(d))
            d = d.parent
        return m.flags if m is not None else 0

    def writable_in_memory(self, node: Inode) -> bool:
        """Whether a node of the in-memory layer may change: always, unless the root is
        read-only; then only inside a tmpfs mount (files there are the only ones made)."""
        if not self.readonly_root or isinstance(node, (MemRegular, MemSymlink)):
            return True
        d = node if isinstance(node, Dir) else None
        while d is not None:
            if d.tmpfs:
                return True
            d = d.parent
        return False

    def mount_bind(self, destination: str, source: str, writable: bool = False) -> None:
        """Host file or directory `source` at `destination`, read-only unless `writable`
        (then the sandbox's changes go to the host, and are not part of a checkpoint)."""
        if not os.path.exists(source):
            raise SyscallError(errno.ENOENT, f"bind mount source {source} does not exist")
        parent, name = self._mount_point(destination)
        if os.path.isdir(source):
            self.binds.append(source)
            self.lowers.append(Lower(source))
            node = self._lower_dir(parent, name, "", len(self.lowers) - 1)
        else:
            self.binds.append(os.path.dirname(source) or "/")
            self.lowers.append(Lower(self.binds[-1]))
            layer = len(self.lowers) - 1
            s = self.host(layer).lstat(os.path.basename(source))
            node = LowerNode(ino=self.new_ino(), mode=s.st_mode, uid=s.st_uid, gid=s.st_gid, nlink=1,
                             atime=s.st_atime_ns, mtime=s.st_mtime_ns, ctime=s.st_ctime_ns,
                             path=os.path.basename(source), length=s.st_size, layer=layer)
        if writable:
            self.rw_layers.add(len(self.lowers) - 1)
        self.attach(parent, name, parent.entries.get(name), node, "none", source, 0 if writable else MS_RDONLY)

    def mount_of(self, node: Inode, parent: Dir) -> object:
        """The mount `node` (found in directory `parent`) is on: a tmpfs mount's top Dir,
        a bind mount's layer number, or the root Dir for the rootfs and its writable layer.
        link(2) and rename(2) never cross from one to another (EXDEV)."""
        if not isinstance(node, Dir):
            if getattr(node, "layer", 0):
                return node.layer  # a file of a bind mount (or a bind-mounted file)
            node = parent
        d = node
        while d is not None:
            if d.tmpfs:
                return d
            if d.layer:
                return d.layer
            d = d.parent
        return self.root

    def is_mount_point(self, node: Inode, parent: Dir) -> bool:
        """Whether `node` is the top of a mount (rename and rmdir of one fail with EBUSY)."""
        if isinstance(node, Dir) and node.tmpfs or any(m.node is node and m.parent is parent for m in self.mounts):
            return True
        layer = getattr(node, "layer", 0)
        return bool(layer) and getattr(parent, "layer", 0) != layer

    def list_dir(self, d: Dir) -> list[str]:
        """The names in `d` (without . and ..): its entries merged over its lower directory."""
        dynamic = getattr(d, "names", None)
        if dynamic is not None:
            return dynamic()
        return [*d.entries, *self._lower_names(d)]

    def _lower_names(self, d: Dir) -> dict[str, int]:
        """The names of `d`'s lower directory that its entries neither hold nor hide, with
        their types as Lower.listdir gives them."""
        if d.lower is None:
            return {}
        names = self.host(d.layer).listdir(d.lower, kept=d.layer not in self.rw_layers)
        return {name: t for name, t in names.items() if name not in d.entries and name not in d.whiteouts}

    def dir_entries(self, d: Dir) -> list[tuple[str, int, int]]:
        """What getdents64 lists of `d` (without . and ..): (name, inode number, file type
        bits). A name of a lower layer only the sandbox changes is not looked up when its
        host directory entry gives its type: it gets an inode number its node takes if it
        is ever looked up (`find /usr -name '*.h'` then stats none of the files it passes)."""
        out = []
        if getattr(d, "names", None) is None:
            for name, node in d.entries.items():
                out.append((name, node.ino, st.S_IFMT(node.mode)))
            lower = self._lower_names(d)
        else:
            lower = dict.fromkeys(d.names(), 0)
        kept = d.layer not in self.rw_layers
        for name, kind in lower.items():
            if kind and kept and d.lower is not None:
                ino = d.inos.get(name)
                if ino is None:
                    ino = d.inos[name] = self.new_ino()
                out.append((name, ino, kind))
                continue
            try:
                node = self.lookup(d, name)
            except SyscallError:
                continue  # gone since it was listed
            out.append((name, node.ino, st.S_IFMT(node.mode)))
        return out

    def readlink(self, node: Inode) -> bytes:
        target = getattr(node, "target", None)
        if callable(target):
            return target()  # a synthetic link (/proc)
        if isinstance(node, MemSymlink):
            return node.target
        if isinstance(node, LowerNode) and st.S_ISLNK(node.mode):
            return self.host(node.layer).readlink(node.path)
        raise SyscallError(errno.EINVAL)

    def create_regular(self, d: Dir, name: str, mode: int, uid: int, gid: int) -> MemRegular:
        now = now_ns()
        node = MemRegular(ino=self.new_ino(), mode=st.S_IFREG | (mode & 0o7777), uid=uid, gid=gid,
                          atime=now, mtime=now, ctime=now, memfile=self.memfile)
        d.entries[name] = node
        d.whiteouts.discard(name)
        d.mtime = d.ctime = now
        return node

    def copy_up_node(self, node: LowerNode) -> MemRegular | LowerNode:
        """copy_up() for a node found by identity (an open file): its directory is searched."""
        if node.layer:
            return node  # a bind mount's file: no copy of it
        parent_path, _, name = node.path.rpartition("/")
        d = self.root
        for part in (p for p in parent_path.split("/") if p):
            d = self.lookup(d, part)
        if d.entries.get(name) is node:
            return self.copy_up(d, name, node)
        current = d.entries.get(name)
        return current if isinstance(current, MemRegular) else node

    def copy_up(self, d: Dir, name: str, node: LowerNode) -> MemRegular:
        """Give a lower regular file a copy in the writable layer, replacing it in `d`."""
        up = MemRegular(ino=node.ino, mode=node.mode, uid=node.uid, gid=node.gid,
                        atime=node.atime, mtime=node.mtime, ctime=node.ctime, memfile=self.memfile)
        fd = self.host(node.layer).open(node.path, os.O_RDONLY)
        try:
            pos = 0
            while True:
                chunk = os.pread(fd, 1 << 20, pos)
                if not chunk:
                    break
                up.write(pos, chunk)
                pos += len(chunk)
        finally:
            os.close(fd)
        up.mtime, up.ctime = node.mtime, node.ctime
        up.xattrs = node.xattrs
        moved_node(node, up)
        d.entries[name] = up
        return up

    def walk(self, start: Dir, root: Dir, path: bytes, follow_last: bool = True, who=None):
        """Resolve `path` from `start` (or `root` if absolute) in sandbox terms.

        Returns (parent Dir, last name, node or None when the last component does not
        exist). Symlinks are followed in every component but the last, which is followed
        only if `follow_last`. Raises ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, and with
        `who` (a ThreadGroup) EACCES for a directory it may not search.
        """
        if not path:
            raise SyscallError(errno.ENOENT)
        if len(path) >= 4096:
            raise SyscallError(errno.ENAMETOOLONG)
        budget = [SYMLOOP_MAX]
        if who is not None and searches_freely(who):
            who = None
        return self._walk(start, root, path, follow_last, budget, who)

    def _walk(self, d: Dir, root: Dir, path: bytes, follow_last: bool, budget: list, who=None):
        if path.startswith(b"/"):
            d = root
        trailing_slash = path.endswith(b"/")
        parts = [os.fsdecode(p) for p in path.split(b"/") if p]
        if not parts:
            return d, ".", d
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            if len(name) > 63 and len(os.fsencode(name)) > 255:  # NAME_MAX counts bytes
                raise SyscallError(errno.ENAMETOOLONG)
            if not d.is_dir():
                raise SyscallError(errno.ENOTDIR)
            if who is not None:
                check(who, d, MAY_EXEC)
            if name == ".":
                node = d
            elif name == "..":
                node = d if d is root or d.parent is None else d.parent
            else:
                try:
                    node = self.lookup(d, name)
                except SyscallError as e:
                    if e.errno == errno.ENOENT and last:
                        return d, name, None
                    raise
            magic = getattr(node, "magic", None) if st.S_ISLNK(node.mode) and last and follow_last else None
            if magic is not None and (opened := magic()) is not None:
                return d, name, opened  # a magic link of /proc: what it stands for, not a path
            if st.S_ISLNK(node.mode) and (not last or follow_last or trailing_slash):
                budget[0] -= 1
                if budget[0] < 0:
                    raise SyscallError(errno.ELOOP)
                target = self.readlink(node)
                rest = b"/".join(os.fsencode(p) for p in parts[i + 1:])
                joined = target + (b"/" + rest if rest else b"") + (b"/" if trailing_slash else b"")
                return self._walk(d, root, joined, follow_last, budget, who)
            if last:
                if trailing_slash and not node.is_dir():
                    raise SyscallError(errno.ENOTDIR)
                return d, name, node
            d = node
        raise AssertionError("unreachable")


MAX_OFFSET = (1 << 63) - 1  # the largest file position (loff_t)


@savable
@dataclass(eq=False)
class RegularFile(OpenFile):
    """An open regular file of the root filesystem (either layer)."""

    fs: Filesystem | None = None
    node: Inode | None = None
    name: str = ""  # the path it was opened by, for inspect and /proc/pid/fd
    parent: Dir | None = None  # the directory it was opened in, and its name there: whose
    entry: str = ""  # inotify watches see its events
    host_fd: int = nosave(default=-1)  # for a LowerNode: the host file, opened on first read

    def notify(self, mask: int) -> None:
        """An inotify event of this file (its node's watches and its directory's)."""
        if self.node.watches or (self.parent is not None and self.parent.watches):
            notify(self.node, mask, self.parent, self.entry)

    def _host(self) -> int:
        if self.host_fd < 0:
            node = self.node
            mode = self.flags & 3 if node.layer in self.fs.rw_layers else os.O_RDONLY
            self.host_fd = self.fs.host(node.layer).open(node.path, mode)
        return self.host_fd

    def _on_host(self) -> bool:
        """A file of a read-write bind mount: reads and writes go to the host file."""
        return isinstance(self.node, LowerNode) and self.node.layer in self.fs.rw_layers

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        pos = self.offset if offset is None else offset
        if isinstance(self.node, MemRegular):
            data = self.node.read(pos, count)
        else:
            data = os.pread(self._host(), count, pos)
        if offset is None:
            self.offset += len(data)
        if data:
            self.notify(IN_ACCESS)
        return data

    def write(self, t, data: bytes, offset: int | None = None) -> int:
        node = self.node
        if self._on_host():
            fd = self._host()
            pos = offset if offset is not None else (os.fstat(fd).st_size if self.flags & O_APPEND else self.offset)
            n = os.pwrite(fd, data, pos)
            if offset is None:
                self.offset = pos + n
            if n:
                self.notify(IN_MODIFY)
            return n
        if not isinstance(node, MemRegular):
            raise SyscallError(errno.EBADF)
        if offset is None:
            pos = node.length if self.flags & O_APPEND else self.offset
        else:
            pos = offset
        node.write(pos, data)
        if offset is None:
            self.offset = pos + len(data)
        if data:
            self.notify(IN_MODIFY)
        return len(data)

    def seek(self, offset: int, whence: int) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self.offset + offset
        elif whence in (os.SEEK_END, os.SEEK_DATA, os.SEEK_HOLE):
            size = os.fstat(self._host()).st_size if self._on_host() else self.node.size()
            if whence == os.SEEK_END:
                pos = size + offset
            elif not 0 <= offset < size:
                raise SyscallError(errno.ENXIO)
            else:  # the whole file is data, its end the one hole (Linux's generic answer)
                pos = offset if whence == os.SEEK_DATA else size
        else:
            raise SyscallError(errno.EINVAL)
        if not 0 <= pos <= MAX_OFFSET:
            raise SyscallError(errno.EINVAL)
        self.offset = pos
        return pos

    def stat(self) -> dict:
        out = self.node.stat()
        if self._on_host():
            h = os.fstat(self._host())
            out.update(size=h.st_size, blocks=h.st_blocks, mode=h.st_mode, mtime=h.st_mtime_ns,
                       ctime=h.st_ctime_ns, atime=h.st_atime_ns)
        return out

    def release(self) -> None:
        if self.host_fd >= 0:
            os.close(self.host_fd)
            self.host_fd = -1
        node = self.node
        if node is not None and node.locks:
            release_owner(self.fs, node, ("flock", self))  # flock(2) locks go with the description
            release_owner(self.fs, node, self)  # and so do open file description locks
        if not self.flags & O_PATH:
            self.notify(IN_CLOSE_WRITE if self.writable() else IN_CLOSE_NOWRITE)
        if isinstance(node, MemRegular):
            node.opens -= 1
            if node.opens == 0 and node.nlink == 0:
                self.fs.orphans.append(node)
                deleted(node)  # unlinked while open: gone now

    def describe(self) -> str:
        return f"file {self.name}"


@savable
@dataclass(eq=False)
class DirFile(OpenFile):
    """An open directory (O_DIRECTORY or O_PATH on a directory)."""

    node: Dir | None = None
    # The names getdents64 lists, read when it starts from offset 0 and kept until it is
    # back there (rewinddir): entries made or removed meanwhile may or may not show, as on Linux.
    listing: list | None = nosave(default=None)

    def stat(self) -> dict:
        return self.node.stat()

    def read(self, t, count: int, offset: int | None = None) -> bytes:
        raise SyscallError(errno.EISDIR)

    def seek(self, offset: int, whence: int) -> int:
        """To an entry's place (d_off, which counts entries), as tmpfs seeks: SEEK_SET or
        SEEK_CUR only; back to 0 lists the directory afresh."""
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self.offset + offset
        elif whence == os.SEEK_END and self.node.seek_end:
            pos = offset  # from its size, 0
        else:
            raise SyscallError(errno.EINVAL)
        if pos < 0:
            raise SyscallError(errno.EINVAL)
        self.offset = pos
        if pos == 0:
            self.listing = None
        return pos

    def notify(self, mask: int) -> None:
        """An inotify event of this directory (its watches and its parent's)."""
        d = self.node
        if d.watches or (d.parent is not None and d.parent.watches):
            notify(d, mask, d.parent, d.name)

    def release(self) -> None:
        if not self.flags & O_PATH:
            self.notify(IN_CLOSE_NOWRITE)

    def describe(self) -> str:
        return f"dir {self.node.path()}"
