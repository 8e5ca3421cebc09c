"""--strace: every application syscall with decoded arguments and its result, like
`runsc --strace` and strace(1)."""

from __future__ import annotations

import errno
import logging
import os
import struct

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.syscalls import NAMES, NR

log = logging.getLogger("snapbox.strace")

# How to show each argument: "path" (C string), "buf" (bytes at arg, length in the next
# argument), "wbuf" (same, shown after the call: what it filled), "fd", "hex", "int".
_ARGS: dict[int, tuple[str, ...]] = {
    NR.read: ("fd", "rbuf", "int"), NR.write: ("fd", "buf", "int"),
    NR.writev: ("fd", "iov", "int"), NR.readv: ("fd", "hex", "int"),
    NR.pread64: ("fd", "rbuf", "int", "int"), NR.pwrite64: ("fd", "buf", "int", "int"),
    NR.open: ("path", "hex", "oct"), NR.openat: ("fd", "path", "hex", "oct"),
    NR.close: ("fd",), NR.stat: ("path", "hex"), NR.lstat: ("path", "hex"), NR.fstat: ("fd", "hex"),
    NR.newfstatat: ("fd", "path", "hex", "hex"), NR.statx: ("fd", "path", "hex", "hex", "hex"),
    NR.access: ("path", "oct"), NR.faccessat: ("fd", "path", "oct"), NR.faccessat2: ("fd", "path", "oct", "hex"),
    NR.execve: ("path", "hex", "hex"), NR.chdir: ("path",), NR.mkdir: ("path", "oct"),
    NR.mkdirat: ("fd", "path", "oct"), NR.unlink: ("path",), NR.unlinkat: ("fd", "path", "hex"),
    NR.readlink: ("path", "hex", "int"), NR.readlinkat: ("fd", "path", "hex", "int"),
    NR.rename: ("path", "path"), NR.renameat2: ("fd", "path", "fd", "path", "hex"),
    NR.mmap: ("hex", "int", "int", "hex", "fd", "hex"), NR.munmap: ("hex", "int"),
    NR.mprotect: ("hex", "int", "int"), NR.brk: ("hex",), NR.exit: ("int",), NR.exit_group: ("int",),
    NR.ioctl: ("fd", "hex", "hex"), NR.dup2: ("fd", "fd"), NR.dup3: ("fd", "fd", "hex"),
    NR.lseek: ("fd", "int", "int"), NR.kill: ("int", "int"), NR.wait4: ("int", "hex", "hex", "hex"),
}
_SHOWN = 32  # bytes of a buffer shown


def _quote(data: bytes) -> str:
    text = data[:_SHOWN].decode("latin-1").encode("unicode_escape").decode().replace('"', '\\"')
    return f'"{text}"' + ("..." if len(data) > _SHOWN else "")


def _arg(t, kind: str, value: int, nxt: int, result: int) -> str:
    try:
        if kind == "fd":
            v = value & 0xFFFFFFFF
            return "AT_FDCWD" if v == 0xFFFFFF9C else str(v - (1 << 32) if v & 0x80000000 else v)
        if kind == "path":
            return _quote(t.mm.read_cstring(value)) if value else "NULL"
        if kind == "buf":
            return _quote(t.mm.read(value, min(nxt, _SHOWN + 1)))
        if kind == "iov":
            count = min(nxt, 16)
            raw = t.mm.read(value, 16 * count)
            parts = [struct.unpack_from("<QQ", raw, 16 * i) for i in range(count)]
            data = b"".join(t.mm.read(base, min(n, _SHOWN + 1)) for base, n in parts)
            return "[" + _quote(data) + "]"
        if kind == "rbuf":
            return _quote(t.mm.read(value, min(result, _SHOWN + 1))) if result > 0 else hex(value)
        if kind == "oct":
            return oct(value & 0o7777)
        if kind == "int":
            return str(value - (1 << 64) if value & (1 << 63) else value)
    except SyscallError:
        return hex(value)
    return hex(value)


def format_call(t, nr: int, raw: tuple, result: int | None) -> str:
    """One strace line for a syscall: its six raw arguments, and its result (None for
    one that did not return, such as exit_group)."""
    kinds = _ARGS.get(nr)
    if kinds is None:
        args = ", ".join(hex(a) for a in raw[:3])
    else:
        args = ", ".join(_arg(t, k, raw[i], raw[i + 1] if i + 1 < 6 else 0, result or 0)
                         for i, k in enumerate(kinds))
    if result is None:
        res = "?"
    elif result < 0 and -result in errno.errorcode:
        res = f"-1 {errno.errorcode[-result]} ({os.strerror(-result)})"
    elif nr in (NR.mmap, NR.brk):
        res = hex(result)
    else:
        res = str(result)
    return f"[{t.tg.tgid}:{t.tid}] {NAMES.get(nr, f'syscall_{nr}')}({args}) = {res}"


def tracer(t, nr: int, raw: tuple, result: int | None) -> None:
    log.info("%s", format_call(t, nr, raw, result))
