"""Atomic updates of memory the sentry shares with running sandbox threads.

Most of a process's memory is only touched by the sentry while the thread that asked is
stopped. A futex word is different: the other threads of the process run on and update
it with their own atomic instructions (a PI mutex is taken and released in user space when
uncontended), so the sentry must update it with one too.
"""

from __future__ import annotations

import mmap


def cmpxchg32(buf: mmap.mmap, offset: int, expected: int, desired: int) -> int:
    """Store `desired` in the 32-bit word at `offset` of `buf` if it holds `expected`, as one
    atomic instruction; return what it held (equal to `expected` when the store was made)."""
    from snapbox._native import ffi, lib

    if offset % 4 or offset + 4 > len(buf):
        raise ValueError(f"cmpxchg32 at offset {offset:#x}: not an aligned word of the buffer")
    word = ffi.cast("uint32_t *", ffi.from_buffer(buf) + offset)
    return lib.snapbox_cmpxchg32(word, expected & 0xFFFFFFFF, desired & 0xFFFFFFFF)
