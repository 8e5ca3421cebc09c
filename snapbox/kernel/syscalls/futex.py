"""futex(2): WAIT, WAKE, REQUEUE, CMP_REQUEUE, WAIT_BITSET, WAKE_BITSET.

A futex is named by the MemoryFile offset of its word, so private and shared futexes, and
futexes shared between processes through shared memory, all meet in one table. Waiters
are not saved: a parked waiter is saved rewound into futex(2) and, after a restore,
waits again (or sees the word changed and returns EAGAIN, which callers retry).
"""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.time import read_timespec
from snapbox.kernel.waiter import WaitQueue

FUTEX_WAIT, FUTEX_WAKE, FUTEX_FD, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP = 0, 1, 2, 3, 4, 5
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
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


def _word(t, addr: int) -> int:
    return struct.unpack("<I", t.mm.read(addr, 4))[0]


def _queue(t, k: int) -> WaitQueue:
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


def _wait(t, addr: int, val: int, deadline_ns: int | None, bitset: int) -> int:
    state = t.restart_value(NR.futex)
    if state == WOKEN:
        return 0
    if state is not None:
        deadline_ns = state
    if _word(t, addr) != val:
        raise SyscallError(errno.EAGAIN)
    if deadline_ns is not None:
        t.set_restart(NR.futex, deadline_ns)
        if t.kernel.timekeeper.monotonic_ns() >= deadline_ns:
            raise SyscallError(errno.ETIMEDOUT)
    if bitset == 0:
        raise SyscallError(errno.EINVAL)
    t.futex_bitset = bitset
    raise WouldBlock(_queue(t, key(t, addr)), deadline=deadline_ns)


@syscall(NR.futex)
def futex(t, uaddr, op, val, timeout, uaddr2, val3):
    cmd = i32(op) & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    val = val & 0xFFFFFFFF
    tk = t.kernel.timekeeper
    if cmd in (FUTEX_WAIT, FUTEX_WAIT_BITSET):
        deadline = None
        if timeout and t.restart_value(NR.futex) is None:
            when = read_timespec(t, timeout)
            if cmd == FUTEX_WAIT:
                deadline = tk.monotonic_ns() + when  # relative
            elif i32(op) & FUTEX_CLOCK_REALTIME:
                deadline = tk.monotonic_ns() + (when - tk.realtime_ns())
            else:
                deadline = when
        return _wait(t, uaddr, val, deadline, BITSET_MATCH_ANY if cmd == FUTEX_WAIT else val3 & 0xFFFFFFFF)
    if cmd == FUTEX_WAKE:
        return wake(t, uaddr, i32(val) if i32(val) > 0 else 0)
    if cmd == FUTEX_WAKE_BITSET:
        if val3 & 0xFFFFFFFF == 0:
            raise SyscallError(errno.EINVAL)
        return wake(t, uaddr, i32(val), val3 & 0xFFFFFFFF)
    if cmd in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
        if cmd == FUTEX_CMP_REQUEUE and _word(t, uaddr) != val3 & 0xFFFFFFFF:
            raise SyscallError(errno.EAGAIN)
        woken = wake(t, uaddr, i32(val))
        limit = timeout & 0x7FFFFFFF  # val2 rides in the timeout argument
        src = t.kernel.futexes.get(key(t, uaddr))
        moved = 0
        if src is not None:
            dst = _queue(t, key(t, uaddr2))
            while src.waiters and moved < limit:
                dst.waiters.append(src.waiters.pop(0))
                moved += 1
            for waiter in dst.waiters:
                waiter.waiting = tuple(dst if q is src else q for q in waiter.waiting)
        return woken + moved
    if cmd == FUTEX_WAKE_OP:
        return _wake_op(t, uaddr, i32(val), timeout & 0x7FFFFFFF, uaddr2, val3 & 0xFFFFFFFF)
    raise SyscallError(errno.ENOSYS, f"futex op {cmd} is not supported")


def _sext12(x: int) -> int:
    return x - 0x1000 if x & 0x800 else x


def _wake_op(t, uaddr: int, nr_wake: int, nr_wake2: int, uaddr2: int, encoded: int) -> int:
    """FUTEX_WAKE_OP: update *uaddr2, wake on uaddr, and on uaddr2 if the old value passes."""
    op, cmp = (encoded >> 28) & 0xF, (encoded >> 24) & 0xF
    oparg, cmparg = _sext12((encoded >> 12) & 0xFFF), _sext12(encoded & 0xFFF)
    if op & 8:  # FUTEX_OP_OPARG_SHIFT
        if not 0 <= oparg <= 31:
            raise SyscallError(errno.EINVAL)
        oparg = 1 << oparg
    op &= 7
    old = _word(t, uaddr2)
    if op == 0:
        new = oparg
    elif op == 1:
        new = old + oparg
    elif op == 2:
        new = old | oparg
    elif op == 3:
        new = old & ~oparg
    elif op == 4:
        new = old ^ oparg
    else:
        raise SyscallError(errno.ENOSYS)
    t.mm.write(uaddr2, struct.pack("<I", new & 0xFFFFFFFF))
    woken = wake(t, uaddr, nr_wake)
    signed_old = old - (1 << 32) if old & 0x80000000 else old
    tests = (signed_old == cmparg, signed_old != cmparg, signed_old < cmparg, signed_old <= cmparg,
             signed_old > cmparg, signed_old >= cmparg)
    if cmp >= len(tests):
        raise SyscallError(errno.ENOSYS)
    if tests[cmp]:
        woken += wake(t, uaddr2, nr_wake2)
    return woken


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
    word = _word(t, addr)
    if word & FUTEX_TID_MASK != t.tid:
        return
    t.mm.write(addr, struct.pack("<I", (word & FUTEX_WAITERS) | FUTEX_OWNER_DIED))
    if word & FUTEX_WAITERS:
        wake(t, addr, 1)
