"""Futexes: the table of waiters, waking, priority-inheritance locks, and robust lists at
a thread's exit.

A futex is named by the MemoryFile offset of its word, so private and shared futexes, and
futexes shared between processes through shared memory, all meet in one table. Waiters
are not saved: a parked waiter is saved rewound into futex(2) and, after a restore,
waits again (or sees the word changed and returns EAGAIN, which callers retry).

A PI futex's word is the lock itself (futex(2), "Priority-inheritance futexes"): the
owner's TID, FUTEX_WAITERS while anyone waits in the kernel, FUTEX_OWNER_DIED after an
owner died holding it. The sentry keeps no owner of its own: the word says who owns the
lock, and it is changed only by atomic compare-and-exchange, as the process's running
threads take and release it in user space at the same time. Unlocking hands the lock to
the longest waiter, whose restart value then says so, saved with it: a waiter handed the
lock just before a checkpoint returns 0 after the restore. Every task here has the same
priority, so there is no priority to inherit: the order is first come, first served.

FUTEX_WAIT_REQUEUE_PI waits on a plain futex (a condition variable) to be moved by
FUTEX_CMP_REQUEUE_PI to a PI futex (its mutex), and returns owning that lock: the
requeue takes the lock for the longest waiter if it is free, and moves the others among
the lock's waiters, their restart value saying so (REQUEUED).
"""

from __future__ import annotations

import contextlib
import errno
import struct

from snapbox.kernel.errors import SyscallError, WouldBlock
from snapbox.kernel.syscalls.numbers import NR
from snapbox.kernel.waiter import WaitQueue

BITSET_MATCH_ANY = 0xFFFFFFFF
WOKEN = "woken"
HANDED = "handed"  # restart value of a FUTEX_LOCK_PI waiter an unlock made the owner
REQUEUED = "requeued"  # (REQUEUED, deadline): a FUTEX_WAIT_REQUEUE_PI waiter moved to its PI futex
# (QUEUED, deadline, key): a FUTEX_WAIT waiter parked on futex `key` (where a requeue moved
# it, if one did). Its word is not looked at again: only a wake, the deadline or a signal
# ends the wait, as on Linux.
QUEUED = "queued"
FUTEX_WAITERS, FUTEX_OWNER_DIED, FUTEX_TID_MASK = 0x80000000, 0x40000000, 0x3FFFFFFF


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


def wake(t, addr: int, count: int, bitset: int = BITSET_MATCH_ANY, private: bool = False) -> int:
    """Wake up to `count` waiters on the futex at `addr`; returns how many were woken. A
    private futex is not looked up in memory by Linux: at an unmapped address it has no
    waiters (a shared one is EFAULT)."""
    if private and addr % 4 == 0 and t.mm.find(addr) is None:
        return 0
    q = t.kernel.futexes.get(key(t, addr))
    if q is None:
        return 0
    woken = 0
    for waiter in list(q.waiters):
        if woken >= count:
            break
        if waiter.futex_pi or waiter.futex_requeue:
            raise SyscallError(errno.EINVAL, "FUTEX_WAKE of a futex with PI waiters")
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
    if isinstance(state, tuple) and state[0] == QUEUED:
        _, deadline_ns, k = state
    else:
        if bitset == 0:
            raise SyscallError(errno.EINVAL)
        k = key(t, addr)
        if word(t, addr) != val:
            raise SyscallError(errno.EAGAIN)
    t.set_restart(NR.futex, (QUEUED, deadline_ns, k))
    if deadline_ns is not None and t.kernel.timekeeper.monotonic_ns() >= deadline_ns:
        raise SyscallError(errno.ETIMEDOUT)
    t.futex_bitset = bitset
    t.futex_pi = t.futex_requeue = 0
    raise WouldBlock(queue(t, k), deadline=deadline_ns)


def lock_pi(t, addr: int, deadline_ns: int | None, trylock: bool) -> int:
    """FUTEX_LOCK_PI(2) and FUTEX_TRYLOCK_PI: take the lock at `addr` (a free word becomes
    the caller's TID, an owner-died mark kept), or park until an unlock hands it over;
    EDEADLK if the caller holds it, ESRCH if its owner does not exist, EAGAIN for a held
    lock with `trylock`, ETIMEDOUT at the deadline (sandbox monotonic ns)."""
    state = t.restart_value(NR.futex)
    if state == HANDED:
        return 0
    if state is not None:
        deadline_ns = state
    if _take(t, addr, key(t, addr), trylock):
        return 0
    if deadline_ns is not None:
        t.set_restart(NR.futex, deadline_ns)
    return _wait_pi(t, addr, deadline_ns)


def _take(t, addr: int, k: int, trylock: bool = False) -> bool:
    """Take the PI lock at `addr` (futex `k`) for `t` if it is free; else mark that it has
    waiters and say no (EDEADLK, ESRCH, EAGAIN for `trylock` as lock_pi)."""
    while True:
        value = word(t, addr)
        owner = value & FUTEX_TID_MASK
        if owner == 0:
            new = (value & FUTEX_OWNER_DIED) | t.tid | (FUTEX_WAITERS if _pi_waiters(t, k) else 0)
            if t.mm.cmpxchg32(addr, value, new) == value:
                return True
            continue
        if owner == t.tid:
            raise SyscallError(errno.EDEADLK)
        if owner not in t.kernel.tasks.pidns.tasks:
            raise SyscallError(errno.ESRCH)
        if trylock:
            raise SyscallError(errno.EAGAIN)
        if value & FUTEX_WAITERS or t.mm.cmpxchg32(addr, value, value | FUTEX_WAITERS) == value:
            return False


def _wait_pi(t, addr: int, deadline_ns: int | None) -> int:
    """Park among the PI lock's waiters until an unlock hands it over (ETIMEDOUT past the
    deadline)."""
    if deadline_ns is not None and t.kernel.timekeeper.monotonic_ns() >= deadline_ns:
        raise SyscallError(errno.ETIMEDOUT)
    t.futex_pi, t.futex_requeue = addr, 0
    raise WouldBlock(queue(t, key(t, addr)), deadline=deadline_ns)


def wait_requeue_pi(t, addr: int, val: int, deadline_ns: int | None, addr2: int) -> int:
    """FUTEX_WAIT_REQUEUE_PI: wait on the futex at `addr` (EAGAIN unless its word is
    `val`) until FUTEX_CMP_REQUEUE_PI moves the caller to the PI futex at `addr2`; return
    0 once it owns that lock."""
    state = t.restart_value(NR.futex)
    if state == HANDED:
        return 0
    if isinstance(state, tuple) and state[0] == REQUEUED:
        if _take(t, addr2, key(t, addr2)):
            return 0
        return _wait_pi(t, addr2, state[1])
    if state is not None:
        deadline_ns = state
    if key(t, addr) == key(t, addr2):
        raise SyscallError(errno.EINVAL)
    if word(t, addr) != val:
        raise SyscallError(errno.EAGAIN)
    if deadline_ns is not None:
        t.set_restart(NR.futex, deadline_ns)
        if t.kernel.timekeeper.monotonic_ns() >= deadline_ns:
            raise SyscallError(errno.ETIMEDOUT)
    t.futex_bitset, t.futex_pi, t.futex_requeue = BITSET_MATCH_ANY, 0, addr2
    raise WouldBlock(queue(t, key(t, addr)), deadline=deadline_ns)


def cmp_requeue_pi(t, addr: int, addr2: int, nr_wake: int, nr_requeue: int, expected: int) -> int:
    """FUTEX_CMP_REQUEUE_PI: if the word at `addr` is still `expected` (else EAGAIN), give
    the PI lock at `addr2` to the longest waiter if it is free, and move up to
    `nr_requeue` others among the lock's waiters. Returns how many were woken or moved.
    Every waiter must be a FUTEX_WAIT_REQUEUE_PI one for `addr2` (else EINVAL)."""
    k, k2 = key(t, addr), key(t, addr2)
    if nr_wake != 1 or nr_requeue < 0 or k == k2:
        raise SyscallError(errno.EINVAL)
    if word(t, addr) != expected:
        raise SyscallError(errno.EAGAIN)
    src = t.kernel.futexes.get(k)
    waiters = list(src.waiters) if src is not None else []
    if any(not w.futex_requeue or key(w, w.futex_requeue) != k2 for w in waiters):
        raise SyscallError(errno.EINVAL)
    done = 0
    if waiters:
        top = waiters[0]
        value = word(t, addr2)
        if value & FUTEX_TID_MASK == 0 and t.mm.cmpxchg32(
                addr2, value, (value & FUTEX_OWNER_DIED) | top.tid | (FUTEX_WAITERS if len(waiters) > 1 else 0)) \
                == value:
            src.waiters.remove(top)
            top.set_restart(NR.futex, HANDED)
            t.kernel.wake(top)
            waiters, done = waiters[1:], 1
    moving = waiters[:nr_requeue]
    if moving:
        while True:
            value = word(t, addr2)
            if value & FUTEX_WAITERS or t.mm.cmpxchg32(addr2, value, value | FUTEX_WAITERS) == value:
                break
        dst = queue(t, k2)
        for w in moving:
            src.waiters.remove(w)
            dst.waiters.append(w)
            w.waiting = tuple(dst if q is src else q for q in w.waiting)
            deadline = w.restart_value(NR.futex)
            w.set_restart(NR.futex, (REQUEUED, deadline if isinstance(deadline, int) else None))
            w.futex_pi, w.futex_requeue = w.futex_requeue, 0
    return done + len(moving)


def unlock_pi(t, addr: int) -> int:
    """FUTEX_UNLOCK_PI: hand the caller's lock at `addr` to its longest waiter, or free
    it; EPERM unless the caller owns it."""
    k = key(t, addr)
    while True:
        value = word(t, addr)
        if value & FUTEX_TID_MASK != t.tid:
            raise SyscallError(errno.EPERM)
        if _hand_over(t, k, addr, value, FUTEX_WAITERS):
            return 0
        if t.mm.cmpxchg32(addr, value, 0) == value:
            return 0


def _pi_waiters(t, k: int) -> list:
    q = t.kernel.futexes.get(k)
    return [w for w in q.waiters if w.futex_pi] if q is not None else []


def _hand_over(t, k: int, addr: int, value: int, marks: int) -> bool:
    """Make the longest FUTEX_LOCK_PI waiter of futex `k` (word `value` at `addr` in `t`'s
    memory) the owner, the word given `marks` besides its TID; False if none waits or
    the word changed under us."""
    waiters = _pi_waiters(t, k)
    if not waiters:
        return False
    heir = waiters[0]
    if t.mm.cmpxchg32(addr, value, marks | heir.tid) != value:
        return False
    t.kernel.futexes[k].waiters.remove(heir)
    heir.set_restart(NR.futex, HANDED)
    t.kernel.wake(heir)
    return True


def exit_pi_locks(t) -> None:
    """At a thread's exit, hand each PI lock it still holds and another thread waits for
    to that waiter, marked FUTEX_OWNER_DIED, as Linux's exit_pi_state_list does (a robust
    one is already marked, its owner cleared)."""
    for k, q in list(t.kernel.futexes.items()):
        waiter = next((w for w in q.waiters if w.futex_pi), None)
        if waiter is None:
            continue
        with contextlib.suppress(SyscallError):
            value = word(waiter, waiter.futex_pi)
            if value & FUTEX_TID_MASK in (t.tid, 0):
                _hand_over(waiter, k, waiter.futex_pi, value, FUTEX_WAITERS | FUTEX_OWNER_DIED)


ROBUST_LIST_LIMIT = 2048


def exit_robust_list(t) -> None:
    """At a thread's exit, mark the robust futexes it still holds as owner-died and wake a
    waiter of each (robust_futex(7)), as Linux's exit_robust_list does; then pass on the
    PI locks it held."""
    head, _ = t.robust_list
    try:
        if head:
            _walk_robust_list(t, head)
    except SyscallError:
        pass  # a broken list in application memory: nothing more to do, as on Linux
    exit_pi_locks(t)


def _walk_robust_list(t, head: int) -> None:
    entry, offset, pending = struct.unpack("<QqQ", t.mm.read(head, 24))
    seen = 0
    while entry & ~1 != head and entry & ~1 and seen < ROBUST_LIST_LIMIT:
        (following,) = struct.unpack("<Q", t.mm.read(entry & ~1, 8))
        if entry != pending:
            _owner_died(t, (entry & ~1) + offset, bool(entry & 1))
        entry = following
        seen += 1
    if pending & ~1:
        _owner_died(t, (pending & ~1) + offset, bool(pending & 1))


def _owner_died(t, addr: int, pi: bool) -> None:
    """Mark the robust futex at `addr` owner-died if `t` holds it; wake one waiter of a
    plain one (a PI one's waiter is handed the lock by exit_pi_locks)."""
    while True:
        value = word(t, addr)
        if value & FUTEX_TID_MASK != t.tid:
            return
        if t.mm.cmpxchg32(addr, value, (value & FUTEX_WAITERS) | FUTEX_OWNER_DIED) == value:
            break
    if value & FUTEX_WAITERS and not pi:
        wake(t, addr, 1)
