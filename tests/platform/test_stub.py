"""Stub processes: creation, isolation, injected syscalls, SYSEMU interception."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from snapbox.memfile import MemoryFile
from snapbox.platform import ptrace
from snapbox.platform.stub import APP_TOP, PROT_EXEC, PROT_READ, STUB_ADDR, Stub

WALL = 0x40000000


@pytest.fixture
def stub():
    mf = MemoryFile()
    s = Stub.spawn(mf.fd)
    yield s, mf
    s.kill()
    with contextlib.suppress(ChildProcessError):  # a test may have seen it die already
        os.waitpid(s.pid, WALL)
    mf.close()


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


def test_stub_is_in_fresh_namespaces(stub):
    s, _ = stub
    for ns in ("net", "ipc", "uts"):
        assert os.readlink(f"/proc/{s.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")


def test_mapped_memory_is_shared_with_the_sentry_and_syscalls_are_caught(stub):
    s, mf = stub
    off = mf.alloc(4096)
    # mov eax, 110 (getppid); syscall; mov [rip+0], rax  -> we read rax back via regs
    mf.write(off, bytes([0xB8, 110, 0, 0, 0, 0x0F, 0x05, 0xEB, 0xF7]))
    s.map(0x400000, 4096, PROT_READ | PROT_EXEC, off)
    regs = ptrace.copy_regs(s.base_regs)
    regs.rip = 0x400000
    ptrace.setregs(s.pid, regs)
    ptrace.sysemu(s.pid)
    for expected in range(3):
        _, status = os.waitpid(s.pid, WALL)
        assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == ptrace.SYSCALL_STOP_SIG
        ptrace.getregs(s.pid, regs)
        assert regs.orig_rax == 110
        regs.rax = 1000 + expected
        ptrace.setregs(s.pid, regs)
        ptrace.sysemu(s.pid)
    ptrace.interrupt(s.pid)
    _, status = os.waitpid(s.pid, WALL)
    while status >> 16 != ptrace.PTRACE_EVENT_STOP:
        ptrace.sysemu(s.pid)
        _, status = os.waitpid(s.pid, WALL)
    ptrace.getregs(s.pid, regs)
    assert 0x400000 <= regs.rip < 0x400009


def test_injected_syscall_errors_come_back_negative(stub):
    s, _ = stub
    assert s.syscall(11, 0x1001, 4096) == -22  # munmap of an unaligned address: EINVAL


def test_stub_runs_under_its_seccomp_filter(stub):
    s, _ = stub
    with open(f"/proc/{s.pid}/status") as f:
        assert "Seccomp:\t2\n" in f.read()  # SECCOMP_MODE_FILTER


def run_until_death(pid: int) -> int:
    """Resume the stub without SYSEMU (as if tracing had gone wrong) until it dies."""
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


def test_a_syscall_from_application_memory_kills_a_stub_that_is_not_emulating(stub):
    s, mf = stub
    off = mf.alloc(4096)
    mf.write(off, bytes([0xB8, 110, 0, 0, 0, 0x0F, 0x05, 0xEB, 0xF7]))  # getppid in a loop
    s.map(0x400000, 4096, PROT_READ | PROT_EXEC, off)
    regs = ptrace.copy_regs(s.base_regs)
    regs.rip = 0x400000
    ptrace.setregs(s.pid, regs)
    ptrace.cont(s.pid)
    status = run_until_death(s.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
