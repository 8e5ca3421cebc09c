"""Dynamically linked programs of the host (the loader, libc, CPython, bash, coreutils),
run with `snapbox do` and from a bundle on the host's root, compared with native runs."""

from __future__ import annotations

import json
import shutil
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


def do_through_a_restore(snapbox, tmp_path: Path, argv: list[str], ready: int) -> list[str]:
    """`do --detach` of argv, checkpointed once it has printed `ready` lines, restored from
    the image alone (no bundle), and deleted once it has printed three more; returns every
    line it printed."""
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("do", "--detach", "--id", "first", *argv),
                       stdout=f, stderr=f, check=True, timeout=60, cwd=tmp_path)
    wait_for(lambda: len(lines(out)) >= ready, timeout=60, what="the detached sandbox")
    image = tmp_path / "do.img"
    snapbox("checkpoint", "--image-path", str(image), "first")
    snapbox("delete", "first")
    n = len(lines(out))
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd("restore", "--image-path", str(image), "--detach", "again"),
                       stdout=f, stderr=f, check=True, timeout=60)
    wait_for(lambda: len(lines(out)) >= n + 3, timeout=60, what="the restored sandbox")
    snapbox("delete", "--force", "again")
    return lines(out)


def test_a_detached_do_sandbox_restores_without_a_bundle(snapbox, tmp_path):
    program = "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.05)\n"
    got = do_through_a_restore(snapbox, tmp_path, [sys.executable, "-c", program], 3)
    assert [int(x) for x in got] == list(range(1, len(got) + 1))
    assert not (snapbox.root / ".bundles" / "again").exists()
    p = snapbox("restore", "--image-path", "-", "x", check=False)
    assert p.stderr == "snapbox: error: restore from stdin needs --bundle\n"


def dash_bundle(tmp_path: Path) -> Path:
    """A bundle of the host's dash and sleep with their libraries copied into its rootfs."""
    bundle = tmp_path / "dash"
    rootfs = bundle / "rootfs"
    for rel in ("bin", "lib/x86_64-linux-gnu", "lib64", "tmp"):
        (rootfs / rel).mkdir(parents=True)
    shutil.copy("/bin/sh", rootfs / "bin" / "sh")
    shutil.copy("/bin/sleep", rootfs / "bin" / "sleep")
    shutil.copy("/lib/x86_64-linux-gnu/libc.so.6", rootfs / "lib/x86_64-linux-gnu")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", rootfs / "lib64")
    loop = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", loop], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
    }))
    return bundle


def test_library_pages_are_references_checked_on_restore(snapbox, tmp_path):
    bundle = dash_bundle(tmp_path)
    libc = bundle / "rootfs/lib/x86_64-linux-gnu/libc.so.6"
    out = tmp_path / "out.txt"

    def run_and_checkpoint(cid: str, image: Path, *flags: str) -> None:
        with open(out, "w") as f:
            subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", cid), stdout=f, stderr=f,
                           check=True, timeout=60)
        wait_for(lambda: len(lines(out)) >= 3, timeout=30, what="the shell loop")
        snapbox("checkpoint", *flags, "--image-path", str(image), cid)
        snapbox("delete", cid)

    def restore_and_go_on(cid: str, image: Path) -> None:
        with open(out, "a") as f:
            subprocess.run(snapbox.cmd("restore", "--bundle", str(bundle), "--image-path", str(image), "--detach",
                                       cid), stdout=f, stderr=f, check=True, timeout=60)
        n = len(lines(out))
        wait_for(lambda: len(lines(out)) >= n + 3, timeout=30, what=f"the loop restored as {cid}")
        snapbox("delete", "--force", cid)
        assert [int(x) for x in lines(out)] == list(range(1, len(lines(out)) + 1))

    image = tmp_path / "ref.img"
    run_and_checkpoint("ref", image)
    info = json.loads(snapbox("inspect", "--json", str(image)).stdout)
    refs = {Path(r["path"]).name: r for r in info["file_references"]}
    assert {"libc.so.6", "ld-linux-x86-64.so.2", "sh"} <= set(refs)
    assert refs["libc.so.6"]["size"] == libc.stat().st_size
    assert refs["libc.so.6"]["referenced"] > 1 << 20  # libc's text is not in the image...
    assert image.stat().st_size < 256 << 10  # ...which holds the shell's own memory only

    original = libc.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF  # in libc's text
    libc.write_bytes(changed)
    p = snapbox("restore", "--bundle", str(bundle), "--image-path", str(image), "--detach", "bad", check=False)
    assert p.returncode != 0
    assert p.stderr == (f"snapbox: error: {libc} changed since the checkpoint (its content differs); "
                        "checkpoint with --store-file-pages to keep its pages in the image\n")
    libc.write_bytes(original + b"\0")
    p = snapbox("restore", "--bundle", str(bundle), "--image-path", str(image), "--detach", "bad", check=False)
    assert "changed since the checkpoint (size" in p.stderr and p.returncode != 0

    # The same file back (new mtime, same content): the reference holds.
    libc.write_bytes(original)
    restore_and_go_on("good", image)

    # With --store-file-pages the image holds the pages and restores whatever the file is now.
    stored = tmp_path / "stored.img"
    run_and_checkpoint("st", stored, "--store-file-pages")
    assert json.loads(snapbox("inspect", "--json", str(stored)).stdout)["file_references"] == []
    assert stored.stat().st_size > image.stat().st_size + (256 << 10)
    libc.write_bytes(original + b"appended")
    restore_and_go_on("st2", stored)


UNIX_ECHO = r"""
import os, socket, time
path = "/tmp/echo.sock"
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen()
if os.fork() == 0:
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    r, w = os.pipe()
    socket.send_fds(c, [b"fd"], [w])
    print(os.read(r, 100).decode(), flush=True)
    n = 0
    while True:
        n += 1
        c.sendall(b"%d" % n)
        print(c.recv(100).decode(), flush=True)
        time.sleep(0.05)
conn, _ = srv.accept()
_, fds, _, _ = socket.recv_fds(conn, 10, 1)
os.write(fds[0], b"hello through a passed fd")
while True:
    conn.sendall(b"echo " + conn.recv(100))
"""


def test_a_unix_socket_echo_pair_survives_checkpoint_and_restore(snapbox, tmp_path):
    got = do_through_a_restore(snapbox, tmp_path, [sys.executable, "-c", UNIX_ECHO], 4)
    assert got[0] == "hello through a passed fd"
    assert got[1:] == [f"echo {i}" for i in range(1, len(got))]


HTTP_LOOP = r"""
import http.server, threading, time, urllib.request
class Counter(http.server.BaseHTTPRequestHandler):
    served = 0
    def do_GET(self):
        Counter.served += 1
        body = b"reply %d to %s" % (Counter.served, self.path.encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counter)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d/n" % server.server_address[1]
n = 0
while True:
    n += 1
    print(urllib.request.urlopen(url + str(n), timeout=10).read().decode(), flush=True)
    time.sleep(0.05)
"""


def test_a_python_http_server_and_its_client_survive_checkpoint_and_restore(snapbox, tmp_path):
    """TCP over the sandbox's loopback: CPython's http.server in a thread, urllib asking it
    (with a timeout: non-blocking sockets and poll) before and after a restore."""
    got = do_through_a_restore(snapbox, tmp_path, [sys.executable, "-c", HTTP_LOOP], 3)
    assert got == [f"reply {i} to /n{i}" for i in range(1, len(got) + 1)]


MEMFD_PROGRAM = r"""
import fcntl, mmap, os
fd = os.memfd_create("snapbox-test", os.MFD_ALLOW_SEALING)
print(os.readlink(f"/proc/self/fd/{fd}"))
os.write(fd, b"hello memfd")
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
print(m[:11])
pid = os.fork()
if pid == 0:
    m[:5] = b"HELLO"
    os._exit(0)
os.waitpid(pid, 0)
print(os.pread(fd, 11, 0))
m.close()
print(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
print(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
for what, call in [("write", lambda: os.write(fd, b"x")), ("shrink", lambda: os.ftruncate(fd, 0)),
                   ("mmap write", lambda: mmap.mmap(fd, 4096)),
                   ("add seal", lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW))]:
    try:
        call(); print(what, "ok")
    except OSError as e:
        print(what, e.strerror)
os.ftruncate(fd, 8192); print("grow ok", os.fstat(fd).st_size)
fd2 = os.memfd_create("plain")
try:
    fcntl.fcntl(fd2, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
except OSError as e:
    print("seal without MFD_ALLOW_SEALING:", e.strerror)
print(fcntl.fcntl(fd2, fcntl.F_GET_SEALS), oct(os.fstat(fd2).st_mode))
try:
    os.memfd_create("x" * 250)
except OSError as e:
    print("long name:", e.strerror)
"""


def test_memfd_create_and_its_seals_match_native(snapbox, tmp_path):
    native, boxed = native_and_sandboxed(snapbox, [sys.executable, "-c", MEMFD_PROGRAM], tmp_path)
    assert boxed.returncode == 0, boxed.stderr
    assert boxed.stdout == native.stdout
    assert "b'HELLO memfd'" in boxed.stdout  # a child's write through a shared mapping


MEMFD_LOOP = r"""
import mmap, os, time
fd = os.memfd_create("counter")
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
n = 0
while True:
    n += 1
    m[:8] = n.to_bytes(8, "little")
    print(int.from_bytes(os.pread(fd, 8, 0), "little"), flush=True)
    time.sleep(0.05)
"""


def test_a_memfd_and_its_mapping_survive_checkpoint_and_restore(snapbox, tmp_path):
    got = do_through_a_restore(snapbox, tmp_path, [sys.executable, "-c", MEMFD_LOOP], 3)
    assert [int(x) for x in got] == list(range(1, len(got) + 1))
