"""Thin ptrace(2) bindings for x86-64: the requests the ptrace platform needs, and registers.

Declared here rather than taken from python-ptrace: importing its bindings runs
`ldconfig -p` (ctypes.util.find_library) in every sandbox process, and snapbox needs
only one struct of it.
"""

from __future__ import annotations

import ctypes
import os



class user_regs_struct(ctypes.Structure):  # noqa: N801 - the kernel's name (sys/user.h)
    """x86-64 general registers, as PTRACE_GETREGS and PTRACE_SETREGS move them."""

    _fields_ = [(name, ctypes.c_ulong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_ptrace.restype = ctypes.c_long

PTRACE_PEEKUSER = 3
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 1 << 20

PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

NT_X86_XSTATE = 0x202
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

# The status of a syscall stop with PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80.
SYSCALL_STOP_SIG = 0x85

REG_NAMES = tuple(name for name, _ in user_regs_struct._fields_)

Regs = user_regs_struct


class PtraceError(OSError):
    pass


def _check(result: int, what: str, pid: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, f"ptrace {what} on pid {pid}: {os.strerror(err)}")
    return result


def seize(pid: int, options: int) -> None:
    _check(_ptrace(PTRACE_SEIZE, pid, None, options), "SEIZE", pid)


def interrupt(pid: int) -> None:
    _check(_ptrace(PTRACE_INTERRUPT, pid, None, None), "INTERRUPT", pid)


def syscall(pid: int, sig: int = 0) -> None:
    _check(_ptrace(PTRACE_SYSCALL, pid, None, sig), "SYSCALL", pid)


def cont(pid: int, sig: int = 0) -> None:
    _check(_ptrace(PTRACE_CONT, pid, None, sig), "CONT", pid)


def getregs(pid: int, regs: Regs) -> None:
    _check(_ptrace(PTRACE_GETREGS, pid, None, ctypes.addressof(regs)), "GETREGS", pid)


def setregs(pid: int, regs: Regs) -> None:
    _check(_ptrace(PTRACE_SETREGS, pid, None, ctypes.addressof(regs)), "SETREGS", pid)


def getsiginfo(pid: int) -> bytes:
    """The siginfo_t of the signal the tracee is stopped for."""
    buf = ctypes.create_string_buffer(128)
    _check(_ptrace(PTRACE_GETSIGINFO, pid, None, ctypes.addressof(buf)), "GETSIGINFO", pid)
    return buf.raw


def syscall_arch(pid: int) -> int:
    """The AUDIT_ARCH_* of the syscall the tracee is stopped in (I386 for int 0x80)."""
    buf = ctypes.create_string_buffer(24)
    _check(_ptrace(PTRACE_GET_SYSCALL_INFO, pid, 24, ctypes.addressof(buf)), "GET_SYSCALL_INFO", pid)
    return int.from_bytes(buf.raw[4:8], "little")


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def get_xstate(pid: int, size: int) -> bytes:
    """The task's XSAVE area (FP, SSE, AVX, ... state)."""
    buf = ctypes.create_string_buffer(size)
    iov = _IoVec(ctypes.addressof(buf), size)
    _check(_ptrace(PTRACE_GETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov)), "GETREGSET", pid)
    return buf.raw[: iov.len]


def set_xstate(pid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _IoVec(ctypes.addressof(buf), len(data))
    _check(_ptrace(PTRACE_SETREGSET, pid, NT_X86_XSTATE, ctypes.addressof(iov)), "SETREGSET", pid)


def regs_to_tuple(regs: Regs) -> tuple[int, ...]:
    return tuple(getattr(regs, n) for n in REG_NAMES)


def regs_from_tuple(values: tuple[int, ...] | list[int]) -> Regs:
    regs = Regs()
    for n, v in zip(REG_NAMES, values):
        setattr(regs, n, v)
    return regs


def copy_regs(regs: Regs) -> Regs:
    out = Regs()
    ctypes.pointer(out)[0] = regs
    return out
