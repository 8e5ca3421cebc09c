"""Every savable type of snapbox survives a save/load round trip.

A type registered without a factory here fails test_every_type_has_a_round_trip, so new
kernel objects cannot skip this test.
"""

from __future__ import annotations

import dataclasses
import enum
import stat

import pytest

from snapbox.kernel.devices import DeviceFile, mount_dev
from snapbox.kernel.eventfiles import SignalFd, EpollFile, EventFd, PidFile, TimerFd
from snapbox.kernel.fd import FDTable, OpenFile
from snapbox.kernel.pipe import FifoNode, make_pipe
from snapbox.kernel.hostnet import HostSocket
from snapbox.kernel.aio import AioContext
from snapbox.kernel.inotify import DirNotify, InotifyFile
from snapbox.kernel.inet import InetSocket, Publication, UdpSocket
from snapbox.kernel.namespaces import UtsNamespace
from snapbox.kernel.netlink import NetlinkSocket
from snapbox.kernel.ipc import IpcNamespace, IpcPerm, MsgQueue, SemSet, ShmSegment
from snapbox.kernel.mqueue import MessageQueue, MqueueFile
from snapbox.kernel.creds import CapSets, Creds, UserNamespace
from snapbox.kernel.keys import Key, Keys
from snapbox.kernel.seccomp import INSN, SeccompFilter, SeccompListener, check
from snapbox.kernel.socket import SocketNode, UnixSocket, make_pair
from snapbox.kernel.procfs import FdNode, NsFile, NsNode, ProcFile, ProcMemFile, ProcNode, mount_proc
from snapbox.kernel.host import HostFile
from snapbox.kernel.checkpoint import LoadContext
from snapbox.kernel.kernel import Kernel
from snapbox.kernel.mm import MemoryManager, SharedMemory, Vma
from snapbox.kernel.task import FSContext, PIDNamespace, SigAction, Task, TaskSet, ThreadGroup
from snapbox.kernel.time import Timekeeper
from snapbox.kernel.vdso import Vdso
from snapbox.kernel.fasync import AsyncIO
from snapbox.kernel.tty import Pty, PtyMaster, PtySlave, PtsNode
from snapbox.kernel.timers import PosixTimer
from snapbox.kernel.vfs import DirFile, Filesystem, Inode, MemSymlink, Mount, RegularFile
from snapbox.kernel.waiter import WaitQueue
from snapbox.memfile import MemoryFile
from snapbox.platform.cpuid import FeatureSet
from snapbox.state import decode_graph, encode_graph, registered_types
from snapbox.state.savable import _by_class


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    rootfs = tmp_path_factory.mktemp("rootfs")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "motd").write_text("hi\n")
    shared = tmp_path_factory.mktemp("shared")
    (shared / "data.txt").write_text("bound\n")
    memfile = MemoryFile()
    fs = Filesystem(rootfs=str(rootfs), memfile=memfile)
    fs.mount_bind("/mnt/shared", str(shared))
    fs.mount_tmpfs("/scratch")
    kernel = Kernel(features=FeatureSet.host(), memfile=memfile, fs=fs)
    yield kernel, rootfs
    memfile.close()


def build(name: str, kernel: Kernel):
    memfile, fs = kernel.memfile, kernel.fs
    root = fs.root
    etc = fs.lookup(root, "etc")
    motd = fs.lookup(etc, "motd")
    mem = fs.create_regular(etc, "new", 0o644, 0, 0)
    mem.write(5000, b"data")
    shm = SharedMemory(memfile.alloc(8192), 8192, users=2)
    mm = MemoryManager(memfile=memfile, vmas=[Vma(0x400000, 0x402000, 5, memfile.alloc(8192), "/bin/x", locked=True),
                                              Vma(0x500000, 0x502000, 3, shm.offset, "anon", shared=True, node=shm),
                                              Vma(0x600000, 0x604000, 3, mem.page(1), "/etc/new", 4096, shared=True,
                                                  node=mem, copied=8192)],
                       lock_future=True, env_area=(0x7FF000, 0x7FF100), auxv=bytes(16))
    tg = ThreadGroup(tgid=1, mm=mm, fds=FDTable(), fs=FSContext(root=root, cwd=etc),
                     sigactions={2: SigAction(0x401000, 0x4000000, 0x401100, 1 << 14)}, argv=[b"/bin/x"])
    allow_all = SeccompFilter(insns=check(INSN.pack(0x06, 0, 0, 0x7FFF0000)), path_length=9)
    # getppid (110) refused with EPERM, the rest allowed
    filters = SeccompFilter(insns=check(b"".join(INSN.pack(*i) for i in (
        (0x20, 0, 0, 0), (0x15, 0, 1, 110), (0x06, 0, 0, 0x50001), (0x06, 0, 0, 0x7FFF0000)))),
        prev=allow_all, log=True, path_length=9 + 12)
    task = Task(tid=1, tg=tg, kernel=kernel, comm="x", restart=(35, 123), saved_regs=tuple(range(27)),
                saved_fpstate=b"\x7f" * 512, seccomp_mode=2, seccomp=filters)
    tg.tasks.append(task)
    tg.fds.install(RegularFile(flags=2, fs=fs, node=mem, name="/etc/new", offset=3))
    pidns = PIDNamespace(next_id=2, tasks={1: task}, groups={1: tg})
    pipe_r, pipe_w = make_pipe(kernel, 0)
    pipe_r.pipe.buf += b"in flight"
    tg.fds.install(pipe_r)
    tg.fds.install(pipe_w)
    left, right = make_pair(kernel, 0)
    right.outgoing.buf += b"with a file"
    right.outgoing.rights.append([0, [pipe_w]])
    listener = UnixSocket(flags=2, ino=77, address=b"\0name", listening=True, backlog=3, pending=[left],
                          cred=[1, 0, 0])
    dgram_a, dgram_b = make_pair(kernel, 0, 2)  # SOCK_DGRAM: peers of each other
    dgram_b.queue.append([b"\0sender", b"a datagram with a file", [pipe_w]])
    pages = kernel.file_cache.get(motd)
    kernel.file_cache.fill(pages, 0, 4096)
    userns = UserNamespace(owner=0, level=1, inum=0xF0000102, uid_map=[[0, 0, 1]], gid_map=[[0, 0, 1]])
    ring = Key(0x1234567, "named", 1000, 100, 0x3F1B0000)
    perm = IpcPerm(key=0x5b0c, uid=1000, gid=100, cuid=0, cgid=0, mode=0o640, seq=3)
    ipc = IpcNamespace(msgs={0: MsgQueue(perm=perm, messages=[[2, b"queued"], [1, b""]], qbytes=99, stime=5,
                                         lspid=7)},
                       sems={1: SemSet(perm=IpcPerm(0, 0, 0, 0, 0, 0o600, 4), values=[3, 0, 32767], pids=[1, 0, 2],
                                       otime=9)},
                       shms={0: ShmSegment(perm=IpcPerm(0, 0, 0, 0, 0, 0o1600, 5), size=10000,
                                           offset=memfile.alloc(12288), cpid=1, atime=4)},
                       seq=6, undo={7: {32769 * 4 + 1: {0: -1, 2: 3}}}, owner=userns)
    mq = MessageQueue(name="jobs", ino=1, uid=0, gid=0, mode=0o640, maxmsg=4, msgsize=64, notify_tgid=3,
                      notify_kind=0, notify_signo=10, notify_value=77)
    mq.put(1, b"low")
    mq.put(5, b"high")
    ipc.mqueues["jobs"] = mq
    ipc.mq_inos = 1
    if "dev" not in fs.root.entries:
        mount_dev(fs)
        mount_proc(kernel)
    pty = Pty(index=3, locked=False, lflag=0o2, pending=bytearray(b"typed ahead"), inq=bytearray(b"line\n"),
              ends=[5], edit=bytearray(b"half"), outq=bytearray(b"echo\r\n"), column=4, session=1, pgrp=1,
              slave_opens=1, slave_opened=True, vtime={1: 99}, winsize=bytes([24, 0, 80, 0, 0, 0, 0, 0]))
    pts = PtsNode(ino=40, mode=stat.S_IFCHR | 0o620, uid=1000, gid=5, name="pts/3", rdev=(136 << 8) | 3, pty=pty)
    pty.node = pts
    factories = {
        "Kernel": lambda: kernel,
        "FeatureSet": FeatureSet.host,
        "MemoryFile": lambda: memfile,
        "Filesystem": lambda: fs,
        "Timekeeper": lambda: Timekeeper(offset=5, stopped=True, frozen_at=99),
        "Vdso": lambda: Vdso(offset=0x3000, code=b"\x7fELF image", seq=7),
        "AsyncIO": lambda: AsyncIO(file=pipe_r, fd=3, kernel=kernel),
        "TaskSet": lambda: TaskSet(pidns=pidns, init=tg),
        "PIDNamespace": lambda: pidns,
        "ThreadGroup": lambda: tg,
        "Task": lambda: task,
        "SigAction": lambda: SigAction(1, 2, 3, 4),
        "FSContext": lambda: tg.fs,
        "MemoryManager": lambda: mm,
        "Vma": lambda: mm.vmas[2],
        "SharedMemory": lambda: shm,
        "FileCache": lambda: kernel.file_cache,
        "FilePages": lambda: pages,
        "FDTable": lambda: tg.fds,
        "OpenFile": lambda: OpenFile(flags=1, offset=7, refs=1),
        "RegularFile": lambda: tg.fds.get(0),
        "DirFile": lambda: DirFile(node=etc),
        "HostFile": lambda: HostFile(flags=2, stdio=1),
        "Inode": lambda: Inode(ino=9, mode=stat.S_IFREG | 0o600, xattrs={b"user.a": b"1", b"trusted.t": b""}),
        "MemRegular": lambda: mem,
        "MemSymlink": lambda: MemSymlink(ino=3, mode=stat.S_IFLNK | 0o777, target=b"/etc/motd"),
        "LowerNode": lambda: motd,
        "Dir": lambda: etc,
        "WaitQueue": WaitQueue,
        "Pipe": lambda: pipe_r.pipe,
        "PipeFile": lambda: pipe_w,
        "DeviceNode": lambda: fs.root.entries["dev"].entries["zero"],
        "DeviceFile": lambda: DeviceFile(flags=2, node=fs.root.entries["dev"].entries["urandom"]),
        "PosixTimer": lambda: PosixTimer(id=1, clock=1, notify=4, signo=34, value=77, tid=1, deadline=99,
                                         interval=10, overrun=2),
        "UnixSocket": lambda: listener,
        "UnixDgramSocket": lambda: dgram_b,
        "SignalFd": lambda: SignalFd(flags=0, mask=(1 << 9) | (1 << 11), owner=tg),
        "UdpSocket": lambda: UdpSocket(flags=2, ino=80, family=2, local=("127.0.0.1", 5353), remote=("127.0.0.1", 53),
                                       queue=[[("127.0.0.1", 53), b"answer", [64, 0, None], 1_700_000_000 * 10**9]],
                                       queued=6, port_locked=True, stamp=1_699_999_999 * 10**9,
                                       groups=[["224.0.0.1", 1]], multicast_if=["127.0.0.1", 1],
                                       options={(1, 2): 1, (0, 11): 1}, error=111,
                                       errors=[[b"lost", ("127.0.0.1", 9)]],
                                       nat_host=HostSocket(family=2, kind=2, local=("0.0.0.0", 5353), nat=True,
                                                           outer=True, options={})),
        "NetlinkSocket": lambda: NetlinkSocket(flags=2, ino=82, kind=2, port=1, groups=1,
                                               queue=[b"\x14\x00\x00\x00\x03\x00\x02\x00" + bytes(12)],
                                               options={(270, 12): 1}),
        "InetSocket": lambda: _waited_on(InetSocket(
            flags=2, ino=78, family=10, local=("::", 8080), listening=True, backlog=5,
            options={(1, 2): 1, (6, 1): 1, (1, 13): (1, 5), (1, 29): 2, (6, 36): 1},
            pending=[InetSocket(flags=2, ino=79, incoming=right.outgoing, outgoing=left.outgoing, family=10,
                                local=("::1", 8080), remote=("::1", 40000), kernel=kernel, closed_first=True,
                                lingers_until=60 * 10**9, wrote_to_closed=True, error=32)])),
        "HostSocket": lambda: HostSocket(family=2, kind=1, role="listening", local=("127.0.0.1", 8080), backlog=5,
                                         options={(1, 2): 1}),
        "Publication": lambda: _feeding(Publication(
            kernel=kernel, port=80, sock=HostSocket(family=2, kind=1, role="listening", local=("127.0.0.1", 8080),
                                                    backlog=5, options={(1, 2): 1}, outer=True)),
            InetSocket(flags=2, ino=81, family=2, local=("0.0.0.0", 80), listening=True, backlog=5)),
        "UtsNamespace": lambda: UtsNamespace(hostname="inner", domainname="example", owner=userns),
        "UserNamespace": lambda: UserNamespace(parent=userns, owner=1000, group=100, level=2, inum=0xF0000103,
                                               uid_map=[[0, 1000, 1], [1, 200000, 65536]], gid_map=[[0, 100, 1]],
                                               setgroups=False),
        "Mount": lambda: Mount(parent=fs.root, name="mnt", node=fs.new_tmpfs(fs.root, "mnt", 0o700),
                               covered=fs.root.entries.get("etc"), fstype="tmpfs", source="tmpfs", flags=0x8,
                               expiring=True),
        "StreamBuffer": lambda: right.outgoing,
        "SocketNode": lambda: SocketNode(ino=12, mode=stat.S_IFSOCK | 0o755, socket=listener),
        "FifoNode": lambda: FifoNode(ino=8, mode=stat.S_IFIFO | 0o644, pipe=pipe_r.pipe),
        "EventFd": lambda: EventFd(flags=2, counter=7, semaphore=True),
        "TimerFd": lambda: TimerFd(clock=1, deadline=123456789, interval=1000, expirations=2),
        "EpollFile": lambda: EpollFile(flags=2, interest={3: [pipe_r, 1, 99]}),
        "ProcDir": lambda: fs.root.entries["proc"],
        "ProcNode": lambda: ProcNode(ino=5, mode=stat.S_IFREG | 0o444, kernel=kernel, pid=0, name="uptime"),
        "NsNode": lambda: NsNode(ino=0xF0000101, mode=stat.S_IFREG | 0o444, kernel=kernel, pid=1, name="ns/uts",
                                 kind="uts", ns=UtsNamespace(hostname="inner", inum=0xF0000101)),
        "NsFile": lambda: NsFile(flags=0, node=NsNode(ino=0xEFFFFFFF, kernel=kernel, pid=1, name="ns/ipc", kind="ipc")),
        "ProcFile": lambda: ProcFile(flags=0, offset=3, node=ProcNode(kernel=kernel, name="loadavg"),
                                     content=b"0.00 0.00 0.00 1/1 1\n", opener=Creds(user_ns=userns)),
        "ProcMemFile": lambda: ProcMemFile(flags=2, offset=0x401000, node=ProcNode(kernel=kernel, pid=1, name="mem")),
        "IpcPerm": lambda: perm,
        "MsgQueue": lambda: ipc.msgs[0],
        "SemSet": lambda: ipc.sems[1],
        "ShmSegment": lambda: ipc.shms[0],
        "IpcNamespace": lambda: ipc,
        "MessageQueue": lambda: mq,
        "MqueueFile": lambda: MqueueFile(flags=0o4002, queue=mq),
        "InotifyFile": lambda: _watching(InotifyFile(flags=0o4000, events=[[1, 0x100, 0, b"made"], [1, 0x40, 7, b"b"]]),
                                         motd),
        "DirNotify": lambda: _registered(DirFile(flags=0o200000, node=fs.root.entries["etc"], signum=40,
                                                 fown=(1, 1)), tg),
        "AioContext": lambda: AioContext(ring=0x7F0000000000, nr=126, size=4096, max_reqs=8),
        "Pty": lambda: pty,
        "PtsNode": lambda: pts,
        "PtyMaster": lambda: PtyMaster(flags=2, node=fs.root.entries["dev"].entries["ptmx"], pty=pty, kernel=kernel),
        "PtySlave": lambda: PtySlave(flags=0o4002, node=pts, pty=pty, kernel=kernel),
        "SeccompFilter": lambda: filters,
        "SeccompListener": lambda: _listening(SeccompListener(flags=2, next_id=7), task),
        "Notification": lambda: _listening(SeccompListener(flags=2), task).notifs[0],
        "FdNode": lambda: FdNode(ino=0xE0000005, mode=stat.S_IFIFO | 0o600, kernel=kernel, pid=1, name="fd/5",
                                 file=pipe_w),
        "PidFile": lambda: PidFile(flags=0o4002, group=tg),
        "CapSets": lambda: CapSets(effective=0b101, permitted=0b111, inheritable=0b10, bounding=(1 << 41) - 1 - 4,
                                   ambient=0b10, securebits=0x30),
        "Creds": lambda: Creds(ids=[0, 1000, 0, 0, 100, 0], groups=[4, 27], fsuid=1000, fsgid=100,
                               caps=CapSets(effective=0, permitted=0b111), user_ns=userns, session_keyring=ring),
        "Key": lambda: ring,
        "Keys": lambda: Keys(by_serial={ring.serial: ring, 99: Key(99, "_uid_ses.1000", 1000, -1, 0x1F3F0000)},
                             maxkeys=50),
    }
    return factories[name]()


def _registered(f: DirFile, tg) -> DirNotify:
    """A dnotify registration on `f`'s directory, made by `tg`."""
    node = f.node
    reg = DirNotify(file=f, fd=5, tg=tg, mask=0x80000004, watches={0: [node, 0x80000004]})
    node.watches.append([reg, 0])
    return reg


def _listening(listener: SeccompListener, task) -> SeccompListener:
    """A listener holding a call of `task` its supervisor has received."""
    n = listener.hand_over(task, 39, 0x401000, (1, 2, 3, 4, 5, 6))
    n.state = "sent"
    task.seccomp_notif = n
    return listener


def _waited_on(listener: InetSocket) -> InetSocket:
    """A listener with a full backlog that a nonblocking connect waits on (its SYN dropped)."""
    waiting = InetSocket(flags=0o4002, ino=83, family=10, local=("::1", 40001), remote=("::1", 8080),
                         syn_to=listener, refs=1)
    listener.syn_waiting.append((waiting, [7, 1000, 1000]))
    listener.pending[0].outgoing.stamp = 1_700_000_000 * 10**9
    return listener


def _feeding(p: Publication, listener: InetSocket) -> Publication:
    p.listener = listener
    listener.published.append(p)
    return p


def _watching(f: InotifyFile, node) -> InotifyFile:
    f.add_watch(node, 0xFFF)
    return f


def assert_same(a, b, seen=None, path="root"):
    """Saved fields equal, recursively; savable objects compared by structure."""
    seen = set() if seen is None else seen
    if type(a) in _by_class:
        assert type(a) is type(b), path
        if (id(a), id(b)) in seen:
            return
        seen.add((id(a), id(b)))
        for name in _by_class[type(a)].saved_fields:
            assert_same(getattr(a, name), getattr(b, name), seen, f"{path}.{name}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, seen, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], seen, f"{path}[{k!r}]")
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


KERNEL_TYPES = sorted(n for n, c in registered_types().items()
                      if not n.startswith("test.") and not issubclass(c, enum.Enum))


def test_every_type_has_a_round_trip(world):
    kernel, _ = world
    for name in KERNEL_TYPES:
        build(name, kernel)  # KeyError names a type with no round-trip factory


@pytest.mark.parametrize("name", KERNEL_TYPES)
def test_round_trip(name, world):
    kernel, rootfs = world
    obj = build(name, kernel)
    assert type(obj).__name__ == name or _by_class[type(obj)].name == name
    out = decode_graph(encode_graph(obj), LoadContext(rootfs=str(rootfs)))
    assert_same(obj, out)
    # Host resources are re-created, never shared with the original.
    for f in dataclasses.fields(out):
        if f.metadata.get("nosave") and f.name in ("fd", "map"):
            assert getattr(out, f.name) is not getattr(obj, f.name)
