"""Clone pools: sandboxes restored from one image ahead of time, handed out when asked for.

A serverless platform initializes a function once, checkpoints it at the point where it is
ready (the program can choose that point itself: `--snapshot-to`), and starts every
invocation from that image. A clone pool keeps `size` sandboxes restored from the image and
held before their first instruction (created, clock stopped, nothing run since the
checkpoint); taking one hands it over as an ordinary container under the taker's id, on the
taker's stdio, with that id as its hostname, and starts it. A background process, the
refiller, restores a new clone for each one taken.

Layout, under the containers' root R:

    R/.clones/NAME/pool.json   what the pool is: image, bundle, size, network; why it cannot refill
    R/.clones/NAME/hits        one byte per take a ready clone served (misses, made: likewise)
    R/.clones/NAME/bundle/     the bundle clones are made with (the image's own config, unless given)
    R/.clones/NAME/ready/      the containers' root of the ready clones (ids c1, c2, ...)
    R/.clones/NAME/refill.pid  the refiller; R/.clones/NAME/refill.log its log
    R/.clones/NAME/wake        a FIFO: a take writes a byte to it, the refiller wakes up

A take moves a ready clone's directory to R/ID (one rename on one filesystem), tells its
sandbox where it now is and gives it the taker's stdio (the control protocol's `adopt`),
then starts it. With no clone ready it restores one there and then (a miss, counted). If
the image cannot be restored (deleted, corrupt, from another CPU), the refiller stops,
`pool list` says why, and the clones already ready go on being handed out; it tries again
once the image file changes.

Memory is shared: the refiller loads the image's memory once, checked, into a memfd (the
base), with the pages of the host files the image references (libraries, the program),
and a clone's private mappings (heap, stacks, anonymous memory, those files' pages:
everything but shared memory and tmpfs files, which it copies) are that memfd mapped
MAP_PRIVATE by its stubs, so clones share every page none of them has written, and the
host kernel gives a clone its own copy of a page when it first writes it
(snapbox.kernel.mm). A checkpoint of a
clone first gives it its own copy of everything: its image stands alone. Random numbers
come from the host at each call; `/proc/snapbox/restored` tells the program it was restored.
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
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from snapbox.errors import SnapboxError
from snapbox.kernel.checkpoint import describe_base, load_base
from snapbox.memfile import MemoryFile
from snapbox.runtime import control, warm
from snapbox.runtime.container import CREATED, CREATING, Container, Options

POOLS_DIR = ".clones"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
WAIT_PER_CLONE = 60.0  # seconds `create` waits for each clone to be restored


@dataclass
class ClonePool:
    """The clone pool `name` of the containers' root `root`."""

    root: str
    name: str
    # In the refiller: the clones' base memory, and _stat_of the image it was loaded from.
    base: MemoryFile | None = field(default=None, repr=False)
    base_of: list | None = field(default=None, repr=False)
    base_description: int = field(default=-1, repr=False)

    @property
    def dir(self) -> str:
        return os.path.join(self.root, POOLS_DIR, self.name)

    @property
    def ready_root(self) -> str:
        return os.path.join(self.dir, "ready")

    # -- making and finding ---------------------------------------------------------------

    @classmethod
    def create(cls, root: str, name: str, image: str, size: int, bundle: str | None = None,
               network: str | None = None) -> ClonePool:
        """Make the pool and start its refiller (the caller waits for the clones with wait())."""
        from snapbox.state.image import ImageReader

        if not _NAME.match(name):
            raise SnapboxError(f"invalid pool name {name!r} (letters, digits, '_', '.', '-')")
        if size < 0:
            raise SnapboxError("a pool's size cannot be negative")
        image = os.path.abspath(image)
        if not os.path.isfile(image):
            raise SnapboxError(f"image {image} does not exist")
        try:
            with open(image, "rb") as f:
                meta = ImageReader(f).meta
        except OSError as e:
            raise SnapboxError(f"cannot read image {image} ({e.strerror})") from None
        pool = cls(root, name)
        os.makedirs(os.path.dirname(pool.dir), mode=0o711, exist_ok=True)
        try:
            os.mkdir(pool.dir, 0o700)
        except FileExistsError:
            raise SnapboxError(f'pool "{name}" already exists') from None
        try:
            if bundle is None:
                config = meta.get("bundle_config")
                if not isinstance(config, dict):
                    raise SnapboxError(f"image {image} does not name its bundle: pass --bundle")
                bundle = os.path.join(pool.dir, "bundle")
                os.mkdir(bundle)
                with open(os.path.join(bundle, "config.json"), "w") as f:
                    json.dump(config, f)
            os.mkfifo(os.path.join(pool.dir, "wake"), 0o600)
            pool._write({"name": name, "image": image, "bundle": os.path.abspath(bundle), "size": size,
                         "network": network, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                         "error": None, "error_image": None})
            pool._start_refiller()
        except BaseException:
            shutil.rmtree(pool.dir, ignore_errors=True)
            raise
        return pool

    @classmethod
    def load(cls, root: str, name: str) -> ClonePool:
        pool = cls(root, name)
        if not _NAME.match(name) or not os.path.exists(os.path.join(pool.dir, "pool.json")):
            raise SnapboxError(f'pool "{name}" does not exist')
        return pool

    @classmethod
    def list(cls, root: str) -> list[ClonePool]:
        try:
            names = sorted(os.listdir(os.path.join(root, POOLS_DIR)))
        except FileNotFoundError:
            return []
        return [cls(root, n) for n in names if os.path.exists(os.path.join(root, POOLS_DIR, n, "pool.json"))]

    # -- state --------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        try:
            with open(os.path.join(self.dir, "pool.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise SnapboxError(f'pool "{self.name}" does not exist') from None
        except (OSError, ValueError) as e:
            raise SnapboxError(f'cannot read pool "{self.name}" ({e})') from None

    def _write(self, info: dict[str, Any]) -> None:
        path = os.path.join(self.dir, "pool.json")
        with open(path + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(path + ".tmp", path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update(self, **fields: Any) -> dict[str, Any]:
        """Set fields of pool.json, under the pool's lock; returns the new record."""
        with self._locked():
            info = {**self.info(), **fields}
            self._write(info)
            return info

    def _add(self, counter: str) -> int:
        """Count one more `counter` (hits, misses, made): a byte appended to its file, the
        cheapest atomic update there is (a take must be fast); returns the count."""
        fd = os.open(os.path.join(self.dir, counter), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b".")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def _counted(self, counter: str) -> int:
        try:
            return os.stat(os.path.join(self.dir, counter)).st_size
        except FileNotFoundError:
            return 0

    def _oldest_ready(self) -> Container | None:
        """The oldest clone ready to be taken, reading no more states than it must: the
        refiller numbers clones c1, c2, ... as it makes them."""
        try:
            names = [n for n in os.listdir(self.ready_root) if re.fullmatch(r"c\d+", n)]
        except FileNotFoundError:
            return None
        for name in sorted(names, key=lambda n: int(n[1:])):
            with contextlib.suppress(SnapboxError):
                if os.path.exists(os.path.join(self.ready_root, name, "state.json")):
                    clone = Container.load(self.ready_root, name)
                    if clone.status == CREATED:
                        return clone
        return None

    def ready(self) -> list[Container]:
        """The clones ready to be taken (restored, not started, alive), oldest first."""
        clones = [c for c in Container.list(self.ready_root) if c.status == CREATED]
        return sorted(clones, key=lambda c: c.state.get("created", ""))

    def status(self) -> dict[str, Any]:
        """What `pool list` shows: the pool's record, how many clones are ready, the refiller."""
        info = self.info()
        return {**info, "ready": len(self.ready()), "hits": self._counted("hits"), "misses": self._counted("misses"),
                "refiller": self._refiller_pid()}

    # -- taking -------------------------------------------------------------------------------

    def take(self, cid: str, stdio: tuple[int, int, int] = (0, 1, 2)) -> tuple[Container, bool]:
        """Hand out a clone as container `cid`, running on the host fds `stdio` (stdin,
        stdout, stderr); (the container, whether it was ready: a hit)."""
        Container.check_id(cid)
        target = os.path.join(self.root, cid)
        if os.path.exists(target):
            raise SnapboxError(f'container "{cid}" already exists')
        info = self.info()
        while True:
            with self._locked():
                clone = self._oldest_ready()
                if clone is None:
                    break
                os.rename(clone.dir, target)
            try:
                c = self._hand_over(cid, info, stdio)
            except SnapboxError as e:  # it died while ready: the next one
                print(f"snapbox: warning: clone {clone.id} of pool {self.name} could not be taken ({e})",
                      file=sys.stderr)
                with contextlib.suppress(SnapboxError):
                    Container.load(self.root, cid).delete(force=True)
                shutil.rmtree(target, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                self._wake()  # after the hand-over: a refill would compete with it for the CPU
            self._add("hits")
            return c, True
        self._add("misses")
        with contextlib.suppress(OSError):
            self._wake()
        Container.create(self.root, cid, info["bundle"], restore_image=info["image"], hold=True,
                         options=Options(network=info.get("network")))
        return self._hand_over(cid, info, stdio), False

    def _hand_over(self, cid: str, info: dict[str, Any], stdio: tuple[int, int, int]) -> Container:
        """The clone now at R/cid: its sandbox runs on `stdio` as `cid`, and starts; its
        state (saved by the start) says it is `cid`, with a bundle of its own."""
        c = Container.load(self.root, cid)
        with c.locked():
            c._require("take", CREATED)
            _schedule_normally(c.state["pid"])
            # Started by the adopt itself, unless a startContainer hook must run before.
            now = not c.state.get("hooks", {}).get("startContainer")
            control.call(c.control_path, "adopt", fds=list(stdio), dir=c.dir, hostname=cid, start=now)
            c.state["id"] = cid
            c.state["bundle"] = _own_bundle(self.root, cid, info["bundle"])
            if now:
                c._started()
            else:
                c._start()
        return c

    def _wake(self) -> None:
        fd = os.open(os.path.join(self.dir, "wake"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)

    # -- waiting and deleting -----------------------------------------------------------------

    def wait(self, report=None) -> None:
        """Wait until the pool is full, or its refiller says why it cannot be."""
        size = self.info()["size"]
        deadline = time.monotonic() + WAIT_PER_CLONE * max(size, 1)
        while True:
            info, ready = self.info(), len(self.ready())
            if report is not None:
                report(ready, size)
            if ready >= size:
                return
            if info.get("error"):
                raise SnapboxError(f'pool "{self.name}" cannot make clones: {info["error"]}')
            if self._refiller_pid() is None:
                raise SnapboxError(f'the refiller of pool "{self.name}" is gone (see {self.dir}/refill.log)')
            if time.monotonic() > deadline:
                raise SnapboxError(f'pool "{self.name}" has {ready} of {size} clones ready after '
                                   f'{WAIT_PER_CLONE * max(size, 1):.0f}s')
            time.sleep(0.02)

    def delete(self) -> None:
        """End the refiller and every ready clone, and remove the pool (taken clones are
        containers of their own and go on)."""
        with self._locked():
            os.unlink(os.path.join(self.dir, "pool.json"))  # the refiller ends when it sees this
        pid = self._refiller_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 10.0)
        for c in Container.list(self.ready_root):
            with contextlib.suppress(SnapboxError):
                c.delete(force=True)
        if warm.running(self.ready_root) is not None:
            with contextlib.suppress(SnapboxError):
                warm.stop(self.ready_root)
        shutil.rmtree(self.dir)

    # -- the refiller -------------------------------------------------------------------------

    def _start_refiller(self) -> None:
        with open(os.path.join(self.dir, "refill.log"), "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "snapbox", "--root", self.root, "pool", "serve", self.name],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                 env=warm.sandbox_env())
        with open(os.path.join(self.dir, "refill.pid"), "w") as f:
            f.write(str(p.pid))

    def _base(self, image: str) -> str:
        """The path of the description of the clones' base (this process's memfd holding
        the image's memory, checked, and the pages of the host files it references; see
        checkpoint.describe_base), loaded anew when the image has changed."""
        if self.base is None or self.base_of != _stat_of(image):
            with _open_image(image) as f:
                base, files = load_base(f)
            if self.base is not None:
                self.base.close()  # the clones that map it keep it
                os.close(self.base_description)
            self.base, self.base_of = base, _stat_of(image)
            self.base_description = describe_base(base, files)
        return f"/proc/{os.getpid()}/fd/{self.base_description}"

    def _refiller_pid(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "refill.pid")) as f:
                pid = int(f.read())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid

    def serve(self) -> int:
        """The refiller: keep `size` clones ready until the pool is deleted. It runs at
        idle priority (SCHED_IDLE), and so does all it starts (the ready clones' warm pool,
        their sandbox processes and stubs): restoring the next clone never takes the CPU
        from a clone just taken, which a take gives normal priority back."""
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        wake = os.open(os.path.join(self.dir, "wake"), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        while True:
            warm.reap()  # the sandbox processes of clones it restored without a warm pool
            try:
                info = self.info()
            except SnapboxError:
                return 0  # deleted
            for c in Container.list(self.ready_root):
                if c.status not in (CREATED, CREATING):  # a clone that died while ready
                    with contextlib.suppress(SnapboxError):
                        c.delete(force=True)
            if info.get("error") and info.get("error_image") != _stat_of(info["image"]):
                info = self._update(error=None, error_image=None)  # the image changed: try again
            if not info.get("error") and len(self.ready()) < info["size"]:
                self._refill(info)
                continue
            if select.select([wake], [], [], 1.0)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)

    def _refill(self, info: dict[str, Any]) -> None:
        try:
            base = self._base(info["image"])
            n = self._add("made")
            Container.create(self.ready_root, f"c{n}", info["bundle"], restore_image=info["image"], hold=True,
                             options=Options(network=info.get("network"), base=base))
        except SnapboxError as e:
            print(f"snapbox: pool {self.name}: cannot restore a clone: {e}", file=sys.stderr, flush=True)
            self._update(error=str(e), error_image=_stat_of(info["image"]))


def _open_image(path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise SnapboxError(f"cannot read image {path} ({e.strerror})") from None


def _own_bundle(root: str, cid: str, bundle: str) -> str:
    """The pool's bundle, as the taken container's own (R/.bundles/ID, removed with it): a
    link to the pool's config.json, which outlives the pool."""
    path = os.path.join(root, ".bundles", cid)
    os.makedirs(path, mode=0o700, exist_ok=True)
    config = os.path.join(path, "config.json")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(config)
    try:
        os.link(os.path.join(bundle, "config.json"), config)
    except OSError:
        shutil.copyfile(os.path.join(bundle, "config.json"), config)
    return path


def _schedule_normally(pid: int) -> None:
    """Give every thread of process `pid` and of its descendants (a clone's sandbox
    process and its stubs) the normal scheduling policy again (see ClonePool.serve)."""
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))
                with contextlib.suppress(OSError), open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]


def _stat_of(path: str) -> list | None:
    """What tells a changed image file: inode, size and modification time."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return [s.st_ino, s.st_size, s.st_mtime_ns]


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError as e:
            if e.errno == errno.ESRCH:
                return
        time.sleep(0.01)
