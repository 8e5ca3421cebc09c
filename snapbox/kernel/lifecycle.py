"""Processes: building a sandbox, fork, clone, execve, exit, reaping.

The methods of Kernel that make and end processes and threads, each on its own stub (a
process) or host thread of one (a thread): boot and spawn load a program into a new
process, fork copies one, execve replaces its program, exit_group ends it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from typing import TYPE_CHECKING

from snapbox.kernel import elf, namespaces
from snapbox.kernel.creds import (MAY_EXEC, MAY_READ, WITHHELD_CAPS, CapSets, Creds, check, exec_transform,
                                  from_kernel, may_access, shown)
from snapbox.kernel.devices import mount_dev
from snapbox.kernel.tty import session_leader_exited
from snapbox.kernel.userns import enters
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.fd import FDTable
from snapbox.kernel.filepages import FilePages
from snapbox.kernel.host import HostFile
from snapbox.kernel.locks import release_owner
from snapbox.kernel.mm import MemoryManager
from snapbox.kernel.procfs import mount_proc
from snapbox.kernel.signals import (
    CLD_DUMPED,
    CLD_EXITED,
    CLD_KILLED,
    CORE_DUMPED,
    SA_NOCLDWAIT,
    SIG_IGN,
    SIGCHLD,
    SIGKILL,
    XSTATE_MAX,
    siginfo,
)
from snapbox.kernel.syscalls import MASK64
from snapbox.kernel.futex import exit_robust_list
from snapbox.kernel.futex import wake as futex_wake
from snapbox.kernel.task import (
    FSContext,
    PIDNamespace,
    Run,
    SigAction,
    Task,
    ThreadGroup,
)
from snapbox.kernel.vdso import Vdso
from snapbox.kernel.vfs import MS_NOEXEC, MS_NOSUID, Filesystem, LowerNode, MemRegular
from snapbox.memfile import MemoryFile
from snapbox.platform import ptrace
from snapbox.platform.cpuid import FeatureSet
from snapbox.platform.stub import APP_TOP, ARCH_SET_CPUID
from snapbox.state import SnapboxError

if TYPE_CHECKING:
    from snapbox.kernel.kernel import Kernel

log = logging.getLogger("snapbox.kernel")

WALL = 0x40000000
CLONE_VM, CLONE_FS, CLONE_FILES, CLONE_SIGHAND = 0x100, 0x200, 0x400, 0x800
CLONE_VFORK, CLONE_PARENT, CLONE_THREAD = 0x4000, 0x8000, 0x10000
CLONE_SETTLS, CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x80000, 0x100000, 0x200000, 0x1000000
CLONE_CLEAR_SIGHAND = 0x100000000


class Lifecycle:
    """Kernel methods that make and end processes and threads (mixed into Kernel)."""

    @classmethod
    def boot(cls, rootfs: str, argv: list[bytes], env: list[bytes], cwd: str = "/",
             hostname: str = "snapbox", memory_limit: int = 0, mounts: list | None = None,
             user: tuple[int, int] = (0, 0), caps: CapSets | None = None) -> Kernel:
        """A kernel with one process (pid 1) ready to run argv[0], stdio = ours; its
        memory (all processes together) limited to `memory_limit` bytes if not 0; `mounts`
        are ("tmpfs", destination, "") and ("bind" or "rw-bind", destination, host source) entries.
        `user` is its (uid, gid), `caps` its capabilities (see spawn)."""
        memfile = MemoryFile(limit=memory_limit)
        fs = Filesystem(rootfs=rootfs, memfile=memfile)
        mount_dev(fs)
        k = cls(features=FeatureSet.host(), memfile=memfile, fs=fs, hostname=hostname, vdso=Vdso.create(memfile))
        if k.vdso is not None:
            k.vdso.publish(memfile, k.timekeeper)
        mount_proc(k)
        for kind, destination, source in mounts or ():
            try:
                if kind == "tmpfs":
                    fs.mount_tmpfs(destination)
                else:
                    fs.mount_bind(destination, source, writable=kind == "rw-bind")
            except SyscallError as e:
                raise SnapboxError(f"cannot mount {destination} ({e})") from None
        k.tasks.init = k.spawn(argv, env, cwd, creds=user, caps=caps)
        return k

    def spawn(self, argv: list[bytes], env: list[bytes], cwd: str, stdio: list[int] | None = None,
              creds: tuple[int, int] = (0, 0), caps: CapSets | None = None) -> ThreadGroup:
        """A new process running argv[0] with no parent (init, or one `exec` adds).

        Its stdio is the sandbox process's, or the host fds `stdio` (which it takes).
        `creds` is (uid, gid); `caps` its capabilities, by default every one for root and
        none for another user (as an execve by each would leave them). Starts when the
        kernel runs (at once if it is running).
        """
        fs = self.fs
        root = fs.root
        try:
            _, _, cwd_node = fs.walk(root, root, cwd.encode())
        except SyscallError:
            cwd_node = None
        if cwd_node is None or not cwd_node.is_dir():
            raise SnapboxError(f"working directory {cwd} does not exist in the sandbox")
        path = argv[0]
        if b"/" not in path:
            path = self._search_path(path, env)
        try:
            parent, name, node = fs.walk(cwd_node, root, path)
        except SyscallError:
            node = None
        if node is None or node.is_dir():
            raise SnapboxError(f"executable {path.decode(errors='replace')} not found in the sandbox")
        pidns: PIDNamespace = self.tasks.pidns
        mm = MemoryManager(memfile=self.memfile, cache=self.file_cache)
        exe = _resolved(parent, name)
        try:
            for depth in range(MAX_INTERPRETERS + 1):
                data, pages = self._program_file(node)
                if data[:2] != b"#!":
                    break
                # A script, as execve runs one: its interpreter, with the script's path.
                if pages is not None:
                    self.file_cache.forget_unused(pages)
                if depth == MAX_INTERPRETERS:
                    raise SyscallError(errno.ELOOP)
                interp, args = shebang(data)
                argv, path = [interp, *args, path, *argv[1:]], interp
                try:
                    parent, name, node = fs.walk(cwd_node, root, interp)
                except SyscallError:
                    node = None
                if node is None or node.is_dir():
                    raise SnapboxError(f"interpreter {interp.decode(errors='replace')} of {exe} not found in the "
                                       "sandbox")
                exe = _resolved(parent, name)
            image, entry, sp = self._load_program(mm, data, pages, exe, argv, env, path, cwd_node, root,
                                                  (creds[0], creds[0], creds[1], creds[1], 0))
        except SyscallError as e:
            mm.release_all()
            raise SnapboxError(f"cannot run {exe}: {e.args[1] or os.strerror(e.errno)}") from None
        except SnapboxError:
            mm.release_all()
            raise
        tgid = pidns.allocate()
        fds = FDTable()
        for i in range(3):
            if stdio is None:
                fds.install_at(i, HostFile(flags=2, stdio=i))
            else:
                fds.install_at(i, HostFile(flags=2, stdio=i, passed=True, fd=stdio[i]))
        uid, gid = creds
        sets = caps.copy() if caps is not None else CapSets()
        sets.withhold(WITHHELD_CAPS)
        tg = ThreadGroup(tgid=tgid, mm=mm, fds=fds, fs=FSContext(root=root, cwd=cwd_node),
                         argv=list(argv), exe=exe, pgid=tgid, sid=tgid,
                         cred=Creds(ids=[uid, uid, uid, gid, gid, gid], fsuid=uid, fsgid=gid, caps=sets))
        if caps is None and uid != 0:
            exec_transform(tg)  # a process that starts as another user has no capabilities
        task = Task(tid=tgid, tg=tg, kernel=self, comm=os.path.basename(path).decode(errors="replace")[:15])
        tg.tasks.append(task)
        pidns.tasks[tgid] = task
        pidns.groups[tgid] = tg
        stub = self.spawn_stub()
        mm.attach(stub)
        regs = ptrace.copy_regs(stub.base_regs)
        for reg in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                    "r12", "r13", "r14", "r15", "fs_base", "gs_base"):
            setattr(regs, reg, 0)
        regs.rip = entry
        regs.rsp = sp
        self._bind(task, stub.pid, regs)
        if not self.paused and self.tasks.init is not None:
            self._resume(task)
        return tg

    def _load_program(self, mm: MemoryManager, data: bytes, pages: FilePages | None, exe: str,
                      argv: list[bytes], env: list[bytes], path: bytes, cwd, root,
                      ids: tuple = (0, 0, 0, 0, 0)) -> tuple[elf.LoadedImage, int, int]:
        """Map a program (its content `data`, its cached `pages` if any) and its dynamic
        loader, if it names one (looked up from the process's `root`), and build its stack
        (`ids`: see elf.build_stack). Returns the image, the address to start at, and the
        initial stack pointer."""
        mm.exe = exe
        try:
            image = elf.load(mm, data, exe, pages=pages)
        finally:
            if pages is not None:
                self.file_cache.forget_unused(pages)
        mm.brk_start = mm.brk = image.end
        entry, interp_base = image.entry, 0
        if image.interp:
            try:
                _, _, node = self.fs.walk(cwd, root, image.interp.encode())
            except SyscallError:
                node = None
            if node is None or node.is_dir():
                raise SyscallError(errno.ENOENT, f"its loader {image.interp} is not in the sandbox")
            data, pages = self._program_file(node)
            try:
                loader = elf.load(mm, data, image.interp, base=elf.INTERP_BASE, pages=pages)
            finally:
                if pages is not None:
                    self.file_cache.forget_unused(pages)
            if loader.interp:
                raise SyscallError(errno.ELIBBAD, f"its loader {image.interp} needs a loader itself")
            entry, interp_base = loader.entry, loader.base
        vdso = self.vdso.map_into(mm) if self.vdso is not None else 0
        sp = elf.build_stack(mm, image, argv, env, path, self.features.hwcap(), interp_base, ids, vdso)
        return image, entry, sp

    def _set_ids(self, tg, node, parent) -> tuple[int, int]:
        """The effective uid and gid a program starts with: its file's owner if it is
        set-user-ID, its group if set-group-ID (with group execute: without, the bit marks
        mandatory locking); the caller's where the bits are ignored (no_new_privs, a
        nosuid mount, a file whose owner or group its user namespace has no name for)."""
        euid, egid = tg.creds[1], tg.creds[4]
        if tg.prctl.get("no_new_privs") or self.fs.mount_flags(node, parent) & MS_NOSUID:
            return euid, egid
        if from_kernel(tg.user_ns, node.uid, "uid") is None or from_kernel(tg.user_ns, node.gid, "gid") is None:
            return euid, egid
        if node.mode & stat.S_ISUID:
            euid = node.uid
        if node.mode & (stat.S_ISGID | stat.S_IXGRP) == stat.S_ISGID | stat.S_IXGRP:
            egid = node.gid
        return euid, egid

    def _program_file(self, node) -> tuple[bytes | LayerFile, FilePages | None]:
        """A program's content, and its cache entry if its pages can be mapped from the
        cache (the caller forgets the entry if it maps none)."""
        if isinstance(node, MemRegular):
            return node.read(0, node.length), None
        if isinstance(node, LowerNode):
            return LayerFile(self.fs, node), self.file_cache.get(node)
        raise SnapboxError("executable is not a regular file")

    def _search_path(self, name: bytes, env: list[bytes]) -> bytes:
        paths = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for e in env:
            if e.startswith(b"PATH="):
                paths = e[5:]
        root = self.fs.root
        for d in paths.split(b":"):
            candidate = (d or b".") + b"/" + name
            try:
                _, _, node = self.fs.walk(root, root, candidate)
            except SyscallError:
                continue
            if node is not None and not node.is_dir():
                return candidate
        raise SnapboxError(f"executable {name.decode(errors='replace')} not found in PATH")

    def _bind(self, task: Task, host_tid: int, regs: ptrace.Regs) -> None:
        """Make host thread `host_tid` run `task`, starting from `regs`."""
        task.host_tid = host_tid
        task.regs = regs
        task.run = Run.STOPPED
        task.cpu_start = host_cpu_ns(host_tid)
        ptrace.setregs(host_tid, regs)
        task.tg.mm.stub.clobbered.discard(host_tid)
        self.by_host[host_tid] = task

    def fork(self, t: Task, flags: int, stack: int = 0, ptid: int = 0, ctid: int = 0, tls: int = 0) -> int:
        """fork(2), or clone(2) of a process: a new process with a copy of the caller's
        address space, fds, filesystem context and handlers, or, for each of CLONE_VM,
        CLONE_FILES, CLONE_FS and CLONE_SIGHAND, the caller's own. One sharing the
        caller's memory is run by a new host thread of the caller's stub (an address
        space is one stub); the others by a fork of it. `flags`' low byte is the signal
        its exit sends its parent. Returns the child's pid."""
        parent = t.tg
        pidns = self.tasks.pidns
        user, uts, ipc = namespaces.for_clone(t, flags)
        mm = parent.mm if flags & CLONE_VM else parent.mm.fork()
        try:
            if flags & CLONE_VM:
                host_tid = parent.mm.stub.clone_thread(t.host_tid)
            else:
                stub = parent.mm.stub.fork(t.host_tid)
                host_tid = stub.pid
        except (OSError, SnapboxError) as e:
            if mm is not parent.mm:
                mm.release_all()
            log.warning("fork: no host thread or stub for the child: %s", e)
            raise SyscallError(errno.EAGAIN) from None
        tgid = pidns.allocate()
        fds = parent.fds if flags & CLONE_FILES else parent.fds.copy()
        fs = parent.fs if flags & CLONE_FS else parent.fs.copy()
        if flags & CLONE_SIGHAND:
            sigactions = parent.sigactions
        else:
            clear = flags & CLONE_CLEAR_SIGHAND
            sigactions = {n: SigAction(a.handler, a.flags, a.restorer, a.mask) for n, a in parent.sigactions.items()
                          if not clear or a.handler == SIG_IGN}
        cred = t.cred.copy()
        if user is not None:
            enters(cred, user)
        above = parent.parent if flags & CLONE_PARENT else parent
        tg = ThreadGroup(
            tgid=tgid, mm=mm, fds=fds, parent=above, fs=fs, sigactions=sigactions,
            argv=list(parent.argv), exe=parent.exe, rlimits=dict(parent.rlimits),
            pgid=parent.pgid, sid=parent.sid, cred=cred, parent_tid=parent.parent_tid if flags & CLONE_PARENT else t.tid,
            exit_signal=parent.exit_signal if flags & CLONE_PARENT else flags & 0xFF,
            prctl={k: v for k, v in parent.prctl.items() if k != "subreaper"}, personality=parent.personality,
            oom_score_adj=parent.oom_score_adj, oom_score_adj_min=parent.oom_score_adj_min,
            xfeatures_granted=parent.xfeatures_granted, uts=uts, ipc=ipc)
        child = Task(tid=tgid, tg=tg, kernel=self, cred=tg.cred, comm=t.comm, signal_mask=t.signal_mask, nice=t.nice,
                     ioprio=t.ioprio, mempolicy=t.mempolicy, cpuid_faulting=t.cpuid_faulting, affinity=t.affinity,
                     seccomp_mode=t.seccomp_mode, seccomp=t.seccomp)
        tg.tasks.append(child)
        pidns.tasks[tgid] = child
        pidns.groups[tgid] = tg
        above.children.append(tg)
        if not flags & CLONE_VM:
            mm.attach(stub)
        self._start_child(t, child, host_tid, flags, stack, ptid, ctid, tls)
        self.arm_cpu_limit(tg)
        return tgid

    def _start_child(self, t: Task, child: Task, host_tid: int, flags: int, stack: int, ptid: int,
                     ctid: int, tls: int) -> None:
        """The clone(2) work common to a new process and a new thread: the tid words, the
        registers and FP state of the caller (rax 0), then run it."""
        tid_bytes = child.tid.to_bytes(4, "little")
        if flags & CLONE_CHILD_SETTID:
            child.mm.write(ctid, tid_bytes)
        if flags & CLONE_PARENT_SETTID:
            t.mm.write(ptid, tid_bytes)
        if flags & CLONE_CHILD_CLEARTID:
            child.clear_child_tid = ctid
        if flags & (CLONE_VM | CLONE_VFORK) != CLONE_VM:
            child.altstack = t.altstack  # kept, unless the child runs beside the caller in its memory
        regs = ptrace.copy_regs(t.regs)
        regs.rax = 0
        regs.orig_rax = MASK64
        if stack:
            regs.rsp = stack
        if flags & CLONE_SETTLS:
            regs.fs_base = tls
        ptrace.set_xstate(host_tid, ptrace.get_xstate(t.host_tid, XSTATE_MAX))
        self._bind(child, host_tid, regs)
        if not self.paused:
            self._resume(child)

    def _stop_thread(self, task: Task) -> None:
        """Bring a running thread, or one parked in a notification, to a ptrace stop (so a
        syscall can be injected into it)."""
        if task.run is Run.RUNNING or task.notif:
            if not task.interrupt_pending:
                ptrace.interrupt(task.host_tid)
                task.interrupt_pending = True
            while task.run is Run.RUNNING or task.notif:
                pid, status = os.waitpid(task.host_tid, WALL)
                saved, self.paused = self.paused, True
                try:
                    self._on_status(pid, status)
                finally:
                    self.paused = saved

    def execve(self, t: Task, path: bytes, argv: list[bytes], envp: list[bytes], depth: int = 0,
               found: tuple | None = None) -> None:
        """execve(2): replace the caller's program. Fails with no side effect, or succeeds
        with the task's registers set to the new program's entry. `found`: the program's
        (parent, name, node) already looked up (execveat), `path` then only its name."""
        parent, name, node = found or self.fs.walk(t.fs.cwd, t.fs.root, path, who=t.tg)
        if node is None:
            raise SyscallError(errno.ENOENT)
        if not stat.S_ISREG(node.mode) or self.fs.mount_flags(node, parent) & MS_NOEXEC:
            raise SyscallError(errno.EACCES)
        check(t.tg, node, MAY_EXEC)
        data, pages = self._program_file(node)
        if data[:2] == b"#!":
            # A script: run its interpreter with the script's path (binfmt_script).
            if pages is not None:
                self.file_cache.forget_unused(pages)
            if depth >= MAX_INTERPRETERS:
                raise SyscallError(errno.ELOOP)
            interp, args = shebang(data)
            self.execve(t, interp, [interp, *args, path, *argv[1:]], envp, depth + 1)
            return
        euid, egid = self._set_ids(t.tg, node, parent)
        tg = t.tg
        setid = euid != tg.creds[1] or (egid != tg.creds[4] and egid not in tg.groups)
        ns = tg.user_ns  # the auxiliary vector's ids, as the program's namespace names them
        ids = (shown(ns, tg.creds[0], "uid"), shown(ns, euid, "uid"), shown(ns, tg.creds[3], "gid"),
               shown(ns, egid, "gid"), int(setid))
        mm = MemoryManager(memfile=self.memfile, cache=self.file_cache, coredump_filter=tg.mm.coredump_filter)
        try:
            exe = _resolved(parent, name)
            image, entry, sp = self._load_program(mm, data, pages, exe, argv, envp, path, t.fs.cwd, t.fs.root, ids)
        except BaseException:
            mm.release_all()
            raise
        shared_mm = self.shared(tg, "mm")
        stub = tg.mm.stub
        if shared_mm:
            # Its memory stays with the processes sharing it: the new program gets a stub of its own.
            try:
                own = stub.fork(t.host_tid)
            except (OSError, SnapboxError) as e:
                mm.release_all()
                log.warning("execve: no stub for the new program: %s", e)
                raise SyscallError(errno.ENOMEM) from None
        # The point of no return: the old program is gone from here on.
        release_vfork_parent(tg)
        leader = tg.tasks[0]
        for other in [x for x in tg.tasks if x is not t]:
            self._stop_thread(other)
            self._drop(other)
            tg.tasks.remove(other)
            if shared_mm:
                stub.release_thread(other.host_tid)
            elif other is not leader:
                stub.exit_thread(other.host_tid)
        tg.maxrss = max(tg.maxrss, tg.mm.usage()["VmHWM"])  # getrusage's ru_maxrss outlives the exec
        if shared_mm:
            self.by_host.pop(t.host_tid, None)
            stub.release_thread(t.host_tid)
            stub.active = None
            stub = own
            self._become_leader(t)
            self._bind(t, stub.pid, t.regs)
        else:
            if leader is not t:
                self._take_leaders_place(t, leader.host_tid)
            if self.memfile.written is not None:
                self.memfile.written.forget(tg.mm)
            stub.unmap(0, APP_TOP)
            tg.mm.release_all()
        tg.cred = t.cred  # the caller is the leader now
        for child in tg.children:
            child.parent_tid = t.tid
        tg.mm = mm
        mm.attach(stub)
        if self.shared(tg, "fds"):
            tg.fds = tg.fds.copy()  # unshare_files: the close-on-exec fds close in its own table only
        for fd in sorted(tg.fds.cloexec):
            tg.fds.close(fd)
        # flush_signal_handlers, in a table of its own: an ignored signal stays ignored.
        tg.sigactions = {n: SigAction(SIG_IGN) for n, a in tg.sigactions.items() if a.handler == SIG_IGN}
        tg.argv = list(argv)
        tg.exe = exe
        tg.creds[1], tg.creds[4], tg.fsuid, tg.fsgid = euid, egid, euid, egid
        # begin_new_exec: dumpable again, unless its ids differ or it may not read the program.
        same = euid == tg.creds[0] and egid == tg.creds[3]
        tg.prctl["dumpable"] = int(same and may_access(tg, node, MAY_READ))
        if setid:
            tg.caps.ambient = 0
            tg.pdeath_signal = 0
        exec_transform(tg)
        tg.xfeatures_granted = 0
        tg.aio = {}  # their rings went with the old address space
        t.large_fpstate = False
        if t.cpuid_faulting:  # execve gives CPUID back
            stub.arch_prctl(t.host_tid, ARCH_SET_CPUID, 1)
            t.cpuid_faulting = False
        t.comm = os.path.basename(path).decode(errors="replace")[:15]  # execve(2): the name it was run by
        regs = t.regs
        for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                     "r12", "r13", "r14", "r15", "fs_base", "gs_base"):
            setattr(regs, name, 0)
        regs.rip = entry
        regs.rsp = sp
        ptrace.set_xstate(t.host_tid, stub.base_xstate)

    def _take_leaders_place(self, t: Task, leader_host_tid: int) -> None:
        """execve(2) by a thread that is not the leader: it becomes the leader, with the
        process's id as its thread id, run from now on by the leader's host thread (the
        stub's main thread, which the host needs alive); its own host thread ends."""
        stub = t.tg.mm.stub
        old = t.host_tid
        stub.exit_thread(old)
        self.by_host.pop(old, None)
        stub.active = leader_host_tid
        self._bind(t, leader_host_tid, t.regs)
        self._become_leader(t)

    def _become_leader(self, t: Task) -> None:
        """Task `t`, execve(2)'s caller, takes the process's id as its thread id."""
        pidns = self.tasks.pidns
        pidns.tasks.pop(t.tid, None)
        t.tid = t.tg.tgid
        pidns.tasks[t.tid] = t

    def exit_task(self, task: Task, status: int) -> None:
        """exit(2) of one thread; the last thread's exit ends its thread group."""
        if len(task.tg.tasks) <= 1:
            self.exit_group(task.tg, status)
            return
        exit_robust_list(task)
        self._clear_child_tid(task)
        self._drop(task)
        tg = task.tg
        tg.tasks.remove(task)
        for child in tg.children:
            if child.parent_tid == task.tid:
                child.parent_tid = tg.tasks[0].tid  # forget_original_parent: a live thread adopts them
        tg.mm.stub.release_thread(task.host_tid)

    def _clear_child_tid(self, task: Task) -> None:
        """set_tid_address(2): at thread exit, zero the word and wake one futex waiter
        (how pthread_join learns a thread is gone)."""
        if task.clear_child_tid:
            with contextlib.suppress(SyscallError):
                task.mm.write(task.clear_child_tid, bytes(4))
                futex_wake(task, task.clear_child_tid, 1)

    def clone_thread(self, t: Task, flags: int, stack: int, ptid: int, ctid: int, tls: int) -> int:
        """clone(2) with CLONE_THREAD: a new task in the caller's process, run by a new
        host thread of the same stub."""
        tg = t.tg
        stub = tg.mm.stub
        host_tid = stub.clone_thread(t.host_tid)
        pidns = self.tasks.pidns
        tid = pidns.allocate()
        child = Task(tid=tid, tg=tg, kernel=self, cred=t.cred.copy(), comm=t.comm, signal_mask=t.signal_mask,
                     nice=t.nice, ioprio=t.ioprio, mempolicy=t.mempolicy, cpuid_faulting=t.cpuid_faulting,
                     affinity=t.affinity, seccomp_mode=t.seccomp_mode, seccomp=t.seccomp)
        tg.tasks.append(child)
        pidns.tasks[tid] = child
        self._start_child(t, child, host_tid, flags, stack, ptid, ctid, tls)
        return tid

    def exit_group(self, tg: ThreadGroup, status: int) -> None:
        """End every task of `tg` with wait status `status`; init's exit ends the sandbox."""
        if tg.exit_status is not None:
            return
        release_vfork_parent(tg)
        if tg.tasks:
            tg.name = tg.tasks[0].comm
        tg.cpu_ns += sum(self.cpu_time_ns(task) for task in tg.tasks)
        stub = tg.mm.stub
        shared_mm = self.shared(tg, "mm")
        for task in list(tg.tasks):
            if shared_mm:
                self._stop_thread(task)
            exit_robust_list(task)
            self._drop(task)
            if shared_mm:
                stub.release_thread(task.host_tid)
                if stub.active == task.host_tid:
                    stub.active = None
        tg.tasks.clear()
        tg.maxrss = max(tg.maxrss, tg.mm.usage()["VmHWM"])
        if not shared_mm:
            self._end_address_space(tg.mm)
        for f in tg.fds.files.values():
            node = getattr(f, "node", None)
            if node is not None and getattr(node, "locks", None):
                release_owner(self.fs, node, tg.tgid)
        if not self.shared(tg, "fds"):
            tg.fds.close_all()
        (tg.ipc or self.ipc).exited(tg.tgid)
        if tg.tgid == tg.sid:
            session_leader_exited(self, tg)
        tg.exit_status = status
        init = self.tasks.init
        for child in tg.children:
            if child.pdeath_signal and child.exit_status is None:
                self.send_signal(child, child.pdeath_signal)
            if tg is not init:
                child.parent = init
                child.exit_signal = SIGCHLD  # reparent_leader: nobody kills init with another
                child.parent_tid = init.tasks[0].tid if init.tasks else init.tgid
                init.children.append(child)
                if child.exit_status is not None:
                    self._notify_exit(child, init, child.exit_status)  # a zombie: init hears of it
        if tg is not init:
            tg.children = []
        parent = tg.parent
        if parent is not None and parent.exit_status is None:
            self._notify_exit(tg, parent, status)
        tg.exited.notify()
        if self.on_exit is not None:
            self.on_exit(tg)
        if tg is init:
            self.exit_status = status
            for other in list(self.tasks.pidns.groups.values()):
                if other.exit_status is None:
                    self.exit_group(other, SIGKILL)

    def _notify_exit(self, tg: ThreadGroup, parent: ThreadGroup, status: int) -> None:
        """do_notify_parent: send `tg`'s exit signal (if any) to its parent, with its wait
        status; a child exiting with SIGCHLD to a parent that ignores SIGCHLD or asked for
        SA_NOCLDWAIT is reaped at once (the ignored signal is not sent)."""
        sig = tg.exit_signal
        act = parent.sigaction(SIGCHLD)
        if sig == SIGCHLD and (act.handler == SIG_IGN or act.flags & SA_NOCLDWAIT):
            self.reap(tg, waited=False)  # sigaction(2): the child does not become a zombie
            if act.handler == SIG_IGN:
                sig = 0
        if 0 < sig <= 64:  # valid_signal: a legacy clone(2)'s exit signal may be none
            code = (CLD_DUMPED if status & CORE_DUMPED else CLD_KILLED) if status & 0x7F else CLD_EXITED
            value = status & 0x7F if status & 0x7F else (status >> 8) & 0xFF
            self.send_signal(parent, sig, siginfo(sig, code, tg.tgid, 0, value, chld=True))
        parent.child_exit.notify()

    def _end_address_space(self, mm: MemoryManager) -> None:
        """Its last process is gone: kill its stub and free its memory."""
        if mm.stub is not None:
            if self.memfile.written is not None:
                self.memfile.written.retire(mm)
            mm.stub.kill()
            mm.stub = None
        fd = self.faults.pop(mm, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)
        mm.release_all()

    def shared(self, tg: ThreadGroup, what: str) -> bool:
        """Whether another live process holds `tg`'s `what` ("mm", "fds", "fs" or
        "sigactions"): one made by clone(2) with CLONE_VM, CLONE_FILES, CLONE_FS or
        CLONE_SIGHAND, or the maker of `tg`."""
        mine = getattr(tg, what)
        return any(g is not tg and g.exit_status is None and getattr(g, what) is mine
                   for g in self.tasks.pidns.groups.values())

    def reap(self, tg: ThreadGroup, waited: bool = True) -> None:
        """Forget an exited child: its pid is free again. One `waited` for adds its CPU
        time (and its children's) to its parent's children's, and its peak resident size."""
        if tg.parent is not None and tg in tg.parent.children:
            tg.parent.children.remove(tg)
            if waited:
                tg.parent.children_cpu_ns += tg.cpu_ns + tg.children_cpu_ns
                tg.parent.children_maxrss = max(tg.parent.children_maxrss, tg.maxrss, tg.children_maxrss)
        self.tasks.pidns.groups.pop(tg.tgid, None)
        tg.reaped = True
        tg.exited.notify()

    def _drop(self, task: Task) -> None:
        task.run = Run.DEAD
        task.tg.io_done = [a + b for a, b in zip(task.tg.io_done, task.io)]
        task.io = [0, 0, 0, 0]
        task.let_go()
        for q in task.waiting:
            if task in q.waiters:
                q.waiters.remove(task)
        task.waiting = ()
        task.timer_token += 1
        self.by_host.pop(task.host_tid, None)
        self.tasks.pidns.tasks.pop(task.tid, None)

    def shutdown(self) -> None:
        """Kill every stub (the sandbox is being torn down) and reap them. They are ours to
        kill: their deaths are not the application's (no SIGCHLD, no exit to deliver, to
        tasks whose stubs may be gone already)."""
        self.kill_stubs()
        self.by_host.clear()
        self.collect_stops()
        self.close_listeners()
        self.memfile.stop_loading()

    def kill_stubs(self) -> None:
        """SIGKILL every stub, without waiting: no task runs again."""
        for tg in self.tasks.pidns.groups.values():
            if tg.mm.stub is not None:
                tg.mm.stub.kill()


MAX_INTERPRETERS = 4  # a script's interpreter may be a script, this many deep (Linux: 4)


def release_vfork_parent(tg: ThreadGroup) -> None:
    """A vfork child execs or exits: its parent goes on (vfork(2))."""
    if tg.vfork_done is not None:
        done, tg.vfork_done = tg.vfork_done, None
        done.notify()


class LayerFile:
    """A file of a read-only layer as bytes, read as they are sliced: loading a program
    whose read-only pages come from the file cache reads its headers and its writable
    segment, not all of it (reading a 2 MB busybox whole took 130 µs of each execve)."""

    HEAD = 4096  # read at once: the ELF header, the program headers, a "#!" line

    def __init__(self, fs, node: LowerNode) -> None:
        self.fs = fs
        self.node = node
        self.head = self._pread(0, self.HEAD)

    def __len__(self) -> int:
        return self.node.length

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(self.node.length)
        if stop <= len(self.head):
            return self.head[start:stop]
        return self._pread(start, max(stop - start, 0))

    def _pread(self, offset: int, n: int) -> bytes:
        fd = self.fs.host(self.node.layer).open(self.node.path, os.O_RDONLY)
        try:
            chunks = []
            while n > 0:
                chunk = os.pread(fd, n, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                n -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def shebang(data: bytes) -> tuple[bytes, list[bytes]]:
    """The interpreter of a script starting "#!" and its one optional argument (Linux's
    binfmt_script: the rest of the first line, at most 255 bytes, split at the first blank)."""
    head = data[:258]
    end = head.find(b"\n")
    line = (head[2:end] if end >= 0 else head[2:])[:255].strip()
    interp, _, arg = line.replace(b"\t", b" ").partition(b" ")
    if not interp:
        raise SyscallError(errno.ENOEXEC)
    return interp, [arg.strip()] if arg.strip() else []


def _resolved(parent, name: str) -> str:
    """The sandbox path of the node named `name` in directory `parent` (symlinks resolved);
    `name` itself for a file in no directory (a memfd run by execveat)."""
    if parent is None:
        return name
    base = parent.path()
    return base + name if base.endswith("/") else f"{base}/{name}"

def host_cpu_ns(tid: int) -> int:
    """CPU time host thread `tid` has used, in ns (0 if it is gone)."""
    try:
        with open(f"/proc/{tid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
