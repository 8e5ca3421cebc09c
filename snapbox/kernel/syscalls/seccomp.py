"""seccomp(2) and its prctl forms: a program's own filters (snapbox.kernel.seccomp runs them)."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel import seccomp as sc
from snapbox.kernel.creds import CAP_SYS_ADMIN, own_capable
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.syscalls import NR, syscall

SECCOMP_SET_MODE_STRICT, SECCOMP_SET_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL, SECCOMP_GET_NOTIF_SIZES = 0, 1, 2, 3
FLAG_TSYNC, FLAG_LOG, FLAG_SPEC_ALLOW, FLAG_NEW_LISTENER, FLAG_TSYNC_ESRCH, FLAG_WAIT_KILLABLE_RECV = \
    1, 2, 4, 8, 16, 32
FLAG_MASK = 63
# struct seccomp_notif, seccomp_notif_resp and seccomp_data sizes (SECCOMP_GET_NOTIF_SIZES)
NOTIF_SIZES = struct.pack("<HHH", 80, 24, sc.SECCOMP_DATA.size)
_FPROG = struct.Struct("<H6xQ")  # struct sock_fprog


@syscall(NR.seccomp)
def seccomp(t, op, flags, uargs):
    op, flags = op & 0xFFFFFFFF, flags & 0xFFFFFFFF
    if op == SECCOMP_SET_MODE_STRICT:
        if flags or uargs:
            raise SyscallError(errno.EINVAL)
        return set_strict(t)
    if op == SECCOMP_SET_MODE_FILTER:
        return set_filter(t, flags, uargs)
    if op == SECCOMP_GET_ACTION_AVAIL:
        if flags:
            raise SyscallError(errno.EINVAL)
        action, = struct.unpack("<I", t.mm.read(uargs, 4))
        if action not in sc.KNOWN_ACTIONS:
            raise SyscallError(errno.EOPNOTSUPP)
        return 0
    if op == SECCOMP_GET_NOTIF_SIZES:
        if flags:
            raise SyscallError(errno.EINVAL)
        t.mm.write(uargs, NOTIF_SIZES)
        return 0
    raise SyscallError(errno.EINVAL)


def set_strict(t) -> int:
    """SECCOMP_MODE_STRICT: from now on only read, write, exit and rt_sigreturn."""
    if t.seccomp_mode not in (sc.SECCOMP_MODE_DISABLED, sc.SECCOMP_MODE_STRICT):
        raise SyscallError(errno.EINVAL)
    t.seccomp_mode = sc.SECCOMP_MODE_STRICT
    return 0


def set_filter(t, flags: int, uargs: int) -> int:
    """Check and install a filter on the calling thread (with TSYNC, on all of its process's)."""
    if flags & ~FLAG_MASK:
        raise SyscallError(errno.EINVAL)
    if flags & FLAG_TSYNC and flags & FLAG_NEW_LISTENER and not flags & FLAG_TSYNC_ESRCH:
        raise SyscallError(errno.EINVAL)
    if flags & FLAG_WAIT_KILLABLE_RECV and not flags & FLAG_NEW_LISTENER:
        raise SyscallError(errno.EINVAL)
    length, code = _FPROG.unpack(t.mm.read(uargs, _FPROG.size))
    if not 0 < length <= sc.BPF_MAXINSNS:
        raise SyscallError(errno.EINVAL)
    if not t.tg.prctl.get("no_new_privs") and not own_capable(t.tg, CAP_SYS_ADMIN):
        raise SyscallError(errno.EACCES)
    if not code:
        raise SyscallError(errno.EINVAL)
    insns = sc.check(t.mm.read(code, length * sc.INSN.size))
    if t.seccomp_mode == sc.SECCOMP_MODE_STRICT:
        raise SyscallError(errno.EINVAL)
    prev = t.seccomp
    if flags & FLAG_NEW_LISTENER and any(f.listener is not None for f in _chain(prev)):
        raise SyscallError(errno.EBUSY)  # one listener to a chain
    length = sc.converted_length(insns)
    before = prev.path_length if prev else 0
    if length + before > sc.MAX_INSNS_PER_PATH:
        raise SyscallError(errno.ENOMEM)
    new = sc.SeccompFilter(insns=insns, prev=prev, log=bool(flags & FLAG_LOG),
                           path_length=before + length + sc.PATH_PENALTY)
    others = [o for o in t.tg.tasks if o is not t] if flags & FLAG_TSYNC else []
    for o in others:
        if o.seccomp_mode == sc.SECCOMP_MODE_STRICT or not new.descends_from(o.seccomp):
            if flags & FLAG_TSYNC_ESRCH:
                raise SyscallError(errno.ESRCH)
            return o.tid  # the thread that cannot take the filter
    fd = 0
    if flags & FLAG_NEW_LISTENER:
        new.listener = sc.SeccompListener(flags=2)
        fd = t.fds.install(new.listener, cloexec=True)
    for o in [t, *others]:
        o.seccomp, o.seccomp_mode = new, sc.SECCOMP_MODE_FILTER
    return fd


def _chain(f):
    while f is not None:
        yield f
        f = f.prev
