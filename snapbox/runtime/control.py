"""The control socket: CBOR messages between the CLI and a sandbox process.

Each connection carries one request and one reply, each framed as a u32 length and a CBOR
map. Replies are {"ok": true, ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

import cbor2

from snapbox.errors import SnapboxError

_LEN = struct.Struct("<I")
MAX_MESSAGE = 1 << 20


class ControlError(SnapboxError):
    """The sandbox process could not be reached or refused the request."""


def send_message(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    blob = cbor2.dumps(msg)
    data = _LEN.pack(len(blob)) + blob
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    else:
        sock.sendall(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one framed message, and any fds passed with it."""
    fds: list[int] = []
    head = b""
    while len(head) < _LEN.size:
        data, anc, _, _ = sock.recvmsg(_LEN.size - len(head), socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4]))
        if not data:
            raise ControlError("control connection closed")
        head += data
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise ControlError("control message too large")
    body = bytearray()
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise ControlError("control connection closed")
        body += chunk
    msg = cbor2.loads(bytes(body))
    if not isinstance(msg, dict):
        raise ControlError("malformed control message")
    return msg, fds


def open_call(socket_path: str, op: str, timeout: float | None = 30.0, fds: list[int] | None = None,
              **args: Any) -> socket.socket:
    """Connect to the sandbox at `socket_path` and send one request; returns the socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        _connect(sock, socket_path)
        send_message(sock, {"op": op, **args}, fds)
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot reach the sandbox ({e.strerror})") from None
    return sock


def read_reply(sock: socket.socket, op: str) -> dict[str, Any]:
    """The sandbox's reply to request `op`; raises if it refused."""
    try:
        reply, _ = recv_message(sock)
    except socket.timeout:
        raise ControlError(f"the sandbox did not answer {op} in time") from None
    except OSError as e:
        raise ControlError(f"lost the sandbox during {op} ({e.strerror})") from None
    if not reply.get("ok"):
        raise SnapboxError(reply.get("error") or f"{op} failed")
    return reply


def call(socket_path: str, op: str, timeout: float | None = 30.0, fds: list[int] | None = None,
         **args: Any) -> dict[str, Any]:
    """Send one request to the sandbox at `socket_path` and return its reply; raise on refusal."""
    with open_call(socket_path, op, timeout, fds, **args) as sock:
        return read_reply(sock, op)


def _connect(sock: socket.socket, path: str) -> None:
    # sun_path holds 107 bytes; a longer path is reached through its directory's fd.
    if len(os.fsencode(path)) < 100:
        sock.connect(path)
        return
    dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
    finally:
        os.close(dirfd)


def listen(path: str) -> socket.socket:
    """Bind and listen on the control socket of a sandbox."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if len(os.fsencode(path)) < 100:
        sock.bind(path)
    else:
        dirfd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
        try:
            sock.bind(f"/proc/self/fd/{dirfd}/{os.path.basename(path)}")
        finally:
            os.close(dirfd)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock
