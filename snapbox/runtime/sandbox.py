"""The sandbox process (`python -S -m snapbox.runtime.boot`): the Loader's run and restore paths, and the control
server, all inside the kernel's event loop.

Its stdin, stdout and stderr are the application's; it never writes to them itself. Its
own messages go to <root>/<id>/sandbox.log.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import select
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import cbor2

from snapbox.errors import Cancelled, SnapboxError
from snapbox.kernel.checkpoint import LoadContext, read_base_description
from snapbox.kernel.creds import CapSets
from snapbox.kernel.hostnet import remember_namespace
from snapbox.kernel.inet import publish as publish_port
from snapbox.kernel.inet import withdraw_publications
from snapbox.kernel.kernel import Kernel
from snapbox.kernel.loop import take_terminal
from snapbox.kernel.strace import tracer
from snapbox.runtime import cgroups, control
from snapbox.runtime.bundle import Bundle
from snapbox.runtime.network import bundle_namespace, parse_publish
from snapbox.runtime.network import enter as enter_network
from snapbox.runtime.placement import Placement
from snapbox.runtime.progress import Progress
from snapbox.state import ImageError, ImageWriteError
from snapbox.state.image import WRITE_ERRORS, ImageReader, write_image

log = logging.getLogger("snapbox.sandbox")



# Where this sandbox process runs (see placement.py): set as it boots.
_PLACEMENT: Placement | None = None


@contextlib.contextmanager
def _on_all_cpus() -> Iterator[None]:
    """While the sentry starts threads that should spread (an image's compressors)."""
    with _PLACEMENT.on_all_cpus() if _PLACEMENT is not None else contextlib.nullcontext():
        yield


TIED_GRACE = 10.0  # seconds the sentry has to end itself once the process it is tied to is gone


def _end_if_stuck(pidfd: int) -> None:
    """The backstop of Sandbox.tie_to, on a thread of its own: once the tied process has
    ended, a sentry still alive TIED_GRACE seconds later is stuck (a turn of its loop that
    never ends) and is killed; its tasks, ptraced with PTRACE_O_EXITKILL, die with it."""
    select.select([pidfd], [], [])
    time.sleep(TIED_GRACE)
    log.error("the sandbox did not end %.0f s after the process that ran it: killing the sentry", TIED_GRACE)
    os.kill(os.getpid(), signal.SIGKILL)


def _passed_fd(msg: dict[str, Any], fds: list[int], key: str) -> int | None:
    index = msg.get(key)
    if index is None:
        return None
    if not isinstance(index, int) or not 0 <= index < len(fds):
        raise SnapboxError(f"control request names a missing fd ({key})")
    return fds[index]


@dataclass
class Later:
    """A control reply a child process works out: `fd` reaches its end when the child is
    done, having written its result (CBOR) there; `finish(result)` makes the reply."""

    pid: int
    fd: int
    finish: Callable[[dict], dict]


class Sandbox:
    """The kernel of one container plus its control server."""

    def __init__(self, kernel: Kernel, cdir: str, bundle_config: dict | None = None,
                 snapshot_to: str | None = None) -> None:
        self.kernel = kernel
        self.dir = cdir
        # The bundle's config.json (root path made absolute), kept in every image so that a
        # restore needs no bundle.
        self.bundle_config = bundle_config
        self.done = False  # set once the sandbox should end (checkpointed and stopped)
        # The last pre-dump (or incremental checkpoint) and its pages' digests: what the
        # next --parent-path image is made against.
        self.tracking: dict | None = None
        # --snapshot-to: where the image goes when the program asks for one (procfs).
        self.snapshot_to = snapshot_to
        if snapshot_to is not None:
            kernel.snapshot = self._snapshot
        path = os.path.join(cdir, "control.sock")
        if os.path.exists(path):
            os.unlink(path)
        self.server = control.listen(path)
        kernel.loop.add_reader(self.server, self._accept)
        self.exec_waiters: dict[int, int] = {}  # pid -> socket fd of the attached exec waiting for it
        self.asker: socket.socket | None = None  # the connection whose request is being carried out
        kernel.on_exit = self._process_exited
        self._record_network(kernel.network)
        if kernel.make_network is not None:
            make = kernel.make_network

            def made() -> dict:
                network = make()
                self._record_network(network)
                return network
            kernel.make_network = made

    def _record_network(self, network: dict) -> None:
        """<dir>/network.json: the sandbox's network as `snapbox state` shows it."""
        _write_json(os.path.join(self.dir, "network.json"), self.kernel.network_report(network))

    def _process_exited(self, tg) -> None:
        fd = self.exec_waiters.pop(tg.tgid, None)
        if tg.parent is None and tg is not self.kernel.tasks.init:
            self.kernel.reap(tg)  # an exec'd process has no parent to wait for it
        if fd is None:
            return
        with socket.socket(fileno=fd) as conn:
            conn.settimeout(5)
            try:
                control.send_message(conn, {"exit": tg.exit_status})
            except OSError as e:
                log.warning("could not report the exit of pid %d: %s", tg.tgid, e)

    def _accept(self) -> None:
        try:
            conn, _ = self.server.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(10)
            try:
                msg, fds = control.recv_message(conn)
            except (OSError, SnapboxError, cbor2.CBORDecodeError) as e:
                log.warning("bad control request: %s", e)
                return
            self.asker = conn
            try:
                reply = self.handle(msg, fds)
            except SnapboxError as e:
                reply = {"ok": False, "error": str(e), **({"cancelled": True} if isinstance(e, Cancelled) else {})}
            except Exception as e:  # a bug: keep the sandbox alive and say so
                log.error("control request %r failed:\n%s", msg.get("op"), traceback.format_exc())
                reply = {"ok": False, "error": f"internal error during {msg.get('op')}: {e!r}"}
            finally:
                self.asker = None
                for fd in fds:
                    os.close(fd)
            later = reply.get("later")
            if isinstance(later, Later):
                self._answer_later(conn.detach(), later)
                return
            try:
                control.send_message(conn, reply)
            except OSError as e:
                log.warning("could not answer control request: %s", e)
                return
            if msg.get("op") == "exec" and reply.get("ok") and msg.get("wait"):
                # An attached exec: its command waits on this connection for the exit.
                self.exec_waiters[reply["pid"]] = conn.detach()

    def handle(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Carry out one request of the control protocol (snapbox.runtime.control) and
        return its reply."""
        op = control.check(msg.get("op"), msg)
        return {"ok": True, **self.operations[op.name](self, msg, fds)}

    def _start(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        self.kernel.start()
        return {}

    def _pause(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        self.kernel.pause()
        return {}

    def _resume(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        self.kernel.unpause()
        return {}

    def _kill(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        k = self.kernel
        sig = msg.get("signal")
        if not isinstance(sig, int) or not 1 <= sig <= 64:
            raise SnapboxError(f"invalid signal {sig!r}")
        groups = k.tasks.pidns.groups
        if msg.get("all"):
            targets = [g for g in groups.values() if g.exit_status is None]
        elif msg.get("foreground"):
            # As a terminal does: to the foreground group of the session of init or of pid.
            leader = groups.get(msg["pid"]) if msg.get("pid") else k.tasks.init
            if leader is not None:
                k.signal_foreground(leader.sid, sig)
            return {}
        elif msg.get("pid"):
            targets = [groups[msg["pid"]]] if msg["pid"] in groups else []
        else:
            targets = [k.tasks.init] if k.tasks.init is not None else []
        k.signal_from_outside(targets, sig)
        return {}

    def _checkpoint(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        result = self.checkpoint(msg, fds)
        return {"later": result} if isinstance(result, Later) else {"summary": result}

    def _ps(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"processes": self.kernel.processes()}

    def _stats(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"stats": self.stats()}

    def _exec(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {"pid": self.exec(msg, fds)}

    def tie_to(self, pid: int) -> None:
        """End the sandbox when process `pid` ends (the command of an attached `do`, killed
        before it could say so): every process of the program is killed."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            raise SnapboxError(f"the command that runs the sandbox is gone ({e.strerror})") from None
        k = self.kernel

        def gone() -> None:
            k.loop.remove_reader(pidfd)
            os.close(pidfd)
            log.info("process %d, which ran the sandbox, has ended: so does the sandbox", pid)
            for tg in list(k.tasks.pidns.groups.values()):
                k.exit_group(tg, signal.SIGKILL)

        k.loop.add_reader(pidfd, gone)
        threading.Thread(target=_end_if_stuck, args=(os.dup(pidfd),), name="tied-to", daemon=True).start()

    def _adopt(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """A clone handed out by its pool (snapbox.runtime.clones), not started yet: its
        directory has moved to its new id's, it takes the taker's stdio (this process's
        own, and so the program's), and the new id as its hostname."""
        k = self.kernel
        if k.started:
            raise SnapboxError("only a sandbox that has not started can be adopted")
        if len(fds) != 3:
            raise SnapboxError("adopt needs the taker's stdin, stdout and stderr")
        if not isinstance(msg.get("dir"), str) or not os.path.isdir(msg["dir"]):
            raise SnapboxError("adopt needs the sandbox's new directory")
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        k.rebind_stdio()
        self.dir = msg["dir"]
        if msg.get("hostname"):
            k.hostname = msg["hostname"]
        if msg.get("start"):
            k.start()
        return {}

    # What carries out each operation of control.OPERATIONS.
    operations = {"start": _start, "pause": _pause, "resume": _resume, "kill": _kill, "checkpoint": _checkpoint,
                  "ps": _ps, "stats": _stats, "exec": _exec, "adopt": _adopt}

    def image_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"network": self.kernel.network}
        if self.bundle_config:
            meta["bundle_config"] = self.bundle_config
        return meta

    def stats(self) -> dict[str, Any]:
        k = self.kernel
        mf = k.memfile
        resident = os.fstat(mf.fd).st_blocks * 512
        return {"memory": {"usage": resident, "allocated": mf.allocated, "charged": mf.charged, "limit": mf.limit},
                "pids": {"current": len(k.processes())}}

    def exec(self, msg: dict[str, Any], fds: list[int]) -> int:
        """Start another process in the sandbox, on the stdio the exec command passed."""
        argv, env, cwd = msg.get("args"), msg.get("env") or [], msg.get("cwd") or "/"
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise SnapboxError("exec needs a command")
        if len(fds) != 3:
            raise SnapboxError("exec needs the caller's stdin, stdout and stderr")
        uid, gid = msg.get("user") or (0, 0)
        stdio = [os.dup(fd) for fd in fds]
        try:
            tg = self.kernel.spawn([os.fsencode(a) for a in argv], [os.fsencode(e) for e in env], cwd, stdio,
                                   (uid, gid))
        except BaseException:
            for fd in stdio:
                os.close(fd)
            raise
        return tg.tgid

    def checkpoint(self, msg: dict[str, Any], fds: list[int]) -> dict:
        """Write an image to msg["path"], or to a passed fd when the path is "-": a whole
        checkpoint, or with msg["pre_dump"] memory alone while the sandbox runs on; with
        msg["parent_path"] (this sandbox's last pre-dump), only what changed since."""
        path = msg.get("path")
        image_fd = _passed_fd(msg, fds, "image_fd")
        if path == "-" and image_fd is None:
            raise SnapboxError("checkpoint to - needs the output fd")
        if path != "-" and (not isinstance(path, str) or not os.path.isabs(path)):
            raise SnapboxError("checkpoint needs an absolute image path")
        progress_fd = _passed_fd(msg, fds, "progress_fd")
        shown = Progress(progress_fd, "pre-dump" if msg.get("pre_dump") else "checkpoint") \
            if progress_fd is not None else None
        asker = self.asker

        def progress(done: int, total: int) -> None:
            # The asker shut its end (^C of `snapbox checkpoint`): cancel, as long as the
            # memory is still being written (after that, it finishes and says so).
            if asker is not None and select.select([asker], [], [], 0)[0]:
                raise Cancelled("checkpoint cancelled: the container runs on, no image was written")
            if shown is not None:
                shown(done, total)

        compress = bool(msg.get("compress", True))
        store = bool(msg.get("store_file_pages", False))
        parent = self._parent(msg.get("parent_path"))
        k = self.kernel
        pre_dump = bool(msg.get("pre_dump"))
        final = not msg.get("leave_running") and not pre_dump
        was_paused = k.paused

        delta = k.memory_delta(parent) if pre_dump else None

        def write(f) -> dict:
            if pre_dump:
                return k.pre_dump(f, delta, compress=compress, progress=progress, meta=self.image_meta(),
                                  parent=parent)
            return k.save(f, compress=compress, progress=progress, meta=self.image_meta(), store_file_pages=store,
                          final=final, parent=parent, handoff=bool(msg.get("handoff")) and was_paused)

        def write_it() -> dict:
            with _on_all_cpus():
                if path != "-":
                    return write_image(path, write)
                try:
                    with os.fdopen(os.dup(image_fd), "wb", buffering=1 << 20) as f:
                        return write(f)
                except OSError as e:
                    if e.errno not in WRITE_ERRORS:
                        raise
                    raise ImageWriteError(f"cannot write image to the output ({e.strerror})") from None

        if pre_dump:
            try:
                return self._aside(write_it, shown, path, delta)
            except BaseException:
                delta.give_back(k.memfile)
                raise
        k.pause()
        try:
            summary = write_it()
        except BaseException:
            if not was_paused:
                k.unpause()
            raise
        finally:
            if shown is not None:
                shown.close()
        if parent is not None:
            # What the next incremental image is made against: this one.
            self.tracking = {"path": path, "id": summary["image_id"], **summary["tracking"]}
        if msg.get("leave_running"):
            if not was_paused:
                k.unpause()
        else:
            # Stopped for good before the reply: the caller need not wait for this process
            # (and the host for its memory) to go away.
            k.kill_stubs()
            record_end(self.dir, {"checkpointed": True})
            self.done = True
        return {"memory_saved": summary["memory_saved"], "graph_bytes": summary["graph_bytes"],
                "connections": summary["connections"]}

    def _aside(self, write: Callable[[], dict], progress, path: str, delta) -> Later:
        """A pre-dump, written by a child of this process while this one goes on serving
        the program: the child shares the memory file (the same memfd, mapped shared) and
        saves the pages `delta` names (found here: the tracking of writes is this
        process's), or every page whose digest changed, each digest taken from the very copy
        it saves; a page the program changes meanwhile is in the next image. The reply
        comes when the child is done."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write, tell the parent, and go without running any finalizer
            os.close(r)
            try:
                result = {"ok": True, "summary": write()}
            except SnapboxError as e:
                result = {"ok": False, "error": str(e)}
            except BaseException as e:
                log.error("pre-dump failed:\n%s", traceback.format_exc())
                result = {"ok": False, "error": f"internal error during the pre-dump: {e!r}"}
            try:
                with os.fdopen(w, "wb") as out:
                    out.write(cbor2.dumps(result))
            finally:
                os._exit(0)
        os.close(w)
        if progress is not None:
            progress.close()

        def finish(result: dict) -> dict:
            if not result.get("ok"):
                delta.give_back(self.kernel.memfile)
                raise SnapboxError(result.get("error") or "the pre-dump failed")
            summary = result["summary"]
            self.tracking = {"path": path, "id": summary["image_id"], **summary["tracking"]}
            return {"summary": {"memory_saved": summary["memory_saved"], "pre_dump": True, "connections": [],
                                "method": summary["tracking"]["method"], "image_bytes": summary["image_bytes"]}}
        return Later(pid, r, finish)

    def _snapshot(self, task) -> None:
        """The program asked to be checkpointed (it wrote /proc/snapbox/checkpoint): write
        the image to --snapshot-to while it runs on. The task is saved as having asked, so
        its write returns both here and in every sandbox restored from the image."""
        if task.snapshot != "wanted":
            return
        task.snapshot = "taken"
        try:
            self.checkpoint({"path": self.snapshot_to, "leave_running": True}, [])
            log.info("checkpointed to %s, as the program asked", self.snapshot_to)
        except SnapboxError as e:
            log.error("the checkpoint the program asked for failed: %s", e)
            task.snapshot = "failed"
        self.kernel.snapshot_done.notify()

    def _answer_later(self, conn_fd: int, later: Later) -> None:
        """Reply on the held connection `conn_fd` once `later`'s child has said how it went."""
        got = bytearray()
        loop = self.kernel.loop

        def readable() -> None:
            data = os.read(later.fd, 1 << 20)
            if data:
                got.extend(data)
                return
            loop.remove_reader(later.fd)
            os.close(later.fd)
            with contextlib.suppress(ChildProcessError):  # reaped already with the stubs' stops
                os.waitpid(later.pid, os.WNOHANG)
            try:
                reply = {"ok": True, **later.finish(cbor2.loads(bytes(got)) if got else {})}
            except (SnapboxError, cbor2.CBORDecodeError) as e:
                reply = {"ok": False, "error": str(e) or "the pre-dump failed"}
            with socket.socket(fileno=conn_fd) as conn:
                conn.settimeout(10)
                try:
                    control.send_message(conn, reply)
                except OSError as e:
                    log.warning("could not answer control request: %s", e)
        loop.add_reader(later.fd, readable)

    def _parent(self, path: str | None) -> dict | None:
        """The parent an incremental checkpoint names: this sandbox's last pre-dump, still
        the same file, or "-" for one written to a stream (None without --parent-path)."""
        if path is None:
            return None
        if not isinstance(path, str) or not (os.path.isabs(path) or path == "-"):
            raise SnapboxError("checkpoint needs an absolute parent path")
        last = self.tracking
        if last is None:
            raise SnapboxError(f"--parent-path {path}: this sandbox has made no pre-dump to build on")
        if last["path"] != path:
            raise SnapboxError(f"--parent-path {path}: not this sandbox's last pre-dump (that is {last['path']})")
        if path == "-":
            return last  # written to a stream (a migration's round): its reader checks the id
        try:
            with open(path, "rb") as f:
                same = ImageReader(f).meta.get("image_id") == last["id"]
        except (OSError, ImageError):
            same = False
        if not same:
            raise SnapboxError(f"--parent-path {path}: the pre-dump there is gone or has changed")
        return last

    def run(self) -> int | None:
        """Serve until init exits or a checkpoint stops the sandbox; returns init's status
        (None after a checkpoint)."""
        k = self.kernel
        while k.exit_status is None and not self.done:
            k.step()
        return None if self.done else k.exit_status


def _restore(image: str, bundle: Bundle, lazy: bool = False, network: str | None = None,
             memory: str | None = None, memory_id: str | None = None, base: str | None = None,
             working_set: str | None = None, publish: list | None = None) -> Kernel:
    """The Loader's restore path: from a file, or from stdin when `image` is "-". With `lazy`,
    memory is left in an image file to load as needed (a pipe is read whole all the same).
    With `memory`, the memory file at that path already holds the image's chain, up to
    the pre-dump `memory_id` (a migration's rounds). The sandbox's network (`network`, else
    the image's own mode) is joined before the graph is read: its sockets bind again as
    they load. With `base` (a clone: the path of its base's description), the image's
    memory is the base's (see runtime.clones), its private mappings shared with the other
    clones. With `working_set`, the memory that file names is loaded first, or the file is
    recorded (checkpoint.WorkingSet). With `publish` (--publish specs), those ports are
    published instead of the image's own."""
    try:
        if image == "-":
            f = os.fdopen(0, "rb", closefd=False, buffering=1 << 20)
        else:
            f = open(image, "rb", buffering=1 << 20)
    except OSError as e:
        raise SnapboxError(f"cannot open image {image} ({e.strerror})") from None
    progress = Progress(2, "restore") if os.isatty(2) else None
    try:
        with f:
            with _on_all_cpus():  # memory is decompressed on every CPU; stubs stay pinned
                ctx = LoadContext(rootfs=bundle.rootfs, host_sockets=[], memory=memory, memory_id=memory_id,
                                  working_set=working_set, republish=bool(publish))
                if base is not None:
                    ctx.base, ctx.base_files = read_base_description(base)
                net: dict = {}

                def join(meta: dict) -> None:
                    saved = meta.get("network") if isinstance(meta.get("network"), dict) else {}
                    mode = ctx.network_mode = network or saved.get("mode") or "none"
                    address = saved.get("address", "") if mode == saved.get("mode") else ""
                    # A namespace snapbox never made (no socket needed it) is made when needed.
                    net.update(_network(mode, bundle, lazy=mode == "sandbox" and not address, address=address))

                kernel, _ = Kernel.read_image(f, ctx, progress=progress, lazy=lazy, on_meta=join)
            kernel.network = net
            kernel.make_network = net.pop("make", None)
            kernel.host_sockets.update(ctx.host_sockets)
            if publish:
                withdraw_publications(kernel)
                for spec in publish:
                    publish_port(kernel, *parse_publish(spec))
            for p in kernel.published:
                p.aim()  # the listener a published port feeds may differ in this network mode
            for h in ctx.host_sockets:
                h.reconnect()
            kernel.attach_stubs()
            return kernel
    finally:
        if progress is not None:
            progress.close()


def _network(mode: str, bundle: Bundle, lazy: bool, address: str = "") -> dict:
    """The sandbox's network as Kernel.network holds it, joined now; or, when `lazy` and
    it is a namespace snapbox makes, with a "make" function the kernel calls when the
    sandbox first needs it (making one costs tens of ms, and pyroute2's import more)."""
    path = bundle_namespace(bundle.config) if mode == "sandbox" else ""
    if lazy and mode == "sandbox" and not path:
        return {"mode": mode, "make": lambda: enter_network(mode).as_dict()}
    return enter_network(mode, path, address).as_dict()


class _JSONFormatter(logging.Formatter):
    """runc's log lines: level, msg and an RFC 3339 time (what containerd parses)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="microseconds")
        return json.dumps({"time": when, "level": record.levelname.lower(),
                           "logger": record.name, "msg": record.getMessage()})


def _setup_logging(path: str, log_format: str) -> None:
    handler = logging.FileHandler(path)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def boot_main(root: str, cid: str, bundle_path: str, ready_fd: int, restore: str | None,
              debug_log: str | None = None, log_format: str = "text", strace: bool = False,
              lazy: bool = False, network: str | None = None, memory: str | None = None,
              memory_id: str | None = None, snapshot_to: str | None = None, base: str | None = None,
              tied_to: int = 0, working_set: str | None = None, publish: list | None = None) -> int:
    """Entry point of the sandbox process. Returns its exit code."""
    cdir = os.path.join(root, cid)
    _setup_logging(debug_log or os.path.join(cdir, "sandbox.log"), log_format)
    ready = os.fdopen(ready_fd, "wb")
    global _PLACEMENT
    try:
        bundle = Bundle.load(bundle_path)
        if bundle.cgroup:
            cgroups.join(bundle.cgroup)  # before any stub starts: they are all in it
        _PLACEMENT = Placement()
        remember_namespace()  # published ports are bound here, whatever network the sandbox joins
        if restore is not None:
            kernel = _restore(restore, bundle, lazy, network, memory, memory_id, base, working_set, publish)
        else:
            net = _network(network or "sandbox", bundle, lazy=True)
            # os.fsencode: arguments that were not UTF-8 on the command line (`do`) come
            # back as they were.
            kernel = Kernel.boot(bundle.rootfs, [os.fsencode(a) for a in bundle.args],
                                 [os.fsencode(e) for e in bundle.env], bundle.cwd, bundle.hostname,
                                 memory_limit=bundle.memory_limit, mounts=bundle.mounts, user=bundle.user,
                                 caps=CapSets(**bundle.capabilities) if bundle.capabilities is not None else None)
            kernel.make_network = net.pop("make", None)
            kernel.network = net
            for spec in publish or ():
                publish_port(kernel, *parse_publish(spec))
        if restore is None:
            init = kernel.tasks.init
            init.groups = list(bundle.groups)
            kernel.fs.readonly_root = bundle.readonly
            init.rlimits.update(bundle.rlimits)
            if 7 in bundle.rlimits:  # RLIMIT_NOFILE
                init.fds.limit = min(bundle.rlimits[7][0], 1 << 20)
            if bundle.no_new_privs:
                init.prctl["no_new_privs"] = 1
        if strace:
            kernel.strace = tracer
        sandbox = Sandbox(kernel, cdir, bundle.absolute_config(), snapshot_to)
        if tied_to:
            sandbox.tie_to(tied_to)
        if take_terminal():
            log.info("the console is this process's terminal: its signals go to the foreground group")
        _PLACEMENT.watch(kernel.loop.call_at, lambda: list(kernel.by_host))
    except SnapboxError as e:
        log.error("start failed: %s", e)
        ready.write(cbor2.dumps({"ok": False, "error": str(e)}))
        ready.close()
        return 1
    except Exception as e:
        log.error("start failed:\n%s", traceback.format_exc())
        ready.write(cbor2.dumps({"ok": False, "error": f"internal error: {e!r} (see {cdir}/sandbox.log)"}))
        ready.close()
        return 1
    ready.write(cbor2.dumps({"ok": True, "connections": [h.report() for h in kernel.host_sockets
                                                         if h.is_connection]}))
    ready.close()
    try:
        status = sandbox.run()
    except Exception:
        log.error("sandbox failed:\n%s", traceback.format_exc())
        kernel.shutdown()
        return 1
    kernel.shutdown()
    if status is None:
        log.info("sandbox ends: checkpointed")
        return 0
    record_end(sandbox.dir, {"status": status})
    log.info("sandbox ends: %s", status)
    return control.exit_code(status)


def record_end(cdir: str, record: dict) -> None:
    """Write <cdir>/exit.json: the program's wait status, or that a checkpoint stopped it."""
    _write_json(os.path.join(cdir, "exit.json"), record)


def _write_json(path: str, value: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)
