"""Keyrings (keyrings(7)): the session keyrings of a sandbox's threads, and its users'.

A thread's credentials name its session keyring (Creds.session_keyring), which clone and
fork hand on and keyctl(KEYCTL_JOIN_SESSION_KEYRING) replaces, for that thread alone;
without one, a thread uses its user's session keyring ("_uid_ses.UID"). A named session
keyring can be joined by another thread that may search it. Each key carries its owner
and Linux's 32-bit permission mask (possessor, user, group, other), checked as
key_task_permission checks it; keys count against their owner's quota (kernel.keys
maxkeys). A keyring no credentials refer to any more is gone, as Linux's garbage
collector takes it. Keys other than keyrings (add_key, request_key) are not supported.
"""

from __future__ import annotations

import errno
import secrets
from dataclasses import dataclass, field

from snapbox.kernel.creds import Creds
from snapbox.kernel.errors import SyscallError
from snapbox.state import savable

KEY_POS_VIEW, KEY_POS_READ, KEY_POS_WRITE, KEY_POS_SEARCH, KEY_POS_LINK, KEY_POS_SETATTR = (
    0x01000000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000)
KEY_POS_ALL, KEY_USR_ALL, KEY_GRP_ALL, KEY_OTH_ALL = 0x3F000000, 0x003F0000, 0x00003F00, 0x0000003F
KEY_USR_VIEW, KEY_USR_READ, KEY_USR_LINK = 0x00010000, 0x00020000, 0x00100000
NEED_VIEW, NEED_READ, NEED_WRITE, NEED_SEARCH, NEED_LINK, NEED_SETATTR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
SESSION_PERM = KEY_POS_ALL | KEY_USR_VIEW | KEY_USR_READ  # join_session_keyring's anonymous "_ses"
NAMED_SESSION_PERM = SESSION_PERM | KEY_USR_LINK  # and a named one's
USER_PERM = (KEY_POS_ALL & ~KEY_POS_SETATTR) | KEY_USR_ALL  # look_up_user_keyrings'
MAXKEYS, ROOT_MAXKEYS = 200, 1000000  # kernel.keys.maxkeys and root_maxkeys' defaults
NO_GID = -1  # a user's own keyrings belong to no group (INVALID_GID: shown as the overflow gid)


@savable
@dataclass(eq=False)
class Key:
    """One key (every one here a keyring): its serial number, description and owner (kernel
    ids), and its permission mask."""

    serial: int
    description: str
    uid: int
    gid: int
    perm: int
    kind: str = "keyring"

    def describe(self, shown_uid: int, shown_gid: int) -> bytes:
        """KEYCTL_DESCRIBE's "type;uid;gid;perm;description" and its NUL."""
        return f"{self.kind};{shown_uid};{shown_gid};{self.perm:08x};{self.description}".encode() + b"\0"


@savable
@dataclass(eq=False)
class Keys:
    """A sandbox's keys by serial, its users' own keyrings, and the quota settings."""

    by_serial: dict = field(default_factory=dict)  # serial -> Key
    user_session: dict = field(default_factory=dict)  # kernel uid -> its "_uid_ses.UID" Key
    user: dict = field(default_factory=dict)  # kernel uid -> its "_uid.UID" Key
    maxkeys: int = MAXKEYS
    root_maxkeys: int = ROOT_MAXKEYS

    def new_keyring(self, description: str, cred: Creds, perm: int, held: list[Creds], gid: int | None = None) -> Key:
        """A new keyring owned by `cred`'s fsuid and fsgid (or `gid`); EDQUOT past its
        owner's quota. Keyrings that no credentials of `held` (every live thread's) hold
        go first."""
        self.collect(held)
        quota = self.root_maxkeys if cred.fsuid == 0 else self.maxkeys
        if sum(k.uid == cred.fsuid for k in self.by_serial.values()) >= quota:
            raise SyscallError(errno.EDQUOT)
        serial = secrets.randbelow(0x7FFFFFFF - 3) + 3
        while serial in self.by_serial:
            serial = secrets.randbelow(0x7FFFFFFF - 3) + 3
        key = Key(serial, description, cred.fsuid, cred.fsgid if gid is None else gid, perm)
        self.by_serial[serial] = key
        return key

    def collect(self, held: list[Creds]) -> None:
        """Forget the session keyrings no thread holds (users' own keyrings stay)."""
        live = {id(k) for k in (*self.user_session.values(), *self.user.values())}
        live |= {id(c.session_keyring) for c in held if c.session_keyring is not None}
        self.by_serial = {s: k for s, k in self.by_serial.items() if id(k) in live}

    def user_keyring(self, cred: Creds, session: bool, held: list[Creds]) -> Key:
        """The user's session keyring ("_uid_ses.UID") or user keyring ("_uid.UID"), made at
        first use, in no group."""
        table = self.user_session if session else self.user
        key = table.get(cred.fsuid)
        if key is None:
            name = f"_uid_ses.{cred.fsuid}" if session else f"_uid.{cred.fsuid}"
            key = table[cred.fsuid] = self.new_keyring(name, cred, USER_PERM, held, gid=NO_GID)
        return key

    def find_named(self, name: str, cred: Creds) -> Key | None:
        """find_keyring_by_name: a keyring called `name` the caller may search without
        possessing it (its user, group or other bits), the oldest first."""
        for key in self.by_serial.values():
            if key.description == name and key not in self.user_session.values() and \
                    key not in self.user.values() and allowed(key, cred, NEED_SEARCH, possessed=False):
                return key
        return None


def allowed(key: Key, cred: Creds, need: int, possessed: bool) -> bool:
    """key_task_permission: the owner's bits for its owner, else the group's for a member
    of its group (if it grants the group anything), else other's; with a possessor's
    added for a key the caller possesses. No capability overrides them."""
    if key.uid == cred.fsuid:
        perm = key.perm >> 16
    elif key.perm & KEY_GRP_ALL and (key.gid == cred.fsgid or key.gid in cred.groups):
        perm = key.perm >> 8
    else:
        perm = key.perm
    if possessed:
        perm |= key.perm >> 24
    return perm & need & 0x3F == need
