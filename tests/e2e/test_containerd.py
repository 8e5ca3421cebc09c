"""containerd drives snapbox as its runtime binary, through its own runc shim, as it drives
runc: a private containerd (its own socket, root and state), a busybox image built here and
imported with no registry, and `ctr` run against snapbox and against runc side by side,
with the same output and exit codes expected from both."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from snapbox.runtime.cgroups import hierarchies
from tests.conftest import wait_for
from tests.e2e.test_terminal import interrupt_a_job, read_until

IMAGE = "snapbox.test/busybox:latest"
SNAPBOX = shutil.which("snapbox", path=str(Path(sys.executable).parent)) or shutil.which("snapbox")


def oci_archive(rootfs: Path, out: Path) -> None:
    """An OCI image layout, as a tar `ctr images import` takes: one uncompressed layer of
    `rootfs`, a config, a manifest and an index naming it "latest"."""
    blobs: dict[str, bytes] = {}

    def blob(media_type: str, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{digest}"] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        t.add(str(rootfs), arcname=".")
    lay = blob("application/vnd.oci.image.layer.v1.tar", layer.getvalue())
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [lay["digest"]]}}
    cfg = blob("application/vnd.oci.image.config.v1+json", json.dumps(config).encode())
    manifest = blob("application/vnd.oci.image.manifest.v1+json", json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg,
         "layers": [lay]}).encode())
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    blobs["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [manifest]}).encode()
    blobs["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    with tarfile.open(out, "w") as t:
        for name, data in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


class Containerd:
    """A containerd of this test's own, and `ctr` against it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "containerd.sock"
        self.snapbox_root = base / "snapbox"
        (base / "config.toml").write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{base}/debug.sock"
""")
        self.log = open(base / "containerd.log", "w")
        self.process = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=self.log,
                                        stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.ctr("version", check=False).returncode == 0, timeout=30, what="containerd")

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(["ctr", "-a", str(self.sock), "-n", "snapbox-test", *args], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def run(self, runtime: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """`ctr run` with runc, or with snapbox as the runc binary of containerd's runc shim."""
        use = ["--runc-binary", SNAPBOX, "--runc-root", str(self.snapbox_root)] if runtime == "snapbox" else []
        return self.ctr("run", "--runtime", "io.containerd.runc.v2", *use, *args, check=check)

    def status(self, task: str) -> str:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields[0] == task:
                return fields[2]
        return ""

    def stop(self) -> None:
        for line in self.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
            self.ctr("task", "kill", "-s", "KILL", line.split()[0], check=False)
            self.ctr("task", "rm", "-f", line.split()[0], check=False)
        for line in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", line, check=False)
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()
        root = self.snapbox_root / "snapbox-test"  # the shim's --root: the runc root, then the namespace
        if (root / ".warm.pid").exists():
            subprocess.run([SNAPBOX, "--root", str(root), "warm", "--stop"], capture_output=True)
        with open("/proc/self/mounts") as f:  # the shims unmount the rootfs they mounted; make sure
            for line in f:
                where = line.split()[1]
                if where.startswith(str(self.base)):
                    subprocess.run(["umount", "-l", where], capture_output=True)
        # The namespace's cgroup, which runc makes for its containers' and leaves behind.
        for top in hierarchies():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, "snapbox-test"))


@pytest.fixture
def containerd(images):
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd is not installed (scripts/setup installs it)")
    base = Path(tempfile.mkdtemp(prefix="sbctd-", dir="/tmp"))  # short: socket paths have a limit
    c = Containerd(base)
    try:
        oci_archive(images / "busybox" / "rootfs", base / "busybox.tar")
        c.ctr("images", "import", "--base-name", "snapbox.test/busybox", str(base / "busybox.tar"))
        yield c
    finally:
        c.stop()
        shutil.rmtree(base, ignore_errors=True)


def sandbox_processes(c: Containerd) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(c.snapbox_root) in line and "warm --serve" not in line]


def test_ctr_drives_snapbox_as_it_drives_runc(containerd):
    c = containerd
    for runtime in ("runc", "snapbox"):
        # Attached, --rm: output and exit codes are the program's.
        p = c.run(runtime, "--rm", IMAGE, f"{runtime}-a", "echo", "hello")
        assert (p.returncode, p.stdout) == (0, "hello\n"), (runtime, p.stderr)
        p = c.run(runtime, "--rm", IMAGE, f"{runtime}-b", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (p.returncode, p.stdout, p.stderr.splitlines()[:1]) == (3, "out\n", ["err"]), runtime

        # Detached, then exec, ps, pause/resume, kill and delete.
        task = f"{runtime}-d"
        c.run(runtime, "-d", IMAGE, task, "sh", "-c", "while true; do sleep 0.2; done", check=True)
        wait_for(lambda: c.status(task) == "RUNNING", what=f"{runtime} task running")
        # Which kernel it runs on: snapbox's sentry has /proc/snapbox, Linux has not.
        p = c.ctr("task", "exec", "--exec-id", "k", task, "cat", "/proc/snapbox/restored", check=False)
        assert (p.returncode, p.stdout) == ((0, "0\n") if runtime == "snapbox" else (1, "")), (runtime, p.stderr)
        if runtime == "snapbox":
            assert (c.snapbox_root / "snapbox-test" / task / "state.json").exists()  # the shim's --root
            # The root's first sandbox started a warm pool: what follows goes through it.
            wait_for(lambda: (c.snapbox_root / "snapbox-test" / ".warm.pid").exists(), what="the warm pool")
        p = c.ctr("task", "exec", "--exec-id", "e1", task, "sh", "-c", "echo in exec $((2 + 3)); exit 5",
                  check=False)
        assert (p.returncode, p.stdout) == (5, "in exec 5\n"), (runtime, p.stderr)
        # Host pids, the shell's first (the loop's short-lived sleeps may be gone by the time
        # they are looked at).
        pids = [line.split()[0] for line in c.ctr("task", "ps", task).stdout.splitlines()[1:]]
        assert pids and os.path.exists(f"/proc/{pids[0]}"), (runtime, pids)
        c.ctr("task", "pause", task)
        assert c.status(task) == "PAUSED"
        c.ctr("task", "resume", task)
        assert c.status(task) == "RUNNING"
        c.ctr("task", "kill", task)  # SIGTERM: a shell as init without a trap ignores it
        time.sleep(0.5)
        assert c.status(task) == "RUNNING", runtime
        c.ctr("task", "kill", "-s", "KILL", task)
        wait_for(lambda: c.status(task) == "STOPPED", what=f"{runtime} task stopped")
        c.ctr("task", "rm", task)
        c.ctr("containers", "rm", task)
    left = [d for d in os.listdir(c.snapbox_root / "snapbox-test") if not d.startswith(".")]
    assert left == [], left
    assert sandbox_processes(c) == []


def on_a_terminal(argv: list[str]) -> tuple[int, int]:
    """Start `argv` on a new pty, as a user at a terminal would; (pid, master)."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    return pid, master


def end_of(pid: int, master: int, timeout: float = 30) -> int:
    """Wait for the process on `master` to end, reading what it prints; its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "the terminal's program did not end"
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os.close(master)
            return os.waitstatus_to_exitcode(status)
        if select.select([master], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):
                os.read(master, 4096)


def test_ctr_terminal_checkpoint_restore_and_metrics(containerd):
    c = containerd
    ctr = ["ctr", "-a", str(c.sock), "-n", "snapbox-test"]
    for runtime in ("runc", "snapbox"):
        use = ["--runc-binary", SNAPBOX, "--runc-root", str(c.snapbox_root)] if runtime == "snapbox" else []
        # `ctr run -t`: a shell on a console; ^C ends its job, not the shell; its exit code is ctr's.
        pid, master = on_a_terminal([*ctr, "run", "--runtime", "io.containerd.runc.v2", *use, "-t", "--rm",
                                     IMAGE, f"{runtime}-t", "sh"])
        read_until(master, b"# ")
        interrupt_a_job(master)
        os.write(master, b"exit 7\n")
        assert end_of(pid, master) == 7, runtime

        task = f"{runtime}-m"
        c.run(runtime, "-d", IMAGE, task, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; "
                                                       "mv /tmp/n.new /tmp/n; sleep 0.1; done", check=True)
        wait_for(lambda: c.status(task) == "RUNNING", what=f"{runtime} task running")
        # `ctr task exec -t`, on a console of its own.
        pid, master = on_a_terminal([*ctr, "task", "exec", "-t", "--exec-id", "t", task, "sh"])
        read_until(master, b"# ")
        interrupt_a_job(master)
        os.write(master, b"exit 4\n")
        assert end_of(pid, master) == 4, runtime
        # Metrics are the task's own cgroup's: its processes, not the host's.
        metrics = dict(line.split(None, 1) for line in c.ctr("task", "metrics", task).stdout.splitlines()[3:]
                       if line.strip())
        assert 1 <= int(metrics["pids.current"]) <= 8, (runtime, metrics)
        if runtime == "runc":  # CRIU cannot checkpoint on this kernel (runc fails); snapbox can
            c.ctr("task", "kill", "-s", "KILL", task)
            wait_for(lambda: c.status(task) == "STOPPED", what="runc task stopped")
            c.ctr("task", "rm", task)
            c.ctr("containers", "rm", task)
            continue
        # `ctr c checkpoint --task`, then the container gone and restored from the image.
        c.ctr("containers", "checkpoint", "--task", "--image", "--rw", task, "snapbox.test/ckpt:1")
        before = int(c.ctr("task", "exec", "--exec-id", "n1", task, "cat", "/tmp/n").stdout)
        c.ctr("task", "kill", "-s", "KILL", task)
        wait_for(lambda: c.status(task) == "STOPPED", what="snapbox task stopped")
        c.ctr("task", "rm", task)
        c.ctr("containers", "rm", task)
        c.ctr("containers", "restore", "--live", "--rw", task, "snapbox.test/ckpt:1")
        wait_for(lambda: c.status(task) == "RUNNING", what="the restored task")
        p = c.ctr("task", "exec", "--exec-id", "n2", task, "cat", "/proc/snapbox/restored")
        assert p.stdout == "1\n"
        wait_for(lambda: int(c.ctr("task", "exec", "--exec-id", "n3", task, "cat", "/tmp/n").stdout) > before,
                 what="the restored loop to go on")
        c.ctr("task", "kill", "-s", "KILL", task)
        wait_for(lambda: c.status(task) == "STOPPED", what="restored task stopped")
        c.ctr("task", "rm", task)
        c.ctr("containers", "rm", task)
    left = [d for d in os.listdir(c.snapbox_root / "snapbox-test") if not d.startswith(".")]
    assert left == [], left
    assert sandbox_processes(c) == []
