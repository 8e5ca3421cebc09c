"""The OCI lifecycle: create/start, hooks, pid and console files, bundle process settings,
the status machine's errors, and two CLIs on one container at once."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for


def busybox_config(images: Path, script: str, **process) -> dict:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/", **process},
        "root": {"path": str(images / "busybox" / "rootfs")},
    }


def write_bundle(tmp_path: Path, config: dict, name: str = "b") -> Path:
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_create_start_with_hooks_and_pid_file(snapbox, images, tmp_path):
    log = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\nstatus=$(cat | sed 's/.*\"status\": \"\\([a-z]*\\)\".*/\\1/')\n"
                    f"echo \"$1 $status\" >> {log}\n")
    hook.chmod(0o755)
    config = busybox_config(images, "echo ran")
    config["hooks"] = {kind: [{"path": str(hook), "args": [str(hook), kind]}]
                       for kind in ("createRuntime", "prestart", "poststart", "poststop")}
    bundle = write_bundle(tmp_path, config)
    pid_file = tmp_path / "pid"
    out = tmp_path / "out"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "c1"),
                       stdout=f, stderr=f, check=True, timeout=60)
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "created"
    assert int(pid_file.read_text()) == snapbox.sandbox_pid("c1")
    assert out.read_text() == ""  # created, not started
    snapbox("start", "c1")
    wait_for(lambda: out.read_text() == "ran\n", what="the program to run")
    wait_for(lambda: json.loads(snapbox("state", "c1").stdout)["status"] == "stopped", what="it to stop")
    snapbox("delete", "c1")
    assert log.read_text().splitlines() == ["createRuntime created", "prestart created",
                                            "poststart running", "poststop stopped"]


def test_a_failing_prestart_hook_fails_create_and_leaves_nothing(snapbox, images, tmp_path):
    config = busybox_config(images, "echo ran")
    config["hooks"] = {"prestart": [{"path": "/bin/false"}]}
    p = snapbox("create", "--bundle", str(write_bundle(tmp_path, config)), "c1", check=False)
    assert p.returncode == 1 and p.stderr.startswith("snapbox: error: prestart hook /bin/false failed")
    assert json.loads(snapbox("list", "--format", "json").stdout) == []


def test_console_socket_receives_the_terminal(snapbox, images, tmp_path):
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    bundle = write_bundle(tmp_path, busybox_config(images, "[ -t 1 ] && echo on-a-terminal", terminal=True))
    creator = subprocess.Popen(snapbox.cmd("create", "--bundle", str(bundle), "--console-socket", path, "c1"),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    conn, _ = server.accept()
    _, ancillary, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(4))
    (master,) = struct.unpack("i", ancillary[0][2][:4])
    assert creator.wait(timeout=30) == 0
    snapbox("start", "c1")
    seen = b""
    while b"on-a-terminal" not in seen:
        seen += os.read(master, 100)
    os.close(master)
    conn.close()
    server.close()


def test_rlimits_and_no_new_privileges_from_the_bundle(snapbox, images, tmp_path):
    config = busybox_config(images, "ulimit -n; ulimit -s; grep NoNewPrivs /proc/self/status || true; "
                                    "cat /proc/self/status | grep -c Name",
                            rlimits=[{"type": "RLIMIT_NOFILE", "soft": 77, "hard": 99},
                                     {"type": "RLIMIT_STACK", "soft": 4 << 20, "hard": 4 << 20}],
                            noNewPrivileges=True)
    p = snapbox("run", "--bundle", str(write_bundle(tmp_path, config)), "r1")
    assert p.stdout.splitlines()[:2] == ["77", "4096"]
    assert "not supported" not in p.stderr


def test_every_status_error(snapbox, images, tmp_path):
    bundle = write_bundle(tmp_path, busybox_config(images, "sleep 100"))
    with open(tmp_path / "out", "w") as f:
        subprocess.run(snapbox.cmd("create", "--bundle", str(bundle), "c1"), stdout=f, stderr=f, check=True)

    def error(*args: str) -> str:
        p = snapbox(*args, check=False)
        assert p.returncode == 1
        return p.stderr

    assert error("pause", "c1") == 'snapbox: error: cannot pause container "c1" in state created\n'
    assert error("resume", "c1") == 'snapbox: error: cannot resume container "c1" in state created\n'
    assert error("checkpoint", "--image-path", str(tmp_path / "i"), "c1") == \
        'snapbox: error: cannot checkpoint container "c1" in state created\n'
    assert error("create", "--bundle", str(bundle), "c1") == 'snapbox: error: container "c1" already exists\n'
    snapbox("start", "c1")
    assert error("start", "c1") == 'snapbox: error: cannot start container "c1" in state running\n'
    assert error("resume", "c1") == 'snapbox: error: cannot resume container "c1" in state running\n'
    snapbox("pause", "c1")
    assert error("pause", "c1") == 'snapbox: error: cannot pause container "c1" in state paused\n'
    assert error("exec", "c1", "true") == 'snapbox: error: cannot exec in container "c1" in state paused\n'
    snapbox("kill", "c1", "KILL")
    wait_for(lambda: json.loads(snapbox("state", "c1").stdout)["status"] == "stopped", what="stopped")
    assert error("kill", "c1") == 'snapbox: error: cannot signal container "c1": container not running\n'
    assert error("start", "c1") == 'snapbox: error: cannot start container "c1" in state stopped\n'
    snapbox("delete", "c1")
    snapbox("delete", "--force", "c1")  # deleting what is gone is no error with --force
    assert error("delete", "c1") == 'snapbox: error: container "c1" does not exist\n'
    assert not (snapbox.root / "c1").exists()


def test_two_clis_on_one_container_are_serialized(snapbox, images, tmp_path):
    bundle = write_bundle(tmp_path, busybox_config(images, "sleep 100"))
    with open(tmp_path / "out", "w") as f:
        subprocess.run(snapbox.cmd("run", "--detach", "--bundle", str(bundle), "c1"), stdout=f, stderr=f,
                       check=True)
    racers = [subprocess.Popen(snapbox.cmd("pause", "c1"), stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in racers]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1, 1, 1]
    assert all(err == 'snapbox: error: cannot pause container "c1" in state paused\n'
               for code, err in results if code)
    assert json.loads(snapbox("state", "c1").stdout)["status"] == "paused"


def test_python_api(tmp_path, images):
    """The API the README documents, as a script would use it."""
    code = f"""
import sys
from snapbox.runtime.container import Container
c = Container.create({str(tmp_path / 'root')!r}, "api", {str(images / 'counter')!r}, start=True)
c.pause(); c.resume()
c.checkpoint({str(tmp_path / 'api.img')!r}, leave_running=True)
clone = Container.create({str(tmp_path / 'root')!r}, "api2", {str(images / 'counter')!r},
                         restore_image={str(tmp_path / 'api.img')!r})
print(clone.status, c.status)
clone.kill(9); c.kill(9)
print(c.wait(), clone.wait())
c.delete(); clone.delete()
"""
    with open(tmp_path / "counter.out", "w") as f:
        p = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=f, text=True, timeout=60)
    ours = [line for line in p.stdout.splitlines() if not line.startswith("count=")]  # the counters share stdout
    assert ours == ["running running", "9 9"]


def test_a_read_only_root_allows_writes_only_in_tmpfs(snapbox, images, tmp_path):
    config = busybox_config(images, "echo x > /made || echo refused; echo y > /tmp/ok && cat /tmp/ok; "
                                    "mkdir /d 2>/dev/null || echo no-mkdir; echo z > /dev/null && echo dev-ok; id -G",
                            user={"uid": 0, "gid": 0, "additionalGids": [5, 7]})
    config["root"]["readonly"] = True
    config["mounts"] = [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}]
    p = snapbox("run", "--bundle", str(write_bundle(tmp_path, config)), "ro")
    assert p.stdout.splitlines() == ["refused", "y", "no-mkdir", "dev-ok", "0 5 7"]
    assert "Read-only file system" in p.stderr
