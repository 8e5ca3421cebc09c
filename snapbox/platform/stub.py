"""Stub processes: the host processes that lend their CPU context to application tasks.

A stub runs a tiny static ELF that snapbox generates: one page holding a `syscall; int3`
trampoline. Once it has exec'd, the sentry unmaps everything else in it (stack, vDSO,
vvar), so the whole lower address space belongs to the application, and maps
MemoryFile ranges into it by injecting syscalls through the trampoline.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct

from snapbox.platform import ptrace
from snapbox.state import SnapboxError

# Where the stub's page lives. ASLR is off in stubs, so the kernel puts the initial
# stack just below 0x7ffffffff000, well above this page; the application gets everything
# below it.
STUB_ADDR = 0x7FFFFFF00000
TRAMPOLINE = STUB_ADDR + 0x78  # syscall; int3
STUB_ENTRY = STUB_ADDR + 0x7C  # int3; jmp back: never run by design
APP_TOP = STUB_ADDR  # the application's address space is [0, APP_TOP)
STUB_MEMFD = 3  # the MemoryFile's fd number inside every stub

_ADDR_NO_RANDOMIZE = 0x0040000
_PR_SET_PDEATHSIG = 1
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
WALL = 0x40000000

SYS_MMAP = 9
SYS_MPROTECT = 10
SYS_MUNMAP = 11
SYS_CLONE = 56
SYS_FORK = 57
SYS_EXIT = 60
# CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_FIXED = 0x1, 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class StubError(SnapboxError):
    """A stub process could not be created or died underneath the sentry."""


def stub_elf() -> bytes:
    """The stub executable: an ELF header, one PT_LOAD, and the trampoline code."""
    code = b"\x0f\x05\xcc" + b"\x90" + b"\xcc\xeb\xfd"  # syscall; int3; nop | int3; jmp -3
    size = 0x78 + len(code)
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + bytes(9),
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,
        STUB_ENTRY,
        64,  # e_phoff
        0,
        0,
        64,
        56,
        1,
        64,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, STUB_ADDR, STUB_ADDR, size, size, 0x1000)
    image = ehdr + phdr
    return image + bytes(0x78 - len(image)) + code


_ELF_FD = -1


def _elf_fd() -> int:
    global _ELF_FD
    if _ELF_FD < 0:
        fd = os.memfd_create("snapbox-stub", os.MFD_CLOEXEC)
        os.write(fd, stub_elf())
        _ELF_FD = fd
    return _ELF_FD


class Stub:
    """One stub process (one application address space), traced by this sentry."""

    def __init__(self, pid: int, base_regs: ptrace.Regs, base_xstate: bytes) -> None:
        self.pid = pid
        # The FP/SSE/AVX state of a fresh process, for execve.
        self.base_xstate = base_xstate
        # Registers captured at the exec stop: valid segment selectors and flags, used as
        # the template for injected syscalls and for fresh application contexts.
        self.base_regs = base_regs
        self.scratch = ptrace.copy_regs(base_regs)
        # Set when an injected syscall has overwritten the registers of a thread: the
        # task's own registers must be written back before it runs again.
        self.clobbered: set[int] = set()
        # The thread injected syscalls run on by default (the one the kernel is serving).
        self.active: int | None = None
        # Threads whose pending PTRACE_INTERRUPT stop an injected syscall swallowed.
        self.interrupts_seen: set[int] = set()

    @classmethod
    def spawn(cls, memfd: int) -> Stub:
        """Start a stub holding `memfd` as STUB_MEMFD, seized and stopped, with nothing mapped
        but its own page."""
        exe = _elf_fd()
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _stub_child(gate_r, gate_w, memfd, exe)
        os.close(gate_r)
        try:
            ptrace.seize(pid, ptrace.PTRACE_O_EXITKILL | ptrace.PTRACE_O_TRACESYSGOOD
                         | ptrace.PTRACE_O_TRACEEXEC | ptrace.PTRACE_O_TRACECLONE
                         | ptrace.PTRACE_O_TRACEFORK)
        except OSError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, WALL)
            os.close(gate_w)
            raise
        os.write(gate_w, b"x")
        os.close(gate_w)
        while True:
            _, status = os.waitpid(pid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise StubError("stub process failed to start")
            if status >> 16 == ptrace.PTRACE_EVENT_EXEC:
                break
            ptrace.cont(pid, 0)
        base = ptrace.Regs()
        ptrace.getregs(pid, base)
        base.orig_rax = -1 & 0xFFFFFFFFFFFFFFFF
        stub = cls(pid, base, ptrace.get_xstate(pid, 1 << 14))
        stub._unmap_host_mappings()
        return stub

    def _host_mappings(self) -> list[tuple[int, int]]:
        with open(f"/proc/{self.pid}/maps") as f:
            ranges = [line.split()[0].split("-") for line in f]
        # Our own page stays; the vsyscall page (above the user range) cannot be unmapped.
        return [(int(lo, 16), int(hi, 16)) for lo, hi in ranges
                if int(lo, 16) != STUB_ADDR and int(lo, 16) < 1 << 47]

    def _unmap_host_mappings(self) -> None:
        # The kernel refuses to unmap [vvar] while [vdso] is still there, so go round twice.
        for _ in range(2):
            for lo, hi in self._host_mappings():
                self.syscall(SYS_MUNMAP, lo, hi - lo)
        left = self._host_mappings()
        if left:
            raise StubError(f"stub {self.pid} keeps host mappings at {left[0][0]:#x}")

    def syscall(self, nr: int, *args: int, tid: int | None = None) -> int:
        """Run a host syscall inside the stub, on thread `tid` (default: the thread the
        kernel is serving, else the leader), which must be stopped."""
        tid = tid or self.active or self.pid
        self._enter(tid, nr, args)
        while True:
            _, status = os.waitpid(tid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise StubError(f"stub {tid} died during an injected syscall {nr}")
            if os.WSTOPSIG(status) == signal.SIGTRAP and status >> 16 == 0:
                break
            if status >> 16 == ptrace.PTRACE_EVENT_STOP:
                self.interrupts_seen.add(tid)
            # A stale PTRACE_INTERRUPT, our own clone's event, or a host signal: go on.
            ptrace.cont(tid, 0)
        regs = self.scratch
        ptrace.getregs(tid, regs)
        result = regs.rax
        return result - (1 << 64) if result >= 1 << 63 else result

    def _enter(self, tid: int, nr: int, args: tuple[int, ...]) -> None:
        regs = self.scratch
        ctypes.pointer(regs)[0] = self.base_regs
        regs.rip = TRAMPOLINE
        regs.rax = nr
        for name, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, v & 0xFFFFFFFFFFFFFFFF)
        ptrace.setregs(tid, regs)
        self.clobbered.add(tid)
        ptrace.cont(tid, 0)

    def clone_thread(self, tid: int) -> int:
        """A new host thread in this stub, made by thread `tid` (stopped); returns its tid,
        stopped and traced (PTRACE_O_TRACECLONE)."""
        new = self.syscall(SYS_CLONE, _THREAD_FLAGS, 0, 0, 0, 0, tid=tid)
        if new < 0:
            raise StubError(f"stub {self.pid} could not make a thread: {os.strerror(-new)}")
        os.waitpid(new, WALL)  # its first stop: it has run nothing of its own yet
        self.clobbered.add(new)
        return new

    def fork(self, tid: int) -> Stub:
        """A new stub made by forking this one on thread `tid` (stopped): much cheaper
        than spawn(). The child starts with nothing of the application mapped."""
        pid = self.syscall(SYS_FORK, tid=tid)
        if pid < 0:
            raise StubError(f"stub {self.pid} could not fork: {os.strerror(-pid)}")
        os.waitpid(pid, WALL)  # its first stop (PTRACE_O_TRACEFORK attached it)
        child = Stub(pid, ptrace.copy_regs(self.base_regs), self.base_xstate)
        r = child.syscall(SYS_MUNMAP, 0, APP_TOP)
        if r < 0:
            child.kill()
            raise StubError(f"new stub {pid} could not drop its parent's mappings: {os.strerror(-r)}")
        return child

    def exit_thread(self, tid: int) -> None:
        """End host thread `tid` (stopped) of this stub; the others go on."""
        self._enter(tid, SYS_EXIT, (0,))
        while True:
            _, status = os.waitpid(tid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                break
            ptrace.cont(tid, 0)
        self.clobbered.discard(tid)

    def map(self, addr: int, length: int, prot: int, offset: int) -> None:
        """Map MemoryFile range [offset, offset+length) at addr, shared and fixed."""
        r = self.syscall(SYS_MMAP, addr, length, prot, MAP_SHARED | MAP_FIXED, STUB_MEMFD, offset)
        if r < 0:
            raise StubError(f"stub mmap of {length:#x} bytes at {addr:#x} failed: {os.strerror(-r)}")

    def unmap(self, addr: int, length: int) -> None:
        r = self.syscall(SYS_MUNMAP, addr, length)
        if r < 0:
            raise StubError(f"stub munmap at {addr:#x} failed: {os.strerror(-r)}")

    def protect(self, addr: int, length: int, prot: int) -> None:
        r = self.syscall(SYS_MPROTECT, addr, length, prot)
        if r < 0:
            raise StubError(f"stub mprotect at {addr:#x} failed: {os.strerror(-r)}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stub_child(gate_r: int, gate_w: int, memfd: int, exe: int) -> None:
    """In the forked child: wait to be seized, isolate, then exec the stub. Never returns."""
    try:
        os.close(gate_w)
        os.read(gate_r, 1)
        _libc.personality(_ADDR_NO_RANDOMIZE)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # Fresh namespaces: a stub can reach nothing of the host even by a stray syscall.
        _libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.setsid()
        exe = fcntl.fcntl(exe, fcntl.F_DUPFD_CLOEXEC, STUB_MEMFD + 1)
        os.dup2(memfd, STUB_MEMFD)
        os.set_inheritable(STUB_MEMFD, True)
        os.closerange(0, STUB_MEMFD)
        os.closerange(STUB_MEMFD + 1, exe)
        os.closerange(exe + 1, 1 << 20)
        os.execve(exe, ["snapbox-stub"], {})
    finally:
        os._exit(127)
