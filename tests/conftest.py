"""Shared test fixtures: the fixture bundles, and a snapbox CLI bound to a temporary root."""

from __future__ import annotations

import difflib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from snapbox.kernel.loop import SENTRY_SIGNALS

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "fixtures" / "images"
BUNDLES = ("counter", "counter-glibc", "sockets", "sockets-glibc", "inet", "inet-glibc", "udp", "udp-glibc", "unixdgram", "unixdgram-glibc", "calls", "calls-glibc", "sigfd", "sigfd-glibc", "memhog", "memhog-glibc", "hello", "hello-glibc", "signals",
           "signals-glibc", "threads", "threads-glibc", "mapping", "mapping-glibc", "events", "events-glibc", "locks", "locks-glibc",
           "jobs", "jobs-glibc", "shared", "resolve", "busybox", "ipc", "ipc-glibc", "clonemem", "clonemem-glibc", "creds",
           "creds-glibc", "frames", "frames-glibc", "pty",
           "pty-glibc", "xattr", "xattr-glibc", "splice", "splice-glibc", "chroot",
           "chroot-glibc", "inotify", "inotify-glibc", "aio",
           "aio-glibc", "futex", "futex-glibc", "procfs", "procfs-glibc",
           "spawn", "spawn-glibc", "seccomp", "seccomp-glibc", "epolls", "epolls-glibc", "unshare", "unshare-glibc", "mounts", "mounts-glibc", "setid", "setid-glibc", "ptypkt", "ptypkt-glibc", "setns", "setns-glibc", "seccompnotify", "seccompnotify-glibc", "requeuepi", "requeuepi-glibc", "fowner", "fowner-glibc", "clocks", "clocks-glibc", "affinity", "affinity-glibc", "bigmap", "bigmap-glibc", "dirents", "dirents-glibc", "pidfd", "pidfd-glibc", "netif", "netif-glibc", "vdso", "vdso-glibc", "udplite", "udplite-glibc", "ipheader", "ipheader-glibc", "sigio", "sigio-glibc", "threadcreds", "unixcreds", "unixcreds-glibc",
           "threadcreds-glibc", "fileedges", "fileedges-glibc", "memlock",
           "memlock-glibc", "execat", "execat-glibc", "userns", "userns-glibc", "pastend", "pastend-glibc", "writelimits", "sharing", "sharing-glibc", "procnet", "procnet-glibc", "keys", "keys-glibc",
           "writelimits-glibc")


@pytest.fixture(scope="session")
def images() -> Path:
    """The fixture bundles, built from fixtures/images/src if missing or stale."""
    sources = max(p.stat().st_mtime for p in (IMAGES / "src").iterdir())
    stale = any(not (IMAGES / b / "config.json").exists()
                or (IMAGES / b / "config.json").stat().st_mtime < sources for b in BUNDLES)
    if stale:
        subprocess.run([str(IMAGES / "build.sh")], check=True, capture_output=True)
    return IMAGES


class Snapbox:
    """The snapbox CLI with its own --root, as a user would run it."""

    def __init__(self, root: Path, images: Path) -> None:
        self.root = root
        self.images = images

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "snapbox", "--root", str(self.root), *args]

    def __call__(self, *args: str, check: bool = True, env: dict | None = None,
                 stdout=subprocess.PIPE, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(self.cmd(*args), stdout=stdout, stderr=subprocess.PIPE, text=True,
                           env=env, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"snapbox {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def run_detached(self, cid: str, bundle: str, out: Path, *, restore: Path | None = None,
                     lazy: bool = False, env: dict | None = None,
                     check: bool = True, extra: tuple = ()) -> subprocess.CompletedProcess:
        """run (or restore, perhaps --lazy) --detach, the program's stdout appended to `out`
        and its stderr to `out`.err. A detached sandbox keeps the caller's stdio, so no
        pipes: the returned stderr is what the command itself added to the .err file.
        `extra`: more options of restore."""
        if restore is None:
            args = ("run", "--bundle", str(self.images / bundle), "--detach", cid)
        else:
            args = ("restore", "--bundle", str(self.images / bundle), "--image-path", str(restore),
                    *(["--lazy"] if lazy else []), *extra, "--detach", cid)
        err_path = out.with_name(out.name + ".err")
        start = err_path.stat().st_size if err_path.exists() else 0
        with open(out, "a") as f, open(err_path, "a") as err:
            p = subprocess.run(self.cmd(*args), stdout=f, stderr=err, env=env, timeout=60,
                               stdin=subprocess.DEVNULL)
        with open(err_path) as err:
            err.seek(start)
            p.stderr = err.read()
        if check and p.returncode != 0:
            raise AssertionError(f"snapbox {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def sandbox_pid(self, cid: str) -> int:
        import json

        return json.loads(self("state", cid).stdout)["pid"]


@pytest.fixture(autouse=True)
def _sentry_signals_unblocked():
    """Kernels run in this process block SIGCHLD and SIGIO (they read them from a signalfd);
    programs a later test starts natively must not inherit that mask (a shell would never
    see its children end)."""
    yield
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SENTRY_SIGNALS)


def in_background(target, *args) -> threading.Thread:
    """A daemon thread running target(*args) that leaves the sentry's signals alone: a
    kernel a later test runs in this process reads SIGCHLD from a signalfd, and a thread
    with it unblocked would take it instead (that kernel would never wake)."""
    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, SENTRY_SIGNALS)
        target(*args)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# The first sandbox of a root starts a warm pool there (see snapbox.runtime.warm); those of
# the tests' roots end soon after their test even when a test leaves before it listens.
os.environ.setdefault("SNAPBOX_WARM_IDLE", "10")


@pytest.fixture
def snapbox(tmp_path: Path, images: Path):
    sb = Snapbox(tmp_path / "root", images)
    yield sb
    clean_up(sb)


def clean_up(sb: Snapbox) -> None:
    """Delete the clone pools and containers left under the root, and stop its warm pool."""
    if sb.root.exists():
        if (sb.root / ".clones").exists():
            for name in os.listdir(sb.root / ".clones"):
                sb("pool", "delete", name, check=False)
        for cid in os.listdir(sb.root):
            if not cid.startswith("."):
                sb("delete", "--force", cid, check=False)
        if (sb.root / ".warm.pid").exists():
            sb("warm", "--stop", check=False)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def lines(path: Path) -> list[str]:
    """The complete lines written so far to `path`."""
    if not path.exists():
        return []
    text = path.read_text()
    return text.split("\n")[:-1]


# Programs compared with their native runs.
# How a fixture runs natively: without CAP_NET_RAW, which no process of a sandbox has
# (snapbox.kernel.creds.WITHHELD_CAPS), so that capability sets print alike.
NATIVE = ["setpriv", "--bounding-set", "-net_raw", "--"]


def native_fixture(images: Path, bundle: str, *args: str, cwd: Path | None = None, timeout: float = 30) -> str:
    """What the program of fixture bundle `bundle` prints run natively on the host."""
    binary = images / bundle / "rootfs" / bundle
    return subprocess.run([*NATIVE, str(binary), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd).stdout


def same_output(got: str, want: str) -> bool:
    """Equal, or an assertion that shows the difference line by line."""
    if got != want:
        diff = "\n".join(difflib.unified_diff(want.splitlines(), got.splitlines(), "native", "snapbox", lineterm=""))
        raise AssertionError(f"output differs from the native run:\n{diff}")
    return True


def busybox_bundle(images: Path, tmp_path: Path, script: str, name: str = "bb") -> Path:
    """A bundle on the busybox fixture's rootfs that runs `script` with sh -c, in /work."""
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin", "HOME=/tmp"], "cwd": "/work"},
        "root": {"path": str(images / "busybox" / "rootfs")},
    }))
    return bundle


def native(images: Path, tmp_path: Path, script: str) -> str:
    """The same script under the same busybox, on the host, in an empty directory; stdout
    and stderr go to one file, as they do for the sandbox."""
    work = tmp_path / "native-work"
    work.mkdir()
    busybox = images / "busybox" / "rootfs" / "bin" / "busybox"
    out = tmp_path / "native.txt"
    with open(out, "w") as f:
        subprocess.run([str(busybox), "sh", "-c", script], cwd=work, stdout=f, stderr=f,
                       env={"PATH": str(busybox.parent), "HOME": str(work)}, timeout=60)
    return out.read_text()


def in_sandbox(snapbox, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A snapbox command whose stdout and stderr (and so the sandbox's) go to `out`."""
    with open(out, "a") as f:
        p = subprocess.run(snapbox.cmd(*args), stdout=f, stderr=f, stdin=subprocess.DEVNULL, timeout=60)
    if check:
        assert p.returncode == 0, out.read_text()
    return p


def held_through_a_restore(snapbox, images, tmp_path, program: str, done: str, lazy: bool) -> list[str]:
    """Run `program hold`, checkpoint it once it says "holding", restore it (perhaps
    lazily), and return its lines once `done` is among them."""
    bundle = tmp_path / "hold"
    bundle.mkdir()
    config = json.loads((images / program / "config.json").read_text())
    config["process"]["args"] = [f"/{program}", "hold"]
    config["root"]["path"] = str(images / program / "rootfs")
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle_held_through_a_restore(snapbox, bundle, tmp_path, done, lazy)


def bundle_held_through_a_restore(snapbox, bundle: Path, tmp_path: Path, done: str, lazy: bool) -> list[str]:
    """Run `bundle`, checkpoint it once it says "holding", restore it (perhaps lazily),
    and return its lines once `done` is among them."""
    out = tmp_path / "out.txt"
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "h0"), stdout=f, stderr=f,
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
    wait_for(lambda: "holding" in lines(out), timeout=30, what="the program to hold")
    image = tmp_path / "h.img"
    snapbox("checkpoint", "--image-path", str(image), "h0")
    snapbox("delete", "h0")
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("restore", "--bundle", str(bundle), "--image-path", str(image),
                                   *(["--lazy"] if lazy else []), "--detach", "h1"),
                       stdout=f, stderr=f, check=True, timeout=60, stdin=subprocess.DEVNULL)
    wait_for(lambda: done in lines(out), timeout=30, what="the exchange to finish")
    return lines(out)
