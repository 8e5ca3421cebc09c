"""The syscall table: one module per family registers its handlers with @syscall."""

from __future__ import annotations

from collections.abc import Callable

from snapbox.kernel.syscalls.numbers import NAMES, NR

# nr -> (handler, number of arguments it takes after the task)
TABLE: dict[int, tuple[Callable, int]] = {}

MASK64 = (1 << 64) - 1


def syscall(*numbers: int):
    """Register a handler `fn(task, arg0, ...)` for one or more syscall numbers."""

    def register(fn: Callable) -> Callable:
        nargs = fn.__code__.co_argcount - 1
        for nr in numbers:
            if nr in TABLE:
                raise ValueError(f"syscall {NAMES.get(nr, nr)} registered twice")
            TABLE[nr] = (fn, nargs)
        return fn

    return register


def i32(x: int) -> int:
    """A register value as a C int (fds, flags, pids)."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def i64(x: int) -> int:
    """A register value as a C long (offsets, signed sizes)."""
    return x - (1 << 64) if x & (1 << 63) else x


def load_all() -> None:
    """Import every family so its handlers are registered."""
    from snapbox.kernel.syscalls import events, fs, futex, info, mm, net, poll, process, signal, time  # noqa: F401


__all__ = ["NAMES", "NR", "TABLE", "i32", "i64", "load_all", "syscall"]
