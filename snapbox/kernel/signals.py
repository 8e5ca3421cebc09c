"""Signal numbers and default actions (signal(7)), siginfo, and the x86-64 signal frame
(rt_sigframe, ucontext, the XSAVE area) a handler runs on."""

from __future__ import annotations

import enum
import struct
from errno import EINVAL, ENOMEM
from typing import TYPE_CHECKING

from snapbox.kernel.errors import SyscallError
from snapbox.platform.cpuid import xstate_size

if TYPE_CHECKING:
    from snapbox.platform.cpuid import FeatureSet

NSIG = 64
SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = 1, 2, 3, 4, 5, 6, 7, 8
SIGKILL, SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM, SIGSTKFLT = 9, 10, 11, 12, 13, 14, 15, 16
SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGXCPU = 17, 18, 19, 20, 21, 22, 23, 24
SIGXFSZ, SIGVTALRM, SIGPROF, SIGWINCH, SIGIO, SIGPWR, SIGSYS = 25, 26, 27, 28, 29, 30, 31

SIG_DFL, SIG_IGN = 0, 1
SA_NOCLDSTOP, SA_NOCLDWAIT, SA_SIGINFO, SA_ONSTACK = 0x1, 0x2, 0x4, 0x08000000
SA_RESTART, SA_NODEFER, SA_RESETHAND, SA_RESTORER = 0x10000000, 0x40000000, 0x80000000, 0x04000000
CORE_DUMPED = 0x80  # wait status bit: the process dumped core


class Default(enum.Enum):
    TERM = "terminate"
    CORE = "terminate and dump core"
    IGNORE = "ignore"
    STOP = "stop"
    CONT = "continue"


_CORE = {SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU, SIGXFSZ, SIGSYS}
_IGNORE = {SIGCHLD, SIGURG, SIGWINCH}
_STOP = {SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU}


def default_action(sig: int) -> Default:
    if sig in _CORE:
        return Default.CORE
    if sig in _IGNORE:
        return Default.IGNORE
    if sig in _STOP:
        return Default.STOP
    if sig == SIGCONT:
        return Default.CONT
    return Default.TERM


def sigbit(sig: int) -> int:
    """The bit of signal `sig` in a sigset_t."""
    return 1 << (sig - 1)


# -- signal frames (arch/x86/kernel/signal.c, the x86-64 rt_sigframe) ---------------------

SI_USER, SI_TKILL, SI_KERNEL = 0, -6, 0x80
SEGV_ACCERR, BUS_ADRERR = 2, 2  # a fault's si_code: a page it may not touch; an address with nothing behind it
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED, CLD_CONTINUED = 1, 2, 3, 4, 5, 6
SS_ONSTACK, SS_DISABLE, SS_AUTODISARM = 1, 2, 1 << 31
MINSIGSTKSZ = 2048


def altstack_from(sp: int, flags: int, size: int) -> tuple[int, int, int]:
    """The alternate stack a stack_t sets (sigaltstack(2), or a frame's uc_stack at
    sigreturn): (sp, flags, size), flags SS_DISABLE or 0, with SS_AUTODISARM kept."""
    flags &= 0xFFFFFFFF
    mode = flags & ~SS_AUTODISARM
    if mode not in (0, SS_ONSTACK, SS_DISABLE):
        raise SyscallError(EINVAL)
    if mode == SS_DISABLE:
        return 0, SS_DISABLE | flags & SS_AUTODISARM, 0
    if size < MINSIGSTKSZ:
        raise SyscallError(ENOMEM)
    return sp, flags & SS_AUTODISARM, size


UC_FP_XSTATE, UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS = 0x1, 0x2, 0x4
FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2 = 0x46505853, 0x46505845
REDZONE = 128
SIGINFO_SIZE = 128
# pretcode, then ucontext: uc_flags, uc_link, uc_stack (sp, flags, size), sigcontext, sigmask
_SIGCONTEXT_GPRS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp",
                    "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")
_UCONTEXT = struct.Struct("<QQQI4xQ" + "Q" * 18 + "HHHH" + "QQQQQ" + "64x" + "Q")
FRAME_SIZE = 8 + _UCONTEXT.size + SIGINFO_SIZE
EFLAGS_USER = 0x254DD5  # the flags rt_sigreturn lets user space set (FIX_EFLAGS)


def siginfo(sig: int, code: int, pid: int = 0, uid: int = 0, status: int = 0, addr: int | None = None,
            chld: bool = False) -> bytes:
    """A siginfo_t: kill-style (pid, uid), SIGCHLD-style (pid, uid, status; `chld`: a
    child's exit signal other than SIGCHLD) or fault (addr)."""
    head = struct.pack("<iii4x", sig, 0, code)
    if addr is not None:
        body = struct.pack("<Q", addr)
    elif sig == SIGCHLD or chld:
        body = struct.pack("<iIi", pid, uid, status)
    else:
        body = struct.pack("<iI", pid, uid)
    return (head + body).ljust(SIGINFO_SIZE, b"\0")


def build_frame(regs, sp: int, mask: int, altstack: tuple[int, int, int], fp_area: bytes,
                info: bytes, restorer: int) -> tuple[int, bytes, int]:
    """Lay out an rt_sigframe below `sp`: returns (frame address, frame bytes, address for
    `fp_area` (from xsave_for_frame), which the caller writes there)."""
    fp_addr = (sp - len(fp_area)) & ~63
    frame = ((fp_addr - FRAME_SIZE) & ~15) - 8  # as after a call: (rsp + 8) % 16 == 0
    gprs = [getattr(regs, n) for n in _SIGCONTEXT_GPRS]
    uc = _UCONTEXT.pack(
        UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, 0,
        altstack[0], altstack[1], altstack[2],
        *gprs, regs.cs, regs.gs, regs.fs, regs.ss,
        0, 0, mask, 0, fp_addr,  # err, trapno, oldmask, cr2, fpstate
        mask,
    )
    return frame, struct.pack("<Q", restorer) + uc + info, fp_addr


def xsave_for_frame(fpstate: bytes, xfeatures: int) -> bytes:
    """The XSAVE area as a signal frame holds it: the components in `xfeatures` (those
    the task may use; a frame holds no AMX tiles the program never asked for), the
    software-reserved bytes that describe it (fpx_sw_bytes) and FP_XSTATE_MAGIC2 after it."""
    if len(fpstate) < 576 or not xfeatures:
        return bytes(fpstate[:512])
    size = xstate_size(xfeatures)
    area = bytearray(fpstate[:size].ljust(size, b"\0"))
    bv = int.from_bytes(area[512:520], "little") & xfeatures
    area[512:520] = bv.to_bytes(8, "little")
    area[464:464 + 20] = struct.pack("<IIQI", FP_XSTATE_MAGIC1, size + 4, xfeatures, size)
    return bytes(area) + struct.pack("<I", FP_XSTATE_MAGIC2)


def frame_xstate_size(sw_bytes: bytes) -> int:
    """How many bytes of XSAVE area a frame's FP state holds, from its fpx_sw_bytes
    (bytes 464..484 of the area): the legacy 512 unless they describe an XSAVE area."""
    magic, extended, _, size = struct.unpack_from("<IIQI", sw_bytes)
    if magic != FP_XSTATE_MAGIC1 or extended != size + 4 or not 576 <= size <= XSTATE_MAX:
        return 512
    return size


def parse_frame(data: bytes) -> dict:
    """The ucontext of a frame (read from frame + 8) as rt_sigreturn needs it."""
    v = _UCONTEXT.unpack_from(data)
    gprs = dict(zip(_SIGCONTEXT_GPRS, v[5:23]))
    return {"stack": (v[2], v[3], v[4]), "gprs": gprs, "cs": v[23], "ss": v[26],
            "fpstate": v[31], "mask": v[32]}


UCONTEXT_SIZE = _UCONTEXT.size


XSTATE_MAX = 1 << 14  # room for any XSAVE area


def fit_xstate(data: bytes, host: FeatureSet) -> bytes:
    """An XSAVE area from the image, sized for this host's XSAVE layout.

    The host check guarantees the image's state components are a subset of the host's,
    and the standard XSAVE layout puts each component at a fixed offset, so the area only
    needs padding (absent components are in their initial state) or trimming to the size
    the host's kernel expects; XSTATE_BV keeps to the host's enabled components.
    """
    size = max(host.xsave_size, 512)
    out = bytearray(data[:size].ljust(size, b"\0"))
    if size >= 520:
        bv = int.from_bytes(out[512:520], "little") & (host.xcr0 or 0x3)
        out[512:520] = bv.to_bytes(8, "little")
    return bytes(out)
