"""Stub processes: creation, isolation, injected syscalls, and the application's syscalls caught
as notifications or ptrace stops, never run by the host."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import uuid

import pytest

from snapbox.memfile import MemoryFile
from snapbox.platform import ptrace
from snapbox.platform.stub import APP_TOP, PROT_EXEC, PROT_READ, STUB_ADDR, SYS_MUNMAP, TRAMPOLINE, Stub

WALL = 0x40000000


SYS_MKDIR = 83


@contextlib.contextmanager
def spawned(traced: frozenset[int] = frozenset()):
    mf = MemoryFile()
    s = Stub.spawn(mf.fd, traced)
    try:
        yield s, mf
    finally:
        s.kill()
        with contextlib.suppress(ChildProcessError):  # a test may have seen it die already
            os.waitpid(s.pid, WALL)
        s.listener.close()
        mf.close()


@pytest.fixture
def stub():
    with spawned() as s:
        yield s


def maps(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        return f.read().splitlines()


def test_stub_keeps_only_its_own_page(stub):
    s, _ = stub
    lines = [line for line in maps(s.pid) if "[vsyscall]" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"{STUB_ADDR:x}-")
    assert STUB_ADDR >= APP_TOP


def test_stub_holds_no_host_files_but_the_memory_file(stub):
    s, _ = stub
    fds = os.listdir(f"/proc/{s.pid}/fd")
    assert fds == ["3"]
    assert "memfd:snapbox-memory" in os.readlink(f"/proc/{s.pid}/fd/3")


def test_a_memory_file_that_is_fd_3_reaches_the_stub():
    """A sentry whose memory file got fd 3, the stub's own number for it, still hands it on
    (dup2 onto itself would leave it close-on-exec): in a fresh interpreter, where it is."""
    script = ("import os\n"
              "from snapbox.memfile import MemoryFile\n"
              "from snapbox.platform.stub import PROT_READ, Stub\n"
              "mf = MemoryFile()\n"
              "assert mf.fd == 3, mf.fd\n"
              "s = Stub.spawn(mf.fd, frozenset())\n"
              "mf.write(mf.alloc(4096), b'shared')\n"
              "s.map(0x400000, 4096, PROT_READ, 0)\n"
              "print(s.peek(0x400000, 6).decode())\n"
              "s.kill()\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, close_fds=True, timeout=60)
    assert out.stdout == "shared\n", out.stderr


def test_stub_is_in_fresh_namespaces(stub):
    s, _ = stub
    for ns in ("net", "ipc", "uts"):
        assert os.readlink(f"/proc/{s.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")


def test_mapped_memory_is_shared_with_the_sentry_and_syscalls_are_notified(stub):
    s, mf = stub
    off = mf.alloc(4096)
    # mov eax, 110 (getppid); syscall; jmp back
    mf.write(off, bytes([0xB8, 110, 0, 0, 0, 0x0F, 0x05, 0xEB, 0xF7]))
    s.map(0x400000, 4096, PROT_READ | PROT_EXEC, off)
    regs = ptrace.copy_regs(s.base_regs)
    regs.rip = 0x400000
    ptrace.setregs(s.pid, regs)
    ptrace.cont(s.pid)
    for expected in range(3):
        assert select.select([s.listener.fd], [], [], 10)[0]
        nid, tid, nr, arch, ip, args = s.listener.receive()
        assert (tid, nr, arch, ip) == (s.pid, 110, ptrace.AUDIT_ARCH_X86_64, 0x400007)  # ip: after the syscall
        assert s.listener.answer(nid, 1000 + expected)
    # The next call waits for its answer; an interrupt takes it out, stopped at the syscall.
    assert select.select([s.listener.fd], [], [], 10)[0]
    nid, *_ = s.listener.receive()
    ptrace.interrupt(s.pid)
    _, status = os.waitpid(s.pid, WALL)
    assert status >> 16 == ptrace.PTRACE_EVENT_STOP
    ptrace.getregs(s.pid, regs)
    assert (regs.rip, regs.orig_rax, regs.rax) == (0x400007, 110, -512 & (1 << 64) - 1)  # -ERESTARTSYS
    assert not s.listener.answer(nid, 0)  # withdrawn


def _mkdir_program(s: Stub, mf: MemoryFile, path: bytes) -> ptrace.Regs:
    """Map code that makes mkdir(path, 0755) and traps; returns registers to start it with."""
    off = mf.alloc(4096)
    code = (bytes([0xB8, SYS_MKDIR, 0, 0, 0, 0x48, 0xBF]) + struct.pack("<Q", 0x400100)
            + bytes([0xBE, 0xED, 0x01, 0, 0, 0x0F, 0x05, 0xCC]))
    mf.write(off, code.ljust(0x100, b"\x90") + path + b"\0")
    s.map(0x400000, 4096, PROT_READ | PROT_EXEC, off)
    regs = ptrace.copy_regs(s.base_regs)
    regs.rip = 0x400000
    return regs


def test_a_notified_syscall_is_answered_and_never_run_by_the_host(stub, tmp_path):
    s, mf = stub
    path = tmp_path / "made-by-the-stub"
    regs = _mkdir_program(s, mf, str(path).encode())
    ptrace.setregs(s.pid, regs)
    ptrace.cont(s.pid)
    assert select.select([s.listener.fd], [], [], 10)[0]
    nid, _, nr, _, _, args = s.listener.receive()
    assert nr == SYS_MKDIR and args[1] == 0o755
    assert s.listener.answer(nid, -13)
    _, status = os.waitpid(s.pid, WALL)
    assert os.WSTOPSIG(status) == signal.SIGTRAP  # the int3 after the syscall
    ptrace.getregs(s.pid, regs)
    assert regs.rax == -13 & (1 << 64) - 1
    assert not path.exists()


def test_a_traced_syscall_stops_and_skipped_is_never_run_by_the_host(tmp_path):
    path = tmp_path / f"made-by-the-stub-{uuid.uuid4().hex}"
    with spawned(frozenset({SYS_MKDIR})) as (s, mf):
        regs = _mkdir_program(s, mf, str(path).encode())
        ptrace.setregs(s.pid, regs)
        ptrace.cont(s.pid)
        _, status = os.waitpid(s.pid, WALL)
        assert status >> 16 == ptrace.PTRACE_EVENT_SECCOMP
        ptrace.getregs(s.pid, regs)
        assert regs.orig_rax == SYS_MKDIR
        regs.orig_rax = (1 << 64) - 1  # skip it
        regs.rax = 7
        ptrace.setregs(s.pid, regs)
        ptrace.cont(s.pid)
        _, status = os.waitpid(s.pid, WALL)
        assert os.WSTOPSIG(status) == signal.SIGTRAP
        ptrace.getregs(s.pid, regs)
        assert regs.rax == 7
        assert not path.exists()


def test_injected_syscall_errors_come_back_negative(stub):
    s, _ = stub
    assert s.syscall(11, 0x1001, 4096) == -22  # munmap of an unaligned address: EINVAL


def test_stub_runs_under_its_seccomp_filter(stub):
    s, _ = stub
    with open(f"/proc/{s.pid}/status") as f:
        assert "Seccomp:\t2\n" in f.read()  # SECCOMP_MODE_FILTER


def run_until_death(pid: int) -> int:
    """Resume the stub until it dies."""
    while True:
        _, status = os.waitpid(pid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return status
        ptrace.cont(pid, 0)


@pytest.mark.parametrize("nr,args", [
    (39, ()),  # getpid: never injected
    (59, (0, 0, 0)),  # execve
    (9, (0x400000, 4096, 3, 0x22, -1 & (1 << 64) - 1, 0)),  # mmap of anonymous host memory
    (56, (0x11, 0, 0, 0, 0)),  # clone with other flags than a thread's
])
def test_a_syscall_the_sentry_never_injects_kills_the_stub(stub, nr, args):
    s, _ = stub
    s._enter(s.pid, nr, args)
    status = run_until_death(s.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_a_call_through_the_trampoline_without_the_stubs_secret_kills_it(stub):
    """What a program that jumps to the trampoline could do: an injected call's number and
    arguments, but not the cookie."""
    s, _ = stub
    regs = ptrace.copy_regs(s.base_regs)
    regs.rip = TRAMPOLINE
    regs.rax = SYS_MUNMAP
    regs.rdi, regs.rsi, regs.r9 = 0x400000, 4096, s.cookie ^ 1
    ptrace.setregs(s.pid, regs)
    ptrace.cont(s.pid)
    status = run_until_death(s.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_the_stub_holds_its_filter_nowhere_the_application_can_read(stub):
    s, _ = stub
    with open(f"/proc/{s.pid}/mem", "rb") as mem:
        mem.seek(STUB_ADDR)
        page = mem.read(4096)
    assert s.cookie.to_bytes(8, "little") not in page
    assert (s.cookie & 0xFFFFFFFF).to_bytes(4, "little") not in page
