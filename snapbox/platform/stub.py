"""Stub processes: the host processes that lend their CPU context to application tasks.

A stub runs a tiny static ELF that snapbox generates: one page holding a `syscall; int3`
trampoline. Once it has exec'd, the sentry installs the stub's seccomp filter, unmaps
everything else in it (stack, vDSO, vvar), so the whole lower address space belongs to the
application, and maps MemoryFile ranges into it by injecting syscalls through the trampoline.

The application's own syscalls never reach the host. The filter sends each one to the
sentry: most as user notifications (the fast path, see notify.py), those whose handlers need
the thread stopped under ptrace (SECCOMP_RET_TRACE), which the sentry then skips. Only the
trampoline may make host syscalls, only the few the sentry injects, with the arguments it
uses and a secret of this stub in an argument the call ignores (a program that jumps to the
trampoline cannot forge it); any other call from there kills the stub. The vsyscall page's
legacy entry points, which the host kernel emulates without a syscall instruction, are
traced too, and answered from the sandbox's clock. One call of the application's own goes
to the host: the sandbox's vDSO reads the host's CLOCK_REALTIME or CLOCK_MONOTONIC with a
clock_gettime carrying VDSO_TAG (see snapbox/kernel/vdso.py).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import struct
from collections.abc import Callable

from snapbox.platform import ptrace
from snapbox.platform.notify import Listener
from snapbox.state import SnapboxError

# Where the stub's page lives. ASLR is off in stubs, so the kernel puts the initial
# stack just below 0x7ffffffff000, well above this page; the application gets everything
# below it.
STUB_ADDR = 0x7FFFFFF00000
TRAMPOLINE = STUB_ADDR + 0x78  # syscall; int3
STUB_ENTRY = STUB_ADDR + 0x7C  # int3; jmp back: never run by design
TILE_TOUCH = STUB_ADDR + 0x80  # ldtilecfg; tilezero; tilerelease; int3: see Stub.touch_tiles
VSYSCALL_PAGE = 0xFFFFFFFFFF600000  # the host kernel's legacy vsyscall entry points
APP_TOP = STUB_ADDR  # the application's address space is [0, APP_TOP)
STUB_MEMFD = 3  # the MemoryFile's fd number inside every stub
STUB_BASEFD = 4  # a clone's base memory (read-only, mapped private: memfile.MemoryFile.base), if any
# In the third argument of the vDSO's clock_gettime (platform/vdso.c), which the call ignores:
# the host answers it. Not a secret: host clocks are no more than the program could read
# with rdtsc.
VDSO_TAG = 0x736E6170626F7856

_ADDR_NO_RANDOMIZE = 0x0040000
_PR_SET_PDEATHSIG = 1
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWNET = 0x40000000
WALL = 0x40000000

SYS_MMAP = 9
SYS_CLOCK_GETTIME = 228
SYS_MPROTECT = 10
SYS_MUNMAP = 11
SYS_CLONE = 56
SYS_FORK = 57
SYS_EXIT = 60
SYS_PRCTL = 157
SYS_ARCH_PRCTL = 158
ARCH_SET_CPUID = 0x1012
ARCH_REQ_XCOMP_PERM = 0x1023
SYS_SECCOMP = 317
SYS_CLOSE = 3
SYS_USERFAULTFD = 323
# CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM
_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_FIXED = 0x1, 0x2, 0x10

_libc = ctypes.CDLL(None, use_errno=True)


class StubError(SnapboxError):
    """A stub process could not be created or died underneath the sentry."""


# seccomp(2) and BPF constants (linux/seccomp.h, linux/filter.h, linux/audit.h).
_AUDIT_ARCH_X86_64 = 0xC000003E
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_SECCOMP_RET_TRACE = 0x7FF00000
_SECCOMP_RET_USER_NOTIF = 0x7FC00000
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SYS_PIDFD_GETFD = 438
_PR_SET_NO_NEW_PRIVS = 38
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_AND_K = 0x54
_BPF_RET_K = 0x06
# struct seccomp_data: nr, arch, instruction_pointer, args[6]
_NR, _ARCH, _IP_LO, _IP_HI = 0, 4, 8, 12


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


def _arg_hi(i: int) -> int:
    return 20 + 8 * i


def seccomp_filter(cookie: int, traced: frozenset[int] = frozenset()) -> list[tuple[int, int, int, int]]:
    """The stub's filter as (code, jt, jf, k) instructions.

    From the trampoline (seccomp's instruction pointer is the address after its `syscall`),
    exactly the calls the sentry injects, each carrying `cookie`: mmap of the MemoryFile
    (shared, fixed) or of a clone's base memory (private, fixed; the cookie in the upper
    half of the fd argument, which the kernel truncates to an int), and with the cookie as the unused sixth argument mprotect, munmap,
    clone of a thread with the flags clone_thread uses, fork, exit, userfaultfd, close and
    arch_prctl (CPUID faulting and AMX permission, asked for by the application).
    Anything else from there kills the stub. From anywhere else, the application's calls:
    clock_gettime of CLOCK_REALTIME or CLOCK_MONOTONIC with VDSO_TAG as its third argument
    (the vDSO's) runs on the host; the numbers in `traced`, calls with another architecture
    (int 0x80) and calls into the vsyscall page stop under ptrace; every other one is a
    user notification."""
    ret = TRAMPOLINE + 2
    plain = (SYS_MPROTECT, SYS_MUNMAP, SYS_FORK, SYS_EXIT, SYS_USERFAULTFD, SYS_CLOSE, SYS_ARCH_PRCTL)
    # Each block is a list of instructions whose jump targets are labels, resolved below.
    prog: list[tuple[int, object, object, int]] = []
    labels: dict[str, int] = {}

    def at(label: str) -> None:
        labels[label] = len(prog)

    def ld(offset: int) -> None:
        prog.append((_BPF_LD_W_ABS, 0, 0, offset))

    def jeq(k: int, yes: object, no: object) -> None:
        prog.append((_BPF_JEQ_K, yes, no, k & 0xFFFFFFFF))

    def ret_(action: int) -> None:
        prog.append((_BPF_RET_K, 0, 0, action))

    ld(_ARCH)
    jeq(_AUDIT_ARCH_X86_64, 0, "trace")
    ld(_IP_HI)
    jeq(ret >> 32, 0, "application")
    ld(_IP_LO)
    jeq(ret, 0, "application")
    ld(_NR)
    for nr in plain:
        jeq(nr, "cookie", 0)
    jeq(SYS_MMAP, "mmap", 0)
    jeq(SYS_CLONE, "clone", "kill")
    at("mmap")
    ld(_arg_hi(4))
    jeq(cookie, 0, "kill")
    ld(_arg_hi(3))
    jeq(0, 0, "kill")
    ld(_arg_lo(4))
    jeq(STUB_MEMFD, "shared", 0)
    jeq(STUB_BASEFD, "private", "kill")
    at("shared")
    ld(_arg_lo(3))
    jeq(MAP_SHARED | MAP_FIXED, "allow", "kill")
    at("private")
    ld(_arg_lo(3))
    jeq(MAP_PRIVATE | MAP_FIXED, "allow", "kill")
    at("clone")
    ld(_arg_lo(0))
    jeq(_THREAD_FLAGS, 0, "kill")
    ld(_arg_hi(0))
    jeq(0, "cookie", "kill")
    at("cookie")
    ld(_arg_lo(5))
    jeq(cookie, 0, "kill")
    ld(_arg_hi(5))
    jeq(cookie >> 32, "allow", "kill")
    at("application")
    ld(_IP_HI)
    jeq(VSYSCALL_PAGE >> 32, 0, "syscall")
    ld(_IP_LO)
    prog.append((_BPF_AND_K, 0, 0, 0xFFFFF000))
    jeq(VSYSCALL_PAGE, "trace", 0)
    at("syscall")
    ld(_NR)
    jeq(SYS_CLOCK_GETTIME, 0, "emulated")
    ld(_arg_lo(2))
    jeq(VDSO_TAG, 0, "emulated")
    ld(_arg_hi(2))
    jeq(VDSO_TAG >> 32, 0, "emulated")
    ld(_arg_hi(0))
    jeq(0, 0, "emulated")
    ld(_arg_lo(0))
    jeq(0, "allow", 0)  # CLOCK_REALTIME
    jeq(1, "allow", 0)  # CLOCK_MONOTONIC
    at("emulated")
    ld(_NR)
    for nr in sorted(traced):
        jeq(nr, "trace", 0)
    ret_(_SECCOMP_RET_USER_NOTIF)
    at("trace")
    ret_(_SECCOMP_RET_TRACE)
    at("allow")
    ret_(_SECCOMP_RET_ALLOW)
    at("kill")
    ret_(_SECCOMP_RET_KILL_PROCESS)

    def target(pc: int, label: object) -> int:
        return labels[label] - pc - 1 if isinstance(label, str) else label

    return [(code, target(pc, jt), target(pc, jf), k) for pc, (code, jt, jf, k) in enumerate(prog)]


def stub_elf() -> bytes:
    """The stub executable: an ELF header, one PT_LOAD, and the trampoline code."""
    code = (b"\x0f\x05\xcc" + b"\x90" + b"\xcc\xeb\xfd" + b"\x90"  # syscall; int3; nop | int3; jmp -3; nop
            + b"\xc4\xe2\x78\x49\x05\x37\x00\x00\x00"  # ldtilecfg the tile configuration below
            + b"\xc4\xe2\x7b\x49\xc0"  # tilezero %tmm0
            + b"\xc4\xe2\x78\x49\xc0\xcc")  # tilerelease; int3
    # At 0xC0: a tile configuration (palette 1, tile 0 of 16 rows of 64 bytes).
    code = code.ljust(0xC0 - 0x78, b"\xcc") + bytes([1]).ljust(16, b"\0") + struct.pack("<H", 64).ljust(32, b"\0") \
        + bytes([16]).ljust(16, b"\0")
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

    def __init__(self, pid: int, base_regs: ptrace.Regs, base_xstate: bytes, cookie: int,
                 listener: Listener | None = None) -> None:
        self.pid = pid
        # The secret each injected syscall carries (see seccomp_filter), and the listener of
        # the application's syscalls: both set when the filter is installed, and shared by
        # the stubs forked from this one, which inherit the filter.
        self.cookie = cookie
        self.listener = listener
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
        self.mem = -1  # /proc/PID/mem, opened on first peek or poke (private base pages)
        # Called (addr, length, memfd offset) after each mapping is made (written-page tracking).
        self.on_map: Callable[[int, int, int], None] | None = None

    @classmethod
    def spawn(cls, memfd: int, traced: frozenset[int] = frozenset(), base: int = -1) -> Stub:
        """Start a stub holding `memfd` as STUB_MEMFD (and `base`, if any, as STUB_BASEFD),
        seized and stopped, with nothing mapped but its own page. Its application's syscalls numbered in `traced` will stop under
        ptrace; the others come as notifications to its listener."""
        exe = _elf_fd()
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _stub_child(gate_r, gate_w, memfd, exe, base)
        os.close(gate_r)
        try:
            ptrace.seize(pid, ptrace.PTRACE_O_EXITKILL | ptrace.PTRACE_O_TRACESYSGOOD
                         | ptrace.PTRACE_O_TRACEEXEC | ptrace.PTRACE_O_TRACECLONE
                         | ptrace.PTRACE_O_TRACEFORK | ptrace.PTRACE_O_TRACESECCOMP)
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
        # On to the exit stop of execve: execve's own result is stored after its exec event,
        # and would overwrite the number of a syscall injected from there.
        ptrace.syscall(pid, 0)
        _, status = os.waitpid(pid, WALL)
        if os.WSTOPSIG(status) != ptrace.SYSCALL_STOP_SIG:
            os.kill(pid, signal.SIGKILL)
            raise StubError(f"stub {pid} stopped unexpectedly after exec (status {status:#x})")
        base = ptrace.Regs()
        ptrace.getregs(pid, base)
        base.orig_rax = -1 & 0xFFFFFFFFFFFFFFFF
        stub = cls(pid, base, ptrace.get_xstate(pid, 1 << 14), int.from_bytes(os.urandom(8), "little"))
        try:
            stub._install_filter(traced)
            stub._unmap_host_mappings()
        except BaseException:
            stub.kill()
            if stub.listener is not None:
                stub.listener.close()
            raise
        return stub

    def _install_filter(self, traced: frozenset[int]) -> None:
        """Put the stub under its seccomp filter (inherited by its threads and forks) and take
        its listener. The filter is written to the stub's stack, which goes with the rest of
        its host mappings: the application never sees the cookie."""
        insns = seccomp_filter(self.cookie, traced)
        bpf = b"".join(struct.pack("<HBBI", *insn) for insn in insns)
        where = (self.base_regs.rsp - 4096 - len(bpf) - 16) & ~15
        fprog = struct.pack("<H6xQ", len(insns), where + 16)
        with open(f"/proc/{self.pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(where)
            mem.write(fprog + bpf)
        if self.syscall(SYS_PRCTL, _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise StubError(f"stub {self.pid} could not set no_new_privs")
        theirs = self.syscall(SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER, where)
        if theirs < 0:
            raise StubError(f"stub {self.pid} could not install its seccomp filter: {os.strerror(-theirs)}")
        self.listener = Listener(self.take_fd(theirs))

    def take_fd(self, theirs: int) -> int:
        """Move the stub's fd `theirs` into this process (pidfd_getfd(2)); the stub's own
        descriptor is closed. Returns ours (close-on-exec)."""
        try:
            pidfd = os.pidfd_open(self.pid)
            try:
                ours = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_long(pidfd), ctypes.c_long(theirs),
                                     ctypes.c_long(0))
                if ours < 0:
                    e = ctypes.get_errno()
                    raise StubError(f"cannot take fd {theirs} of stub {self.pid}: {os.strerror(e)}")
            finally:
                os.close(pidfd)
        finally:
            self.syscall(SYS_CLOSE, theirs)
        return ours

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
        if tid < 0:
            raise StubError(f"stub {self.pid}: a host syscall {nr} was asked for where no thread is stopped")
        self._enter(tid, nr, args)
        self._wait_trap(tid, f"an injected syscall {nr}")
        regs = self.scratch
        ptrace.getregs(tid, regs)
        result = regs.rax
        return result - (1 << 64) if result >= 1 << 63 else result

    def _wait_trap(self, tid: int, what: str) -> None:
        """Wait for thread `tid` to reach the int3 after the code it was set to run."""
        while True:
            _, status = os.waitpid(tid, WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise StubError(f"stub {tid} died during {what}")
            if os.WSTOPSIG(status) == signal.SIGTRAP and status >> 16 == 0:
                return
            if status >> 16 == ptrace.PTRACE_EVENT_STOP:
                self.interrupts_seen.add(tid)
            # A stale PTRACE_INTERRUPT, our own clone's event, or a host signal: go on.
            ptrace.cont(tid, 0)

    def touch_tiles(self, tid: int) -> None:
        """Use AMX tiles on thread `tid` (stopped) of a process given AMX (arch_prctl
        ARCH_REQ_XCOMP_PERM), and release them: the host kernel makes room for a thread's
        tile data at its first use, and only then takes tile data by PTRACE_SETREGSET."""
        regs = self.scratch
        ctypes.pointer(regs)[0] = self.base_regs
        regs.rip = TILE_TOUCH
        ptrace.setregs(tid, regs)
        self.clobbered.add(tid)
        ptrace.cont(tid, 0)
        self._wait_trap(tid, "its first use of AMX")

    def _enter(self, tid: int, nr: int, args: tuple[int, ...]) -> None:
        regs = self.scratch
        ctypes.pointer(regs)[0] = self.base_regs
        regs.rip = TRAMPOLINE
        regs.rax = nr
        full = [*args, 0, 0, 0, 0, 0, 0][:6]
        if nr == SYS_MMAP:
            full[4] |= (self.cookie & 0xFFFFFFFF) << 32
        else:
            full[5] = self.cookie
        for name, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), full):
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
        child = Stub(pid, ptrace.copy_regs(self.base_regs), self.base_xstate, self.cookie, self.listener)
        r = child.syscall(SYS_MUNMAP, 0, APP_TOP)
        if r < 0:
            child.kill()
            raise StubError(f"new stub {pid} could not drop its parent's mappings: {os.strerror(-r)}")
        return child

    def arch_prctl(self, tid: int, code: int, arg: int) -> None:
        """arch_prctl(2) ARCH_SET_CPUID or ARCH_REQ_XCOMP_PERM on thread `tid`, for an
        application that asked for it (the host enforces both: CPUID faults, AMX works)."""
        if code not in (ARCH_SET_CPUID, ARCH_REQ_XCOMP_PERM):
            raise StubError(f"stub {self.pid}: arch_prctl {code:#x} is not one a stub takes")
        r = self.syscall(SYS_ARCH_PRCTL, code, arg, tid=tid)
        if r < 0:
            raise StubError(f"stub {self.pid}: arch_prctl {code:#x} failed: {os.strerror(-r)}")

    def release_thread(self, tid: int) -> None:
        """Host thread `tid` (stopped) runs no task any more: end it, unless it is the
        stub's main thread, which stays stopped for good (the host keeps a process's
        memory reachable through /proc/PID/mem only while its main thread lives)."""
        if tid == self.pid:
            self.clobbered.discard(tid)
            return
        self.exit_thread(tid)

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
        if self.on_map is not None:
            self.on_map(addr, length, offset)

    def map_base(self, addr: int, length: int, prot: int, offset: int) -> None:
        """Map a clone's base memory at [offset, offset+length) at addr, private and fixed:
        its pages are shared with every other clone until this one writes them."""
        r = self.syscall(SYS_MMAP, addr, length, prot, MAP_PRIVATE | MAP_FIXED, STUB_BASEFD, offset)
        if r < 0:
            raise StubError(f"stub mmap of base memory at {addr:#x} failed: {os.strerror(-r)}")

    def peek(self, addr: int, length: int) -> bytes:
        """Read the application's memory as this stub sees it (a private mapping's own pages)."""
        data = os.pread(self._mem(), length, addr)
        if len(data) != length:
            raise StubError(f"stub {self.pid}: short read of memory at {addr:#x}")
        return data

    def poke(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write the application's memory in this stub (a private page gets its own copy)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._mem(), view, addr)
            if n <= 0:
                raise StubError(f"stub {self.pid}: short write of memory at {addr:#x}")
            view, addr = view[n:], addr + n

    def _mem(self) -> int:
        if self.mem < 0:
            self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        return self.mem

    def unmap(self, addr: int, length: int) -> None:
        r = self.syscall(SYS_MUNMAP, addr, length)
        if r < 0:
            raise StubError(f"stub munmap at {addr:#x} failed: {os.strerror(-r)}")

    def protect(self, addr: int, length: int, prot: int) -> None:
        r = self.syscall(SYS_MPROTECT, addr, length, prot)
        if r < 0:
            raise StubError(f"stub mprotect at {addr:#x} failed: {os.strerror(-r)}")

    def kill(self) -> None:
        if self.mem >= 0:
            os.close(self.mem)
            self.mem = -1
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stub_child(gate_r: int, gate_w: int, memfd: int, exe: int, base: int) -> None:
    """In the forked child: wait to be seized, isolate, then exec the stub. Never returns."""
    try:
        os.close(gate_w)
        os.read(gate_r, 1)
        _libc.personality(_ADDR_NO_RANDOMIZE)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # Fresh namespaces: a stub can reach nothing of the host even by a stray syscall.
        _libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        # A stub's forks are its children, and it never waits: ignored, SIGCHLD has each
        # one that ends released as soon as this sentry (their tracer) has reaped it,
        # instead of left a zombie for as long as the sandbox runs.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        # Host signals are never the application's (the sentry emulates those): blocked, none
        # can interrupt a thread waiting for the answer to a notification, or stop it.
        signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
        os.setsid()
        exe = fcntl.fcntl(exe, fcntl.F_DUPFD_CLOEXEC, STUB_BASEFD + 1)
        if base >= 0:
            base = fcntl.fcntl(base, fcntl.F_DUPFD_CLOEXEC, STUB_BASEFD + 1)
        os.dup2(memfd, STUB_MEMFD)
        os.set_inheritable(STUB_MEMFD, True)  # dup2 onto itself (memfd was fd 3) leaves O_CLOEXEC
        if base >= 0:
            os.dup2(base, STUB_BASEFD)
            os.set_inheritable(STUB_BASEFD, True)
        os.closerange(0, STUB_MEMFD)
        os.closerange(STUB_MEMFD + 1 if base < 0 else STUB_BASEFD + 1, exe)
        os.closerange(exe + 1, 1 << 20)
        os.execve(exe, ["snapbox-stub"], {})
    finally:
        os._exit(127)
