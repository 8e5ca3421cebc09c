"""futex(2): WAIT, WAKE, REQUEUE, CMP_REQUEUE, WAKE_OP, WAIT_BITSET, WAKE_BITSET,
LOCK_PI, LOCK_PI2, TRYLOCK_PI, UNLOCK_PI, WAIT_REQUEUE_PI, CMP_REQUEUE_PI; the futex table
itself is snapbox.kernel.futex."""

from __future__ import annotations

import errno
import struct

from snapbox.kernel.errors import SyscallError
from snapbox.kernel.futex import BITSET_MATCH_ANY, QUEUED, cmp_requeue_pi, key, lock_pi, queue, unlock_pi, wait, \
    wait_requeue_pi, wake, word
from snapbox.kernel.syscalls import NR, i32, syscall
from snapbox.kernel.syscalls.time import read_timespec

FUTEX_WAIT, FUTEX_WAKE, FUTEX_FD, FUTEX_REQUEUE, FUTEX_CMP_REQUEUE, FUTEX_WAKE_OP = 0, 1, 2, 3, 4, 5
FUTEX_LOCK_PI, FUTEX_UNLOCK_PI, FUTEX_TRYLOCK_PI = 6, 7, 8
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10
FUTEX_WAIT_REQUEUE_PI, FUTEX_CMP_REQUEUE_PI, FUTEX_LOCK_PI2 = 11, 12, 13
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
# The commands FUTEX_CLOCK_REALTIME may be given to (others: ENOSYS, as on Linux).
CLOCK_CHOOSING = frozenset({FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_LOCK_PI2, FUTEX_WAIT_REQUEUE_PI})


@syscall(NR.futex)
def futex(t, uaddr, op, val, timeout, uaddr2, val3):
    cmd = i32(op) & ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
    private = bool(i32(op) & FUTEX_PRIVATE_FLAG)
    val = val & 0xFFFFFFFF
    tk = t.kernel.timekeeper
    if i32(op) & FUTEX_CLOCK_REALTIME and cmd not in CLOCK_CHOOSING:
        raise SyscallError(errno.ENOSYS)
    if cmd in (FUTEX_LOCK_PI, FUTEX_LOCK_PI2, FUTEX_TRYLOCK_PI):
        deadline = None
        if timeout and cmd != FUTEX_TRYLOCK_PI and t.restart_value(NR.futex) is None:
            when = read_timespec(t, timeout)  # absolute: CLOCK_REALTIME for LOCK_PI
            realtime = cmd == FUTEX_LOCK_PI or i32(op) & FUTEX_CLOCK_REALTIME
            deadline = tk.monotonic_ns() + (when - tk.realtime_ns()) if realtime else when
        return lock_pi(t, uaddr, deadline, cmd == FUTEX_TRYLOCK_PI)
    if cmd == FUTEX_UNLOCK_PI:
        return unlock_pi(t, uaddr)
    if cmd == FUTEX_WAIT_REQUEUE_PI:
        deadline = None
        if timeout and t.restart_value(NR.futex) is None:
            when = read_timespec(t, timeout)  # absolute, as FUTEX_WAIT_BITSET's
            deadline = tk.monotonic_ns() + (when - tk.realtime_ns()) if i32(op) & FUTEX_CLOCK_REALTIME else when
        return wait_requeue_pi(t, uaddr, val, deadline, uaddr2)
    if cmd == FUTEX_CMP_REQUEUE_PI:
        return cmp_requeue_pi(t, uaddr, uaddr2, i32(val), i32(timeout & 0xFFFFFFFF), val3 & 0xFFFFFFFF)
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
        return wait(t, uaddr, val, deadline, BITSET_MATCH_ANY if cmd == FUTEX_WAIT else val3 & 0xFFFFFFFF)
    if cmd == FUTEX_WAKE:
        return wake(t, uaddr, max(i32(val), 1), private=private)  # Linux wakes one even for 0 or fewer
    if cmd == FUTEX_WAKE_BITSET:
        if val3 & 0xFFFFFFFF == 0:
            raise SyscallError(errno.EINVAL)
        return wake(t, uaddr, max(i32(val), 1), val3 & 0xFFFFFFFF, private)
    if cmd in (FUTEX_REQUEUE, FUTEX_CMP_REQUEUE):
        if cmd == FUTEX_CMP_REQUEUE and word(t, uaddr) != val3 & 0xFFFFFFFF:
            raise SyscallError(errno.EAGAIN)
        woken = wake(t, uaddr, i32(val))
        limit = timeout & 0x7FFFFFFF  # val2 rides in the timeout argument
        src = t.kernel.futexes.get(key(t, uaddr))
        moved = 0
        if src is not None:
            k2 = key(t, uaddr2)
            dst = queue(t, k2)
            while src.waiters and moved < limit:
                waiter = src.waiters.pop(0)
                dst.waiters.append(waiter)
                state = waiter.restart_value(NR.futex)
                if isinstance(state, tuple) and state[0] == QUEUED:
                    waiter.set_restart(NR.futex, (QUEUED, state[1], k2))  # it waits there now
                moved += 1
            for waiter in dst.waiters:
                waiter.waiting = tuple(dst if q is src else q for q in waiter.waiting)
        return woken + moved
    if cmd == FUTEX_WAKE_OP:
        return _wake_op(t, uaddr, i32(val), timeout & 0x7FFFFFFF, uaddr2, val3 & 0xFFFFFFFF, private)
    raise SyscallError(errno.ENOSYS, f"futex op {cmd} is not supported")


def _sext12(x: int) -> int:
    return x - 0x1000 if x & 0x800 else x


def _wake_op(t, uaddr: int, nr_wake: int, nr_wake2: int, uaddr2: int, encoded: int, private: bool) -> int:
    """FUTEX_WAKE_OP: update *uaddr2, wake on uaddr, and on uaddr2 if the old value passes."""
    op, cmp = (encoded >> 28) & 0xF, (encoded >> 24) & 0xF
    oparg, cmparg = _sext12((encoded >> 12) & 0xFFF), _sext12(encoded & 0xFFF)
    if op & 8:  # FUTEX_OP_OPARG_SHIFT
        if not 0 <= oparg <= 31:
            raise SyscallError(errno.EINVAL)
        oparg = 1 << oparg
    op &= 7
    old = word(t, uaddr2)
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
    woken = wake(t, uaddr, max(nr_wake, 1), private=private)  # as FUTEX_WAKE: one at least
    signed_old = old - (1 << 32) if old & 0x80000000 else old
    tests = (signed_old == cmparg, signed_old != cmparg, signed_old < cmparg, signed_old <= cmparg,
             signed_old > cmparg, signed_old >= cmparg)
    if cmp >= len(tests):
        raise SyscallError(errno.ENOSYS)
    if tests[cmp]:
        woken += wake(t, uaddr2, max(nr_wake2, 1), private=private)
    return woken
