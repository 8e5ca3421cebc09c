"""The warm pool: a process that has imported the whole sandbox and forks sandbox processes.

A sandbox process started from scratch spends most of its start-up in the Python
interpreter and in importing the kernel. With `snapbox warm` running for a --root, `run`,
`create`, `do` and `restore` under that root ask it instead: it forks, and the child takes
the caller's stdio, working directory, umask and environment, and runs exactly what
`python -S -m snapbox.runtime.boot` would. The pool reaps its sandboxes as they end.

It also runs whole commands: the native front end (snapbox/front.c, installed as the
`snapbox` command by scripts/setup) sends a command's arguments, stdio, working directory,
umask and environment, and the pool forks a worker that runs the command line exactly as
`python -m snapbox` would, without a Python interpreter to start and a CLI to import. The
worker first answers {"ok": true, "pid": PID} (the front end passes the signals it gets on
to that pid) and at the end {"exit": CODE}.

`snapbox --root R warm --serve` (the command line handing itself in to serve()) serves
until SIGTERM; the server's pid is in R/.warm.pid and its socket is R/.warm.sock. The first sandbox started on a root without a
pool starts one in the background (unless SNAPBOX_WARM=0); such a pool ends by itself once
it has had no command and no sandbox for --idle seconds (SNAPBOX_WARM_IDLE, default 300).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import snapbox
from snapbox.errors import SnapboxError
from snapbox.runtime import control

SOCKET_NAME = ".warm.sock"
PID_NAME = ".warm.pid"
LOCK_NAME = ".warm.lock"
AUTO_IDLE = 300.0  # seconds an automatically started pool stays without work


def enabled() -> bool:
    """Whether commands may use, and start, warm pools (SNAPBOX_WARM=0 says no)."""
    return os.environ.get("SNAPBOX_WARM", "1") != "0"


def auto_idle() -> float:
    try:
        return max(0.1, float(os.environ.get("SNAPBOX_WARM_IDLE", AUTO_IDLE)))
    except ValueError:
        return AUTO_IDLE


def socket_path(root: str) -> str:
    return os.path.join(root, SOCKET_NAME)


def pid_path(root: str) -> str:
    return os.path.join(root, PID_NAME)


def running(root: str) -> int | None:
    """The pid of the pool serving `root`, if one does."""
    try:
        with open(pid_path(root)) as f:
            pid = int(f.read())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(socket_path(root)) else None


def spawn(root: str, args: dict, stdio: list[int], ready_fd: int) -> int | None:
    """Ask the pool of `root` for a sandbox process; returns its pid, or None if no pool is
    running there. `args` are boot_main's keyword arguments."""
    path = socket_path(root)
    if not enabled() or not os.path.exists(path):
        return None
    request = {"args": args, "cwd": os.getcwdb(), "umask": _umask(),
               "env": [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]}
    try:
        with control.open_call(path, "spawn", timeout=10.0, fds=[*stdio, ready_fd], **request) as sock:
            return control.read_reply(sock, "spawn")["pid"]
    except control.ControlError:
        return None  # a stale socket: the pool is gone


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def serve(root: str, command: Callable[[], None], idle: float | None = None) -> int:
    """Serve requests for `root` until SIGTERM or SIGINT, until `idle` seconds without a
    request or a live sandbox of the root, or until its socket is removed or snapbox's code changes
    (both checked every few seconds). Prints "ready" on stdout
    once it listens (or "busy" if another pool serves the root), then lets go of stdout."""
    import snapbox.runtime.sandbox  # noqa: F401 - what every sandbox it forks would import

    global _command
    _command = command

    os.makedirs(root, exist_ok=True)
    global _lock
    _lock = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("busy", flush=True)
        return 1
    path = socket_path(root)
    if os.path.exists(path):
        os.unlink(path)  # the caller checked that no pool answers there
    listener = control.listen(path)
    listener.settimeout(5.0 if idle is None else min(idle, 5.0))
    with open(pid_path(root), "w") as f:
        f.write(f"{os.getpid()}\n")

    def stop(signum, frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGCHLD, _reap)
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    os.close(devnull)
    last = time.monotonic()
    stamp = _code_stamp()
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if not os.path.exists(path):
                    return 0  # the root is gone: nobody can reach this pool
                if _code_stamp() != stamp:
                    return 0  # snapbox was upgraded: commands would run the old code
                if idle is None or time.monotonic() - last < idle or _children or _sandboxes_alive(root):
                    continue
                return 0
            with conn:
                conn.settimeout(10.0)
                _handle(conn, listener)
            last = time.monotonic()
    finally:
        for name in (path, pid_path(root)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
    return 0


def _sandboxes_alive(root: str) -> bool:
    """Whether a sandbox of `root` still runs, forked by this pool or not (the root's first
    sandbox, which started the pool, was not): its commands should stay quick."""
    from snapbox.runtime.container import Container

    return any(c.alive() for c in Container.list(root))


def _code_stamp() -> float:
    """The newest modification time of snapbox's modules."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    newest = 0.0
    for directory, _, names in os.walk(package):
        for name in names:
            if name.endswith(".py"):
                newest = max(newest, os.stat(os.path.join(directory, name)).st_mtime)
    return newest


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    fds: list[int] = []
    try:
        msg, fds = control.recv_message(conn)
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.geteuid():
            control.send_message(conn, {"ok": False, "error": "the warm pool serves only its own user"})
        elif msg.get("op") == "spawn" and len(fds) == 4:
            pid = _fork_sandbox(msg, fds, [conn.fileno(), listener.fileno()])
            control.send_message(conn, {"ok": True, "pid": pid})
        elif msg.get("op") == "cli" and len(fds) == 3 and isinstance(msg.get("argv"), list):
            caller = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            _fork_command(msg, fds, conn, listener, caller)
        else:
            control.send_message(conn, {"ok": False, "error": "malformed warm pool request"})
    except Exception:  # a bad request must not end the pool
        traceback.print_exc()  # to the pool's log
    finally:
        for fd in fds:
            os.close(fd)


def _fork_sandbox(msg: dict, fds: list[int], close: list[int]) -> int:
    pid = os.fork()
    if pid:
        _children.add(pid)
    else:
        code = 1
        try:
            code = _become_sandbox(msg, fds, close)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _fork_command(msg: dict, fds: list[int], conn: socket.socket, listener: socket.socket, caller: int) -> None:
    global _caller
    pid = os.fork()
    if pid:
        _children.add(pid)
        return
    code = 1
    _caller = caller
    try:
        listener.close()
        os.close(_lock)
        conn.settimeout(None)
        code = _run_command(msg, fds, conn)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _run_command(msg: dict, fds: list[int], conn: socket.socket) -> int:
    """In the forked worker: take the caller's setting, run the command line, report its
    exit code."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _take_setting(msg, fds)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), line_buffering=False)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
    sys.argv = ["snapbox", *map(os.fsdecode, msg["argv"])]
    control.send_message(conn, {"ok": True, "pid": os.getpid()})
    try:
        _command()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # its reader went away: not the command's failure
            stream.flush()
    with contextlib.suppress(OSError):  # the front end is gone
        control.send_message(conn, {"exit": code})
    return 0


def _take_setting(msg: dict, fds: list[int]) -> None:
    """The caller's stdio, working directory, umask and environment (cwd and "K=V"
    entries as bytes: they need not be UTF-8)."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(msg["cwd"])
    os.umask(msg["umask"])
    os.environ.clear()
    for entry in msg.get("env") or []:
        key, eq, value = os.fsdecode(entry).partition("=")
        if eq:
            os.environ[key] = value


_children: set[int] = set()  # the sandboxes and workers this pool forked that are alive
_caller = 0  # in a worker: the pid of the front end whose command it runs
_lock = -1  # the root's pool lock, held by the pool alone (not by what it forks)
_command: Callable[[], None] = lambda: None  # the command line the pool runs (handed in by serve's caller)


def reap() -> list[int]:
    """Reap every child of this process that has ended; their pids."""
    done = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append(pid)


def _reap(signum, frame) -> None:
    _children.difference_update(reap())


def _become_sandbox(msg: dict, fds: list[int], close: list[int]) -> int:
    """In the forked sandbox process: take the caller's setting, then boot."""
    from snapbox.runtime.sandbox import boot_main

    for fd in (*close, _lock):
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    _take_setting(msg, fds)
    return boot_main(ready_fd=fds[3], **msg["args"])


def caller() -> int:
    """The process the user ran for this command: the front end that handed it to the
    pool, or this process."""
    return _caller or os.getpid()


def sandbox_env() -> dict[str, str]:
    """The sandbox process's environment: ours, with our import path spelled out, as it
    runs without the site module (which costs tens of milliseconds at every start)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(snapbox.__file__)))
    path = [package_parent, *(p for p in sys.path if p and os.path.isdir(p))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))


def start(root: str) -> int:
    """Start the warm pool of `root`; returns its pid once it listens."""
    pid = running(root)
    if pid is not None:
        raise SnapboxError(f"a warm pool already runs for {root} (pid {pid})")
    p = _launch(root, idle=None, stdout=subprocess.PIPE)
    line = p.stdout.readline()
    p.stdout.close()
    if line != b"ready\n":
        p.wait()
        pid = running(root)
        if line == b"busy\n" and pid is not None:
            raise SnapboxError(f"a warm pool already runs for {root} (pid {pid})")
        raise SnapboxError(f"the warm pool did not start (see {root}/.warm.log)")
    return p.pid


def autostart(root: str) -> None:
    """Start a warm pool for `root` in the background, one that ends by itself when idle, so
    that the root's next commands are quick; unless SNAPBOX_WARM=0 or one runs already."""
    if enabled() and running(root) is None:
        with contextlib.suppress(OSError):
            _launch(root, idle=auto_idle(), stdout=subprocess.DEVNULL)


def _launch(root: str, idle: float | None, stdout: int) -> subprocess.Popen:
    os.makedirs(root, exist_ok=True)
    # The command line serves the pool: it hands itself in to serve() (see `snapbox warm`).
    cmd = [sys.executable, "-S", "-m", "snapbox", "--root", os.path.abspath(root), "warm", "--serve"]
    if idle is not None:
        cmd += ["--idle", str(idle)]
    with open(os.path.join(root, ".warm.log"), "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log, cwd="/",
                                start_new_session=True, env=sandbox_env())


def stop(root: str) -> int:
    """Stop the warm pool of `root`; returns the pid it had."""
    pid = running(root)
    if pid is None:
        raise SnapboxError(f"no warm pool runs for {root}")
    os.kill(pid, signal.SIGTERM)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return pid
    try:
        select.select([pidfd], [], [], 10.0)
    finally:
        os.close(pidfd)
    return pid
