"""Containers on disk: the state directory, its lock, and the status machine.

    <root>/<id>/state.json     status, sandbox pid, bundle (written atomically)
    <root>/<id>/lock           flock'd by every command that changes the container
    <root>/<id>/control.sock   the sandbox process's control socket
    <root>/<id>/exit.json      the program's wait status, written by the sandbox at exit
    <root>/<id>/sandbox.log    the sandbox process's log

Statuses follow the OCI runtime (and gVisor's container.go): creating -> created ->
running <-> paused -> stopped. A sandbox process that died is seen as stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import cbor2

from snapbox.errors import ContainerStateError, SnapboxError
from snapbox.runtime import cgroups, control, warm

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"
OCI_VERSION = "1.0.2"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


def default_root() -> str:
    if os.geteuid() == 0:
        return "/var/run/snapbox"
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/snapbox-{os.geteuid()}", "snapbox")


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of host process `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def write_pid_file(path: str, pid: int) -> None:
    """runc's --pid-file: the pid, written whole or not at all."""
    try:
        _write_atomically(path, str(pid))
    except OSError as e:
        raise SnapboxError(f"cannot write pid file {path} ({e.strerror})") from None


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _cancel(sock: socket.socket, op: str) -> dict[str, Any]:
    """^C while the sandbox carries out `op`: shut our end of the request (the sandbox takes
    that as a cancel while it can still undo the work) and wait for what it did: Cancelled
    if it undid it, else its reply, marked "interrupted" (it was done first)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sock.shutdown(socket.SHUT_WR)
        reply = control.read_reply(sock, op)  # Cancelled if it was
    finally:
        signal.signal(signal.SIGINT, old)
    return {**reply, "interrupted": True}


def console(socket_path: str) -> int:
    """runc's --console-socket: make a pty, send its master over the socket, return the slave."""
    import pty

    master, slave = pty.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(socket_path)
            sock.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
    except OSError as e:
        os.close(slave)
        raise SnapboxError(f"cannot send the console to {socket_path} ({e.strerror})") from None
    finally:
        os.close(master)
    return slave


# What a terminal sends its foreground process group.
KEYBOARD_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGWINCH)


@dataclass
class Options:
    """How a sandbox process logs and what it may do: set by flags of the command line."""

    debug_log: str | None = None  # the sandbox's log file (default <root>/<id>/sandbox.log)
    log_format: str = "text"  # text or json
    strace: bool = False  # log every application syscall
    network: str | None = None  # --network: sandbox, host or none (None: the bundle's, or the image's)
    publish: tuple[str, ...] = ()  # --publish: IP:HOSTPORT:PORT, each a port published on the host
    snapshot_to: str | None = None  # --snapshot-to: where the image goes when the program asks for one
    base: str | None = None  # the description of a clone's base memory (runtime.clones), for a restore
    tied_to: int = 0  # a pid: the sandbox ends when that process does (an attached `do`)
    working_set: str | None = None  # --working-set: loaded first by a restore, or recorded (checkpoint.WorkingSet)
    # Where the runtime's warnings go (unsupported config fields): the CLI sends them to --log
    # when it has one, as runc does; by default they are printed on stderr.
    warn: Callable[[str], None] | None = field(default=None, compare=False)

    def boot_kwargs(self) -> dict[str, Any]:
        """The sandbox's settings, as boot_main takes them."""
        return {"debug_log": os.path.abspath(self.debug_log) if self.debug_log else None,
                "log_format": self.log_format, "strace": self.strace, "network": self.network,
                "publish": list(self.publish),
                "snapshot_to": self.snapshot_to, "base": self.base, "tied_to": self.tied_to,
                "working_set": self.working_set}

    def boot_args(self) -> list[str]:
        args = ["--log-format", self.log_format]
        if self.debug_log:
            args += ["--debug-log", os.path.abspath(self.debug_log)]
        if self.strace:
            args.append("--strace")
        if self.network:
            args += ["--network", self.network]
        for spec in self.publish:
            args += ["--publish", spec]
        if self.snapshot_to:
            args += ["--snapshot-to", self.snapshot_to]
        if self.base:
            args += ["--base", self.base]
        if self.tied_to:
            args += ["--tied-to", str(self.tied_to)]
        if self.working_set:
            args += ["--working-set", self.working_set]
        return args


@dataclass
class Container:
    """One container's state directory, and the operations on it."""

    root: str
    id: str
    state: dict[str, Any]
    process: subprocess.Popen | None = None  # the sandbox process, when this CLI started it
    options: Options = field(default_factory=Options)
    connections: list = field(default_factory=list)  # a restore's host connections, and what became of each

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.id)

    @property
    def control_path(self) -> str:
        return os.path.join(self.dir, "control.sock")

    @property
    def status(self) -> str:
        return self.state["status"]

    # -- on-disk state ------------------------------------------------------------------------

    @staticmethod
    def check_id(cid: str) -> None:
        if not _ID.match(cid):
            raise SnapboxError(f"invalid container id {cid!r} (letters, digits, '_', '.', '-')")

    @classmethod
    def load(cls, root: str, cid: str) -> Container:
        cls.check_id(cid)
        path = os.path.join(root, cid, "state.json")
        try:
            with open(path) as f:
                state = json.load(f)
        except FileNotFoundError:
            raise SnapboxError(f'container "{cid}" does not exist') from None
        except (OSError, ValueError) as e:
            raise SnapboxError(f'container "{cid}" has an unreadable state file ({e})') from None
        c = cls(root, cid, state)
        c._refresh()
        return c

    @classmethod
    def list(cls, root: str) -> list[Container]:
        try:
            names = sorted(os.listdir(root))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if _ID.match(name) and os.path.exists(os.path.join(root, name, "state.json")):
                with contextlib.suppress(SnapboxError):
                    out.append(cls.load(root, name))
        return out

    def _refresh(self) -> None:
        """A sandbox process that is gone means the container has stopped."""
        if self.status in (CREATING, CREATED, RUNNING, PAUSED) and not self.alive():
            self.state["status"] = STOPPED

    def alive(self) -> bool:
        pid = self.state.get("pid") or 0
        return pid > 0 and _proc_start(pid) == self.state.get("pid_start")

    def save_state(self) -> None:
        """Replace state.json whole (a reader sees the old state or the new one). Not
        fsynced, as runc does not: a state that a host crash could lose describes processes
        the crash ended too."""
        tmp = os.path.join(self.dir, ".state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[Container]:
        """Hold the container's lock; the state is re-read under it."""
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fresh = Container.load(self.root, self.id)
            self.state = fresh.state
            yield self
        finally:
            os.close(fd)

    def exit_status(self) -> int | None:
        """The program's wait status once the sandbox has recorded it (0 if the sandbox
        ended because a checkpoint stopped it)."""
        try:
            with open(os.path.join(self.dir, "exit.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return 0 if record.get("checkpointed") else record.get("status")

    def oci_state(self) -> dict[str, Any]:
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": self.status,
            "pid": self.state.get("pid", 0) if self.status != STOPPED else 0,
            "bundle": self.state.get("bundle", ""),
            "annotations": self.state.get("annotations", {}),
            "created": self.state.get("created", ""),
            # Beyond runc's fields (which its readers ignore): the sandbox's network.
            "network": self.network(),
        }

    def network(self) -> dict[str, Any]:
        """The sandbox's network, as its sandbox process recorded it: the mode, and the
        namespace and address once it has one."""
        try:
            with open(os.path.join(self.dir, "network.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def owned_bundle(root: str, cid: str, config: dict) -> str:
        """A bundle snapbox writes itself (for `do`, or a restore without --bundle), kept
        under the root until the container is deleted. Returns its directory."""
        Container.check_id(cid)
        path = os.path.join(root, ".bundles", cid)
        os.makedirs(path, mode=0o700, exist_ok=True)
        _write_atomically(os.path.join(path, "config.json"), json.dumps(config, indent=1))
        return path

    def _require(self, op: str, *allowed: str) -> None:
        if self.status not in allowed:
            raise ContainerStateError(f'cannot {op} container "{self.id}" in state {self.status}')

    # -- creating ------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str, cid: str, bundle: str, *, start: bool = False,
               restore_image: str | None = None, lazy: bool = False, options: Options | None = None,
               pid_file: str | None = None, console_socket: str | None = None,
               memory: tuple[str, str] | None = None, hold: bool = False) -> Container:
        """Make the state dir and start a sandbox process (which owns the caller's stdio).

        With `restore_image`, the sandbox is restored from that image and started (unless
        `hold`: then it waits, created, its clock stopped, for start()); with
        `lazy`, memory is loaded from the image as the program needs it; with `memory`
        (a path to a memory file and the id of the last pre-dump in it), the image's chain
        is not read: that file holds it.
        """
        from snapbox.runtime.bundle import Bundle

        cls.check_id(cid)
        b = Bundle.load(bundle)
        if b.terminal and not os.isatty(0) and console_socket is None:
            raise SnapboxError("the bundle asks for a terminal (process.terminal) but stdin is not one "
                               "(pass --console-socket)")
        for w in b.warnings:
            if options is not None and options.warn is not None:
                options.warn(w)
            else:
                print(f"snapbox: warning: {w}", file=sys.stderr)
        os.makedirs(root, mode=0o711, exist_ok=True)
        cdir = os.path.join(root, cid)
        try:
            os.mkdir(cdir, 0o711)
        except FileExistsError:
            raise SnapboxError(f'container "{cid}" already exists') from None
        c = cls(root, cid, {"id": cid, "status": CREATING, "bundle": b.path, "rootfs": b.rootfs,
                            "annotations": b.annotations, "pid": 0, "pid_start": None, "hooks": b.hooks,
                            "created": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        c.options = options or Options()
        try:
            if b.cgroup:
                c.state["cgroups"] = cgroups.create(b.cgroup)
            c.save_state()
            c._spawn(restore_image=restore_image, lazy=lazy, console_socket=console_socket, memory=memory,
                     own=pid_file is not None)
            if pid_file:
                write_pid_file(pid_file, c.state["pid"])
            c.run_hooks("createRuntime", "prestart", "createContainer")
            if start or (restore_image is not None and not hold):
                c._start()
        except BaseException:
            c._kill_sandbox()
            cgroups.remove(c.state.get("cgroups", []))
            shutil.rmtree(cdir, ignore_errors=True)
            shutil.rmtree(os.path.join(root, ".bundles", cid), ignore_errors=True)
            raise
        return c

    def run_hooks(self, *kinds: str, fatal: bool = True) -> None:
        """Run the bundle's OCI hooks of `kinds` on the host, the state JSON on their stdin."""
        hooks = [(kind, hook) for kind in kinds for hook in self.state.get("hooks", {}).get(kind, [])]
        state = json.dumps(self.oci_state()).encode() if hooks else b""
        for kind, hook in hooks:
            argv = hook.get("args") or [hook["path"]]
            try:
                p = subprocess.run([hook["path"], *argv[1:]], input=state, capture_output=True,
                                   env=dict(e.split("=", 1) for e in hook.get("env", []) if "=" in e),
                                   timeout=hook.get("timeout"))
                failed = p.returncode != 0
                why = p.stderr.decode(errors="replace").strip() or f"exit code {p.returncode}"
            except (OSError, subprocess.TimeoutExpired) as e:
                failed, why = True, str(e)
            if failed:
                message = f"{kind} hook {hook['path']} failed ({why})"
                if fatal:
                    raise SnapboxError(message)
                print(f"snapbox: warning: {message}", file=sys.stderr)

    def _spawn(self, restore_image: str | None, lazy: bool = False, console_socket: str | None = None,
               memory: tuple[str, str] | None = None, own: bool = False) -> None:
        """Start the sandbox process, forked by the root's warm pool if one runs and not
        `own` (the caller waits for its pid, as containerd's shim does: it must be the
        caller's descendant); it is ready (created) when this returns."""
        r, w = os.pipe()
        stdio: dict[str, int] = {}
        slave = -1
        if console_socket is not None:
            slave = console(console_socket)
            stdio = {"stdin": slave, "stdout": slave, "stderr": slave}
        try:
            args = {"root": self.root, "cid": self.id, "bundle_path": self.state["bundle"], "restore": restore_image,
                    "lazy": lazy, **self.options.boot_kwargs(),
                    **({"memory": memory[0], "memory_id": memory[1]} if memory else {})}
            pid = None if own else warm.spawn(self.root, args, [slave] * 3 if slave >= 0 else [0, 1, 2], w)
            if pid is None:
                cmd = [sys.executable, "-S", "-m", "snapbox.runtime.boot", "--root", self.root, "--id", self.id,
                       "--bundle", self.state["bundle"], "--ready-fd", str(w), *self.options.boot_args()]
                if restore_image is not None:
                    cmd += ["--restore", restore_image] + (["--lazy"] if lazy else [])
                if memory is not None:
                    cmd += ["--memory", memory[0], "--memory-id", memory[1]]
                self.process = subprocess.Popen(cmd, pass_fds=(w,), start_new_session=True, env=warm.sandbox_env(),
                                                **stdio)
                pid = self.process.pid
        finally:
            os.close(w)
            if slave >= 0:
                os.close(slave)
        self.state["pid"] = pid
        self.state["pid_start"] = _proc_start(pid)
        with os.fdopen(r, "rb") as f:
            blob = f.read()
        try:
            reply = cbor2.loads(blob) if blob else {"ok": False}
        except cbor2.CBORDecodeError:
            reply = {"ok": False}
        if not reply.get("ok"):
            self._wait_gone(5.0)
            raise SnapboxError(reply.get("error") or
                               f"sandbox process failed to start (see {self.dir}/sandbox.log)")
        self.state["status"] = CREATED
        self.save_state()
        self.connections = reply.get("connections") or []
        if self.process is not None:
            warm.autostart(self.root)

    # -- operations ----------------------------------------------------------------------------

    def _call(self, op: str, **args: Any) -> dict[str, Any]:
        try:
            return control.call(self.control_path, op, **args)
        except control.ControlError:
            if not self.alive():
                # It ended while we asked (the program exited): say so, not "connection reset".
                raise ContainerStateError(f'container "{self.id}" stopped before it could {op}') from None
            raise

    def start(self) -> None:
        with self.locked():
            self._require("start", CREATED)
            self._start()

    def _start(self) -> None:
        self.run_hooks("startContainer")
        self._call("start")
        self._started()

    def _started(self) -> None:
        """The sandbox has been told to start: record it, then the poststart hooks."""
        self.state["status"] = RUNNING
        self.save_state()
        self.run_hooks("poststart", fatal=False)

    def pause(self) -> None:
        with self.locked():
            self._require("pause", RUNNING)
            self._call("pause")
            self.state["status"] = PAUSED
            self.save_state()

    def resume(self) -> None:
        with self.locked():
            self._require("resume", PAUSED)
            self._call("resume")
            self.state["status"] = RUNNING
            self.save_state()

    def kill(self, sig: int, all_processes: bool = False) -> None:
        """Signal the init process (or, with all_processes, every process)."""
        with self.locked():
            if self.status == STOPPED:  # runc's words, which containerd looks for
                raise ContainerStateError(f'cannot signal container "{self.id}": container not running')
            self._require("signal", CREATED, RUNNING, PAUSED)
            self._call("kill", signal=sig, all=all_processes)

    def processes(self) -> list[dict[str, Any]]:
        """The processes inside: pid, ppid, host_pid (the host process that runs it), uid,
        state, threads, comm, cmd."""
        self._require("list processes of", CREATED, RUNNING, PAUSED)
        return self._call("ps")["processes"]

    def stats(self) -> dict[str, Any]:
        """Memory (bytes resident, charged, limit) and pids."""
        self._require("get statistics of", CREATED, RUNNING, PAUSED)
        return self._call("stats")["stats"]

    def exec(self, args: list[str], env: list[str], cwd: str = "/", user: tuple[int, int] = (0, 0),
             stdio: tuple[int, int, int] = (0, 1, 2), detach: bool = False,
             forward: list[int] | None = None, started: Callable[[int], None] | None = None,
             terminal: bool = False) -> int:
        """Run another process in the container on the host fds `stdio`. Returns its pid
        if `detach`, else waits and returns its wait status; the signals in `forward`
        that reach this process while it waits are passed on to it (with `terminal`, the
        keyboard's, SIGINT, SIGQUIT, SIGTSTP and SIGWINCH, to the foreground group of its
        session, as its terminal would); `started(pid)` is called once it runs."""
        self._require("exec in", RUNNING)
        sock = control.open_call(self.control_path, "exec", fds=list(stdio), args=args, env=env, cwd=cwd,
                                 user=list(user), wait=not detach)
        with sock:
            reply = control.read_reply(sock, "exec")
            pid = reply["pid"]
            if started is not None:
                started(pid)
            if detach:
                return pid

            def pass_on(signum, frame):
                with contextlib.suppress(SnapboxError):
                    control.call(self.control_path, "kill", timeout=5, signal=signum, pid=pid,
                                 foreground=terminal and signum in KEYBOARD_SIGNALS)

            for sig in forward or ():
                signal.signal(sig, pass_on)
            sock.settimeout(None)
            try:
                msg, _ = control.recv_message(sock)
            except (OSError, SnapboxError):
                raise SnapboxError(f'container "{self.id}" stopped while process {pid} ran') from None
            return msg.get("exit", 0)

    def checkpoint(self, image_path: str, leave_running: bool = False, compress: bool = True,
                   image_fd: int | None = None, progress_fd: int | None = None,
                   store_file_pages: bool = False, pre_dump: bool = False,
                   parent_path: str | None = None, handoff: bool = False) -> dict:
        """Write an image of the sandbox; it stops unless `leave_running` or `pre_dump`.

        A pre-dump holds memory alone, written while the sandbox runs; an image with
        `parent_path` (the sandbox's last pre-dump, "-" if that went to a stream) holds
        only the pages written since, and restores on top of its chain of pre-dumps.

        Pages of host files mapped read-only (libraries) are stored as references to the
        files unless `store_file_pages`.

        With `handoff` (a paused container, `leave_running`: the image is to run
        elsewhere), its TCP connections through the host are let go in repair mode, to
        be made again by whoever restores the image, or here if it resumes.

        With image_path "-", the image goes to `image_fd` instead (a pipe, a socket);
        with `progress_fd` (a terminal), progress is shown there.
        """
        fds: list[int] = []
        args: dict[str, Any] = {}
        if image_path == "-":
            if image_fd is None:
                raise SnapboxError("checkpoint to - needs an output fd")
            args["image_fd"] = len(fds)
            fds.append(image_fd)
            path = "-"
        else:
            path = os.path.abspath(image_path)
        if progress_fd is not None:
            args["progress_fd"] = len(fds)
            fds.append(progress_fd)
        if parent_path is not None:
            args["parent_path"] = parent_path if parent_path == "-" else os.path.abspath(parent_path)
        with self.locked():
            self._require("checkpoint", RUNNING, PAUSED)
            try:
                sock = control.open_call(self.control_path, "checkpoint", timeout=None, fds=fds, path=path,
                                         leave_running=leave_running, compress=compress,
                                         store_file_pages=store_file_pages, pre_dump=pre_dump, handoff=handoff,
                                         **args)
            except control.ControlError:
                if not self.alive():
                    raise ContainerStateError(f'container "{self.id}" stopped before it could checkpoint') from None
                raise
            with sock:
                try:
                    reply = control.read_reply(sock, "checkpoint")
                except KeyboardInterrupt:
                    reply = _cancel(sock, "checkpoint")
            if not leave_running and not pre_dump:
                # The sandbox killed the program and recorded its end before replying; its
                # process may take a moment more to give its memory back.
                self.state["status"] = STOPPED
                self.save_state()
            return {**reply.get("summary", {}), **({"interrupted": True} if reply.get("interrupted") else {})}

    def migrate(self, dest: str, token: str = "", max_rounds: int = 8, report=None):
        """Move this container, running, to the receiver at `dest` (tcp://HOST:PORT or
        exec:COMMAND; see snapbox.runtime.migrate). Returns the migration's Summary; on any
        failure (MigrationError) the container goes on running here."""
        from snapbox.runtime.migrate import migrate

        return migrate(self, dest, token=token, max_rounds=max_rounds, report=report)

    def _wait_gone(self, timeout: float) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
            return
        pid = self.state.get("pid") or 0
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # gone already
        try:
            if self.alive():
                select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)

    def _kill_sandbox(self) -> None:
        pid = self.state.get("pid") or 0
        if pid and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(5.0)

    def delete(self, force: bool = False) -> None:
        """Remove the container; a live one only with `force` (its sandbox is killed)."""
        with self.locked():
            if self.status != STOPPED and not force:
                raise ContainerStateError(
                    f'cannot delete container "{self.id}" in state {self.status} (use --force)')
            self._kill_sandbox()
            cgroups.remove(self.state.get("cgroups", []))
            self.state["status"] = STOPPED
            self.run_hooks("poststop", fatal=False)
            shutil.rmtree(os.path.join(self.root, ".bundles", self.id), ignore_errors=True)
            try:
                shutil.rmtree(self.dir)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise SnapboxError(f"cannot remove {self.dir} ({e.strerror})") from None

    def wait(self) -> int:
        """Wait for the sandbox process to end; returns the program's wait status."""
        if self.process is not None:
            code = self.process.wait()
        else:
            while self.alive():
                self._wait_gone(60.0)
            code = None
        status = self.exit_status()
        if status is None:
            # No record: the sandbox itself died (killed from the host).
            return signal.SIGKILL if code is None or code < 0 else code << 8
        return status
