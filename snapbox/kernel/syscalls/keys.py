"""keyctl(2) of keyrings: KEYCTL_GET_KEYRING_ID, KEYCTL_JOIN_SESSION_KEYRING,
KEYCTL_DESCRIBE and KEYCTL_SETPERM. The keyrings themselves: snapbox.kernel.keys.
add_key and request_key (keys that hold data) are not supported: ENOSYS, as are the
other keyctl operations."""

from __future__ import annotations

import errno
import logging

from snapbox.kernel.creds import CAP_SYS_ADMIN, OVERFLOW_ID, capable, shown
from snapbox.kernel.errors import SyscallError
from snapbox.kernel.keys import (KEY_GRP_ALL, KEY_OTH_ALL, KEY_POS_ALL, KEY_USR_ALL, NAMED_SESSION_PERM, NEED_SETATTR,
                                 NEED_VIEW, NO_GID, SESSION_PERM, Key, allowed)
from snapbox.kernel.syscalls import NR, i32, syscall

log = logging.getLogger("snapbox.kernel")

KEYCTL_GET_KEYRING_ID, KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_SETPERM, KEYCTL_DESCRIBE = 0, 1, 5, 6
KEYCTL_LAST = 33  # the highest operation Linux 6.18 knows (KEYCTL_WATCH_KEY is 32; 33 reserved)
KEY_SPEC_THREAD_KEYRING, KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING = -1, -2, -3
KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -4, -5
KEY_MAX_DESC_SIZE = 4096
_logged: set[int] = set()


def _held(t) -> list:
    """The credentials of every live thread: what keeps a keyring alive."""
    return [task.cred for tg in t.kernel.tasks.pidns.groups.values() for task in tg.tasks]


def _session(t) -> Key:
    """The caller's session keyring: its own, else its user's."""
    return t.cred.session_keyring or t.kernel.keys.user_keyring(t.cred, True, _held(t))


def _lookup(t, ident: int, need: int) -> Key:
    """lookup_user_key: the key `ident` (a serial or a KEY_SPEC_* keyring) names, which the
    caller must be allowed `need` on; the keyrings named by KEY_SPEC_* ids, and its session
    keyring by serial, it possesses."""
    keys = t.kernel.keys
    if ident == KEY_SPEC_SESSION_KEYRING:
        key, possessed = _session(t), True
    elif ident in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        key, possessed = keys.user_keyring(t.cred, ident == KEY_SPEC_USER_SESSION_KEYRING, _held(t)), True
    elif ident in (KEY_SPEC_THREAD_KEYRING, KEY_SPEC_PROCESS_KEYRING):
        if ident not in _logged:
            _logged.add(ident)
            log.warning("keyctl: thread and process keyrings are not supported (ENOKEY)")
        raise SyscallError(errno.ENOKEY)
    elif ident > 0:
        key = keys.by_serial.get(ident)
        if key is None:
            raise SyscallError(errno.ENOKEY)
        possessed = key is _session(t)
    else:
        raise SyscallError(errno.EINVAL)
    if need and not allowed(key, t.cred, need, possessed):
        raise SyscallError(errno.EACCES)
    return key


@syscall(NR.keyctl)
def keyctl(t, operation, arg2, arg3, arg4, arg5):
    operation = i32(operation)
    if operation == KEYCTL_GET_KEYRING_ID:
        return _lookup(t, i32(arg2), 0).serial
    if operation == KEYCTL_JOIN_SESSION_KEYRING:
        return _join(t, arg2)
    if operation == KEYCTL_DESCRIBE:
        key = _lookup(t, i32(arg2), NEED_VIEW)
        ns = t.cred.user_ns
        gid = OVERFLOW_ID if key.gid == NO_GID else shown(ns, key.gid, "gid")  # from_kgid_munged of none
        text = key.describe(shown(ns, key.uid, "uid"), gid)
        if arg3 and arg4 >= len(text):
            t.mm.write(arg3, text)
        return len(text)
    if operation == KEYCTL_SETPERM:
        perm = arg3 & 0xFFFFFFFF
        if perm & ~(KEY_POS_ALL | KEY_USR_ALL | KEY_GRP_ALL | KEY_OTH_ALL):
            raise SyscallError(errno.EINVAL)
        key = _lookup(t, i32(arg2), NEED_SETATTR)
        if not (capable(t.tg, CAP_SYS_ADMIN) or key.uid == t.cred.fsuid):
            raise SyscallError(errno.EACCES)
        key.perm = perm
        return 0
    if not 0 <= operation <= KEYCTL_LAST:
        raise SyscallError(errno.EOPNOTSUPP)
    if operation not in _logged:
        _logged.add(operation)
        log.warning("keyctl operation %d: not supported (ENOSYS)", operation)
    raise SyscallError(errno.ENOSYS)


def _join(t, name_addr: int) -> int:
    """KEYCTL_JOIN_SESSION_KEYRING: a new anonymous session keyring ("_ses") for the
    calling thread, or the named one it may search (made if there is none); 0 if it is in
    that one already."""
    keys = t.kernel.keys
    if not name_addr:
        key = keys.new_keyring("_ses", t.cred, SESSION_PERM, _held(t))
    else:
        raw = t.mm.read_cstring(name_addr, KEY_MAX_DESC_SIZE)
        if not raw:
            raise SyscallError(errno.EINVAL)
        name = raw.decode("utf-8", "surrogateescape")
        key = keys.find_named(name, t.cred)
        if key is t.cred.session_keyring and key is not None:
            return 0
        if key is None:
            key = keys.new_keyring(name, t.cred, NAMED_SESSION_PERM, _held(t))
    t.cred.session_keyring = key
    return key.serial
