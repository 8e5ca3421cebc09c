"""The control protocol: named operations between the CLI and a sandbox process.

Each connection carries one request and one reply (an attached exec: then one more
message, its exit), each framed as a u32 length and a CBOR map, fds passed beside it with
SCM_RIGHTS. A request is {"op": NAME, field: value, ...}; a reply is {"ok": true, field:
value, ...} or {"ok": false, "error": "..."}. OPERATIONS names every operation with the
fields of its request and of its reply, as runsc's controller names each of its calls;
both ends check a message against it. The warm pool's socket (snapbox.runtime.warm) uses
the same framing for its own two requests.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2

from snapbox.errors import Cancelled, SnapboxError

_LEN = struct.Struct("<I")
MAX_MESSAGE = 1 << 20


class ControlError(SnapboxError):
    """The sandbox process could not be reached or refused the request."""


@dataclass(frozen=True)
class Operation:
    """One operation: what its request may hold and what its reply holds (field -> type;
    request fields are optional), and the fds that travel with the request."""

    name: str
    request: dict[str, type] = field(default_factory=dict)
    reply: dict[str, type] = field(default_factory=dict)
    fds: str = ""  # the fds passed with the request, in order
    doc: str = ""


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("start", doc="Start the created (or restored) program: its clock, timers and tasks."),
    Operation("pause", doc="Stop every task where it is."),
    Operation("resume", doc="Let every paused task go on."),
    Operation("kill", {"signal": int, "pid": int, "all": bool, "foreground": bool},
              doc="Send `signal` to init, to process `pid`, to every process (`all`), or to the "
                  "terminal's foreground process group (`foreground`)."),
    Operation("checkpoint", {"path": str, "image_fd": int, "progress_fd": int, "compress": bool,
                             "store_file_pages": bool, "leave_running": bool, "pre_dump": bool,
                             "parent_path": str, "handoff": bool}, {"summary": dict},
              fds="image_fd and progress_fd are indexes into them",
              doc="Write an image to `path` (absolute), or to the passed fd when `path` is \"-\"; "
                  "unless `leave_running` or `pre_dump` (memory only, the program running on), the "
                  "program is stopped for good before the reply; with `parent_path` (the sandbox's "
                  "last pre-dump), only the pages changed since; with `handoff` (and `leave_running`, "
                  "paused: the image is to run elsewhere), host connections are let go in repair mode "
                  "and taken back if the sandbox resumes."),
    Operation("ps", reply={"processes": list}, doc="Every process: pid, ppid, state, command."),
    Operation("stats", reply={"stats": dict}, doc="Memory (usage, allocated, charged, limit) and pids."),
    Operation("exec", {"args": list, "env": list, "cwd": str, "user": list, "wait": bool}, {"pid": int},
              fds="stdin, stdout, stderr",
              doc="Start another process on the passed stdio; with `wait`, a second reply "
                  "{\"exit\": wait status} comes when it ends."),
    Operation("adopt", {"dir": str, "hostname": str, "start": bool}, fds="stdin, stdout, stderr",
              doc="A restored sandbox not started yet (a clone taken from its pool) has moved to "
                  "`dir`: it runs on the passed stdio, as `hostname`; with `start`, it starts "
                  "too (one round trip instead of two)."),
)}


def check(op_name: object, msg: dict[str, Any], reply: bool = False) -> Operation:
    """The operation `op_name`, after checking that `msg` (its request, or its reply) holds
    only the fields it names, with their types; ControlError otherwise."""
    op = OPERATIONS.get(op_name) if isinstance(op_name, str) else None
    if op is None:
        raise ControlError(f"unknown control operation {op_name!r}")
    shape = op.reply if reply else op.request
    for key, value in msg.items():
        if key in ("op", "ok", "error") or value is None:
            continue
        want = shape.get(key)
        if want is None:
            raise ControlError(f"{op.name} {'reply' if reply else 'request'} has an unknown field {key!r}")
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ControlError(f"{op.name} field {key!r} must be {want.__name__}, not {type(value).__name__}")
    return op


def exit_code(status: int) -> int:
    """A wait status (what exec's exit and exit.json carry) as a shell exit code: the code,
    or 128+N when killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


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
    if op in OPERATIONS:  # the warm pool's requests are its own
        check(op, args)
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
        raise (Cancelled if reply.get("cancelled") else SnapboxError)(reply.get("error") or f"{op} failed")
    if op in OPERATIONS:
        check(op, reply, reply=True)
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
