"""Dynamically linked programs of the host (the loader, libc, CPython, bash, coreutils),
run with `snapbox do` and from a bundle on the host's root, compared with native runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import lines, wait_for

PYTHON_PROGRAM = r'''
import json, hashlib, re, threading, subprocess, os, tempfile
print(json.dumps({"a": [1, 2], "b": None}, sort_keys=True))
print(hashlib.sha256(b"snapbox").hexdigest(), re.sub(r"a+", "b", "caaat"))
out = []
threads = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(6)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(out))
print(subprocess.run(["/bin/echo", "from a subprocess"], capture_output=True, text=True).stdout.strip())
pid = os.fork()
if pid == 0:
    os._exit(7)
print("child exit", os.waitpid(pid, 0)[1] >> 8)
def gen():
    for i in range(3):
        yield i * 10
g = gen()
print(next(g), next(g))
with tempfile.TemporaryDirectory() as d:
    print(os.path.isdir(d), os.listdir(d))
import socket
a, b = socket.socketpair()
a.sendall(b"ping")
print(b.recv(10), a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)
pid = os.fork()
if pid == 0:
    b.sendall(b"from the child " * 5000)
    os._exit(0)
b.close()
got = b""
while len(got) < 75000:
    got += a.recv(65536)
os.waitpid(pid, 0)
print(len(got))
'''


def native_and_sandboxed(snapbox, cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, ...]:
    native = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=60)
    boxed = subprocess.run(snapbox.cmd("do", *cmd), capture_output=True, text=True, cwd=cwd, timeout=120)
    return native, boxed


def test_python3_programs_match_native(snapbox, tmp_path):
    native, boxed = native_and_sandboxed(snapbox, [sys.executable, "-c", PYTHON_PROGRAM], tmp_path)
    assert boxed.returncode == 0, boxed.stderr
    assert boxed.stdout == native.stdout
    assert "child exit 7" in boxed.stdout and "[0, 1, 4, 9, 16, 25]" in boxed.stdout


def test_bash_and_coreutils_pipelines_match_native(snapbox, tmp_path):
    work = tmp_path / "work"  # not tmp_path itself: snapbox's state directory appears there
    work.mkdir()
    (work / "data.txt").write_text("pear\napple\nfig\napple\n")
    script = "sort data.txt | uniq -c | sort -rn | head -2; ls | wc -l; echo $((6 * 7)); cat < data.txt | tr a-z A-Z | md5sum"
    native, boxed = native_and_sandboxed(snapbox, ["/bin/bash", "-c", script], work)
    assert boxed.returncode == 0, boxed.stderr
    assert boxed.stdout == native.stdout


def test_a_python_loop_checkpointed_and_restored_keeps_its_state(snapbox, tmp_path):
    bundle = tmp_path / "py"
    bundle.mkdir()
    program = ("import time\n"
               "d = {i: str(i) * 3 for i in range(100000)}\n"
               "n = 0\n"
               "while True:\n"
               "    n += 1\n"
               "    ok = len(d) == 100000 and all(d[i] == str(i) * 3 for i in range(0, 100000, 997))\n"
               "    print(n, ok, flush=True)\n"
               "    time.sleep(0.05)\n")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": [sys.executable, "-c", program], "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
        "root": {"path": "/"},
    }))
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "p1"), stdout=f, stderr=f,
                       check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= 3, timeout=60, what="the python loop")
    image = tmp_path / "py.img"
    snapbox("checkpoint", "--image-path", str(image), "p1")
    before = lines(out)
    snapbox("delete", "p1")
    time.sleep(0.5)
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("restore", "--bundle", str(bundle), "--image-path", str(image), "--detach", "p2"),
                       stdout=f, stderr=f, check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= len(before) + 3, timeout=60, what="the restored loop")
    snapbox("kill", "p2", "KILL")
    counts = [int(line.split()[0]) for line in lines(out)]
    assert counts == list(range(1, len(counts) + 1))
    assert all(line.endswith("True") for line in lines(out))


def test_a_detached_do_sandbox_restores_without_a_bundle(snapbox, tmp_path):
    out = tmp_path / "out.txt"
    program = "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.05)\n"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("do", "--detach", "--id", "pyd", sys.executable, "-c", program),
                       stdout=f, stderr=f, check=True, timeout=60, cwd=tmp_path)
    wait_for(lambda: len(lines(out)) >= 3, timeout=60, what="the detached python")
    image = tmp_path / "pyd.img"
    snapbox("checkpoint", "--image-path", str(image), "pyd")
    snapbox("delete", "pyd")
    n = len(lines(out))
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("restore", "--image-path", str(image), "--detach", "again"),
                       stdout=f, stderr=f, check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= n + 3, timeout=60, what="the restored python")
    snapbox("delete", "--force", "again")
    assert [int(x) for x in lines(out)] == list(range(1, len(lines(out)) + 1))
    assert not (snapbox.root / ".bundles" / "again").exists()
    p = snapbox("restore", "--image-path", "-", "x", check=False)
    assert p.stderr == "snapbox: error: restore from stdin needs --bundle\n"
