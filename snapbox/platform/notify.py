"""Seccomp user notifications: the fast path of the application's syscalls.

A stub's filter answers most of the application's syscalls with SECCOMP_RET_USER_NOTIF:
the host kernel parks the calling thread, skips the call, and queues a notification on a
listener fd that this process holds. The sentry receives it (its number and six
arguments), runs the handler, and sends the result back; the thread returns from the
syscall with it. No ptrace stop, no register traffic: two ioctls per call. The syscalls
that must read or change registers or need the thread stopped (exec, clone, signal
return, memory mapping, ...) go to ptrace instead (SECCOMP_RET_TRACE).

A thread waiting for an answer is interruptible: PTRACE_INTERRUPT takes it out of the
wait (the notification is withdrawn, the syscall reports -ERESTARTSYS) into an ordinary
ptrace stop whose registers show the syscall at entry, so pausing and checkpointing treat
it as a task stopped in a syscall. Stubs block every host signal, so nothing else
interrupts such a wait; a thread can only be killed out of it.

The listener is made with the filter (SECCOMP_FILTER_FLAG_NEW_LISTENER) and shared by the
stubs forked from that stub, which inherit the filter. With SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
(Linux 6.6) each answer wakes the thread on the sentry's own CPU, and each notification
wakes the sentry on the thread's: the pair moves together instead of bouncing between CPUs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct

# linux/seccomp.h: SECCOMP_IOWR(0, struct seccomp_notif), SECCOMP_IOWR(1, struct
# seccomp_notif_resp), SECCOMP_IOW(4, __u64)
_IOCTL_NOTIF_RECV = 0xC0502100
_IOCTL_NOTIF_SEND = 0xC0182101
_IOCTL_NOTIF_SET_FLAGS = 0x40082104
_USER_NOTIF_FD_SYNC_WAKE_UP = 1
# struct seccomp_notif: id, pid, flags, then struct seccomp_data (nr, arch, ip, args[6])
_NOTIF = struct.Struct("<QIIiIQ6Q")
_EMPTY = bytes(_NOTIF.size)  # the kernel wants the buffer zeroed
_RESP = struct.Struct("<QqiI")  # id, val, error, flags


class Listener:
    """A seccomp listener fd: notifications from every stub sharing one filter."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            fcntl.ioctl(fd, _IOCTL_NOTIF_SET_FLAGS, _USER_NOTIF_FD_SYNC_WAKE_UP)
        except OSError:
            pass  # before Linux 6.6: correct, only slower when the two are on different CPUs

    def receive(self) -> tuple | None:
        """The next notification as (id, host tid, nr, arch, instruction pointer, args), or None if there is none
        after all (the thread was interrupted or killed since it was queued). Call it only
        when the fd is readable: it blocks otherwise."""
        try:
            data = fcntl.ioctl(self.fd, _IOCTL_NOTIF_RECV, _EMPTY)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        nid, tid, _, nr, arch, ip, *args = _NOTIF.unpack(data)
        return nid, tid, nr, arch, ip, args

    def answer(self, nid: int, value: int) -> bool:
        """Make notification `nid`'s syscall return `value` (-errno for an error). False if
        the thread is no longer waiting for it (killed, or interrupted)."""
        try:
            fcntl.ioctl(self.fd, _IOCTL_NOTIF_SEND, _RESP.pack(nid, value, 0, 0))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
        return True

    def hung_up(self) -> bool:
        """No process uses the filter any more: nothing will ever be notified."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return any(ev & select.POLLHUP for _, ev in p.poll(0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
