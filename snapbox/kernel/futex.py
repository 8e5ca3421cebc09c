"""Futexes: the table of waiters, waking, and robust lists at a thread's exit.

A futex is named by the MemoryFile offset of its word, so private and shared futexes, and
futexes shared between processes through shared memory, all meet in one table. Waiters
are not saved: a parked waiter is saved rewound into futex(2) and, after a restore,
waits again (or sees the word changed and returns EAGAIN, which callers retry).
"""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.syscalls.numbers import NR
from snapbox.kernel.waiter import WaitQueue

BITSET_MATCH_ANY = 0xFFFFFFFF
WOKEN = "woken"


def key(t, addr: int) -> int:
    """The futex's name: the MemoryFile offset of its (aligned, mapped) word."""
    if addr % 4:
        raise SyscallError(errno.EINVAL)
    vma = t.mm.find(addr)
    if vma is None:
        raise SyscallError(errno.EFAULT)
    return vma.offset + (addr - vma.start)


def word(t, addr: int) -> int:
    """The futex word at `addr`."""
    return struct.unpack("<I", t.mm.read(addr, 4))[0]


def queue(t, k: int) -> WaitQueue:
    """The waiters of futex `k` (made on first use)."""
    q = t.kernel.futexes.get(k)
    if q is None:
        q = t.kernel.futexes[k] = WaitQueue()
    return q


def wake(t, addr: int, count: int, bitset: int = BITSET_MATCH_ANY) -> int:
    """Wake up to `count` waiters on the futex at `addr`; returns how many were woken."""
    q = t.kernel.futexes.get(key(t, addr))
    if q is None:
        return 0
    woken = 0
    for waiter in list(q.waiters):
        if woken >= count:
            break
        if waiter.futex_bitset & bitset:
            q.waiters.remove(waiter)
            waiter.set_restart(NR.futex, WOKEN)
            t.kernel.wake(waiter)
            woken += 1
    return woken


def wait(t, addr: int, val: int, deadline_ns: int | None, bitset: int) -> int:
    """FUTEX_WAIT(_BITSET): park until woken (0), EAGAIN if the word is not `val`,
    ETIMEDOUT at the deadline (sandbox monotonic ns)."""
    state = t.restart_value(NR.futex)
    if state == WOKEN:
        return 0
    if state is not None:
        deadline_ns = state
    if word(t, addr) != val:
        raise SyscallError(errno.EAGAIN)
    if deadline_ns is not None:
        t.set_restart(NR.futex, deadline_ns)
        if t.kernel.timekeeper.monotonic_ns() >= deadline_ns:
            raise SyscallError(errno.ETIMEDOUT)
    if bitset == 0:
        raise SyscallError(errno.EINVAL)
    t.futex_bitset = bitset
    raise WouldBlock(queue(t, key(t, addr)), deadline=deadline_ns)


FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK = 0x80000000, 0x40000000, 0x3FFFFFFF
ROBUST_LIST_LIMIT = 2048


def exit_robust_list(t) -> None:
    """At a thread's exit, mark the robust futexes it still holds as owner-died and wake a
    waiter of each (robust_futex(7)), as Linux's exit_robust_list does."""
    head, _ = t.robust_list
    if not head:
        return
    try:
        entry, offset, pending = struct.unpack("<QqQ", t.mm.read(head, 24))
        seen = 0
        while entry != head and entry and seen < ROBUST_LIST_LIMIT:
            _owner_died(t, entry + offset)
            (entry,) = struct.unpack("<Q", t.mm.read(entry, 8))
            seen += 1
        if pending:
            _owner_died(t, pending + offset)
    except SyscallError:
        return  # a broken list in application memory: nothing more to do, as on Linux


def _owner_died(t, addr: int) -> None:
    value = word(t, addr)
    if value & FUTEX_TID_MASK != t.tid:
        return
    t.mm.write(addr, struct.pack("<I", (value & FUTEX_WAITERS) | FUTEX_OWNER_DIED))
    if value & FUTEX_WAITERS:
        wake(t, addr, 1)
