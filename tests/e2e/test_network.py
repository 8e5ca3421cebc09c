"""Networking with the outside: a sandbox's sockets on the host (`--network host`, what `do`
uses), in a namespace a bundle names, in one snapbox makes; listeners and connections
through checkpoint and restore (TCP_REPAIR, or reset as documented); and a transfer inside
one sandbox checkpointed midway. Only 127.0.0.0/8 and namespaces these tests make."""

from __future__ import annotations

import ctypes
import hashlib
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from snapbox.runtime.network import IFA_F_NODAD
from tests.conftest import in_background, lines, wait_for

CLONE_NEWNET = 0x40000000
NO_POOL = dict(os.environ, SNAPBOX_WARM="0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def do_detached(snapbox, cid: str, cwd: Path, out: Path, *command: str, network: str | None = None,
                publish: str | None = None) -> None:
    """`snapbox do --detach` of a host command (its port `publish`ed, if given), its output
    appended to `out`."""
    args = (["--network", network] if network else []) + ["do", "--id", cid, "--detach"] + \
        (["-p", publish] if publish else []) + ["--", *command]
    with open(out, "a") as f:
        subprocess.run(snapbox.cmd(*args), stdout=f, stderr=f, stdin=subprocess.DEVNULL, cwd=cwd, check=True,
                       timeout=60)


def restore_detached(snapbox, image: Path, cid: str, out: Path, *options: str, env: dict | None = None,
                     preexec_fn=None) -> str:
    """`snapbox [OPTIONS] restore --detach`, the program's output appended to `out`; returns
    what the command itself wrote on stderr (a detached sandbox keeps the caller's stdio,
    so files, not pipes)."""
    err = out.with_name(out.name + ".restore-err")
    with open(out, "a") as f, open(err, "w") as e:
        p = subprocess.run(snapbox.cmd(*options, "restore", "--image-path", str(image), "--detach", cid),
                           stdout=f, stderr=e, stdin=subprocess.DEVNULL, timeout=60, env=env,
                           preexec_fn=preexec_fn)
    assert p.returncode == 0, err.read_text()
    return err.read_text()


def connect(port: int, host: str = "127.0.0.1") -> http.client.HTTPConnection:
    """A keep-alive connection to a server that is starting, once it listens."""
    def attempt():
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.connect()
        except OSError:
            return None
        return conn
    return wait_for(attempt, timeout=30, interval=0.1, what=f"a listener on {host}:{port}")


def http_server(port: int, bind: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "http.server", "--protocol", "HTTP/1.1", "-b", bind, str(port)]


def test_do_serves_http_to_the_host_and_reaches_it(snapbox, tmp_path):
    """`do` keeps the host's network: a server in the sandbox answers the host, and a
    client in the sandbox reaches a server on the host."""
    (tmp_path / "page.txt").write_text("snapbox " * 2000)
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "web", tmp_path, out, *http_server(port))
    conn = connect(port)
    conn.request("GET", "/page.txt")
    assert conn.getresponse().read() == (tmp_path / "page.txt").read_bytes()
    # The other way: the sandbox fetches the page from itself through the host.
    fetch = f"import urllib.request; print(len(urllib.request.urlopen('http://127.0.0.1:{port}/page.txt').read()))"
    got = subprocess.run(snapbox.cmd("do", "--", sys.executable, "-c", fetch), capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert got.stdout.strip() == "16000", got.stderr


UDP_ECHO = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    print("bound", flush=True)
    for _ in range(3):
        data, peer = s.recvfrom(2048)
        s.sendto(data[::-1], peer)
""")


def test_udp_echo_between_the_host_and_the_sandbox(snapbox, tmp_path):
    (tmp_path / "echo.py").write_text(UDP_ECHO)
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "echo", tmp_path, out, sys.executable, "echo.py", str(port))
    wait_for(lambda: "bound" in lines(out), timeout=30, what="the echo server")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(10)
        for word in (b"one", b"datagram", b"x" * 1400):
            c.sendto(word, ("127.0.0.1", port))
            data, peer = c.recvfrom(2048)
            assert (data, peer) == (word[::-1], ("127.0.0.1", port))


def test_a_keepalive_connection_survives_checkpoint_and_restore(snapbox, tmp_path):
    """The client's connection is the same socket before and after: saved with TCP_REPAIR,
    made again at restore; checkpoint, restore and inspect all say so."""
    (tmp_path / "a.txt").write_text("before")
    (tmp_path / "b.txt").write_text("after the restore")
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "ka", tmp_path, out, *http_server(port))
    conn = connect(port)
    conn.request("GET", "/a.txt")
    assert conn.getresponse().read() == b"before"
    mine = conn.sock.getsockname()
    image = tmp_path / "ka.img"
    p = snapbox("checkpoint", "--image-path", str(image), "ka")
    assert f"tcp connected 127.0.0.1:{port} <-> 127.0.0.1:{mine[1]}: saved with TCP_REPAIR" in p.stderr
    assert "listening" not in p.stderr  # listeners are not connections (inspect shows them)
    described = snapbox("inspect", str(image)).stdout
    assert "network: mode host" in described
    assert f"connected 127.0.0.1:{port} -> 127.0.0.1:{mine[1]}, host connected, saved with TCP_REPAIR" in described
    assert f"listening 127.0.0.1:{port}, host listening, address kept" in described
    said = restore_detached(snapbox, image, "ka2", out)
    assert f"127.0.0.1:{port} <-> 127.0.0.1:{mine[1]}: restored with TCP_REPAIR" in said
    conn.request("GET", "/b.txt")
    assert conn.getresponse().read() == b"after the restore"
    assert conn.sock.getsockname() == mine  # no new connection was made
    new = connect(port)  # and the listener answers new clients
    new.request("GET", "/a.txt")
    assert new.getresponse().read() == b"before"


RESET_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen()
    c, _ = s.accept()
    print("accepted", flush=True)
    while True:
        try:
            data = c.recv(100)
        except OSError as e:
            print("recv:", e.strerror, flush=True)
            break
        if not data:
            print("recv: end of file", flush=True)
            break
        c.sendall(data)
""")


def test_a_connection_that_cannot_come_back_is_reset(snapbox, tmp_path):
    """Restored without a network, the connection cannot be made again: the program's next
    receive fails with ECONNRESET, and restore says why."""
    (tmp_path / "server.py").write_text(RESET_SERVER)
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "r0", tmp_path, out, sys.executable, "server.py", str(port))
    client = wait_for(lambda: _connected(port), timeout=30, what="the server")
    wait_for(lambda: "accepted" in lines(out), what="the accept")
    client.sendall(b"ping")
    assert client.recv(100) == b"ping"
    image = tmp_path / "r.img"
    snapbox("checkpoint", "--image-path", str(image), "r0")
    said = restore_detached(snapbox, image, "r1", out, "--network", "none")
    assert "reset (the sandbox has no network now)" in said
    assert wait_for(lambda: [x for x in lines(out) if x.startswith("recv:")], what="the receive") == \
        ["recv: Connection reset by peer"]
    client.close()


def _connected(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return None


def test_a_restore_whose_address_is_taken_fails_and_changes_nothing(snapbox, tmp_path):
    (tmp_path / "a.txt").write_text("still here")
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "one", tmp_path, out, *http_server(port))
    connect(port).close()
    image = tmp_path / "one.img"
    snapbox("checkpoint", "--leave-running", "--image-path", str(image), "one")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    p = snapbox("restore", "--image-path", str(image), "two", check=False)  # fails before it would attach
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [
        f"snapbox: error: cannot restore: the sandbox's address 127.0.0.1:{port} is not available on this host "
        f"(Address already in use)"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
    conn = connect(port)  # the first one goes on serving
    conn.request("GET", "/a.txt")
    assert conn.getresponse().read() == b"still here"
    assert snapbox("state", "two", check=False).returncode != 0  # nothing of it is left


TRANSFER = textwrap.dedent("""
    # Server and client in one sandbox, over its loopback: 50 MB of a seeded stream, each end
    # hashing what it sent or received, the client pausing midway for a checkpoint.
    import hashlib, os, random, socket, sys, time
    TOTAL, CHUNK = 50 << 20, 1 << 16
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    if os.fork() == 0:
        c = socket.create_connection(("127.0.0.1", port))
        rng, h, sent = random.Random(7), hashlib.sha256(), 0
        while sent < TOTAL:
            block = rng.randbytes(CHUNK)
            c.sendall(block)
            h.update(block)
            sent += CHUNK
            if sent == TOTAL // 2:
                print("halfway", flush=True)
                time.sleep(3)  # long enough for the test to checkpoint here
        c.close()
        print("sent", h.hexdigest(), flush=True)
        os._exit(0)
    conn, _ = srv.accept()
    h, got = hashlib.sha256(), 0
    while data := conn.recv(1 << 17):
        h.update(data)
        got += len(data)
    os.wait()
    print("received", got, h.hexdigest(), flush=True)
""")


@pytest.mark.parametrize("network", ["none", "host"])
def test_a_transfer_inside_the_sandbox_survives_checkpoint_midway(snapbox, tmp_path, network):
    """Inside the sandbox, the connection is the sentry's own, whatever the network: saved
    with its unread bytes, not one lost or repeated."""
    (tmp_path / "transfer.py").write_text(TRANSFER)
    out = tmp_path / "out.txt"
    do_detached(snapbox, "t0", tmp_path, out, sys.executable, "transfer.py", network=network)
    wait_for(lambda: "halfway" in lines(out), timeout=120, what="half the transfer")
    image = tmp_path / "t.img"
    p = snapbox("checkpoint", "--image-path", str(image), "t0")
    assert "TCP_REPAIR" not in p.stderr  # nothing went through the host
    restore_detached(snapbox, image, "t1", out)
    done = wait_for(lambda: [x for x in lines(out) if x.startswith("received")], timeout=180, what="the end")
    sent = [x for x in lines(out) if x.startswith("sent")]
    assert done[0].split()[1] == str(50 << 20)
    assert done[0].split()[2] == sent[0].split()[1]


# -- published ports ----------------------------------------------------------------------------

ON_AND_OFF = textwrap.dedent("""
    # Listens on 0.0.0.0:8000 once the file "go" exists, serves one connection, closes.
    import os, socket, time
    while not os.path.exists("go"):
        time.sleep(0.05)
    s = socket.socket()
    s.bind(("0.0.0.0", 8000))
    s.listen()
    print("listening", flush=True)
    c, peer = s.accept()
    print("accepted", peer[0], peer[1], *c.getsockname(), flush=True)
    c.sendall(b"hello")
    c.close()
    s.close()
    print("closed", flush=True)
    time.sleep(60)
""")


def published(snapbox, cid: str) -> list[str]:
    return json.loads(snapbox("state", cid).stdout)["network"].get("published", [])


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_published_port_reaches_the_listener_while_there_is_one(snapbox, tmp_path):
    """--network none: nothing reaches the sandbox but its published port. Connections to
    it are refused until the program listens, reach it as if made to its own address
    (loopback here) from the client's, and are refused again once it closes."""
    (tmp_path / "server.py").write_text(ON_AND_OFF)
    out = tmp_path / "out.txt"
    do_detached(snapbox, "pub", tmp_path, out, sys.executable, "server.py", network="none", publish="127.0.0.1:0:8000")
    (mapping,) = published(snapbox, "pub")
    assert mapping.startswith("127.0.0.1:") and mapping.endswith("->8000/tcp")
    port = int(mapping.split(":")[1].split("-")[0])
    assert _refused(port)
    (tmp_path / "go").touch()
    wait_for(lambda: "listening" in lines(out), timeout=30, what="the listener")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        assert c.recv(100) == b"hello"
        mine = c.getsockname()
    accepted = wait_for(lambda: [x for x in lines(out) if x.startswith("accepted")], what="the accept")
    assert accepted == [f"accepted 127.0.0.1 {mine[1]} 127.0.0.1 8000"]
    wait_for(lambda: "closed" in lines(out), what="the close")
    assert _refused(port)


def test_a_published_connection_survives_checkpoint_and_restore(snapbox, tmp_path):
    """A keep-alive client of a published port keeps its connection through a checkpoint
    (TCP_REPAIR on the host's side); a restore while the port is taken fails with one line
    and changes nothing, and succeeds once it is free."""
    (tmp_path / "a.txt").write_text("before")
    (tmp_path / "b.txt").write_text("after the restore")
    port = free_port()
    out = tmp_path / "out.txt"
    do_detached(snapbox, "kp", tmp_path, out, *http_server(8000, "0.0.0.0"), network="none",
                publish=f"127.0.0.1:{port}:8000")
    conn = connect(port)
    conn.request("GET", "/a.txt")
    assert conn.getresponse().read() == b"before"
    mine = conn.sock.getsockname()
    image = tmp_path / "kp.img"
    p = snapbox("checkpoint", "--image-path", str(image), "kp")
    assert f"tcp connected 127.0.0.1:{port} <-> 127.0.0.1:{mine[1]}: saved with TCP_REPAIR" in p.stderr
    described = snapbox("inspect", str(image)).stdout
    assert f"network: mode none published 127.0.0.1:{port}->8000/tcp" in described
    assert f"listening 0.0.0.0:8000, published at 127.0.0.1:{port}" in described
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        p = snapbox("restore", "--image-path", str(image), "kp2", check=False)
        assert p.returncode != 0
        assert p.stderr.strip().splitlines() == [
            f"snapbox: error: cannot restore: published port 127.0.0.1:{port} is not available on this host "
            f"(Address already in use)"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
    said = restore_detached(snapbox, image, "kp2", out)
    assert f"127.0.0.1:{port} <-> 127.0.0.1:{mine[1]}: restored with TCP_REPAIR" in said
    conn.request("GET", "/b.txt")
    assert conn.getresponse().read() == b"after the restore"
    assert conn.sock.getsockname() == mine
    assert published(snapbox, "kp2") == [f"127.0.0.1:{port}->8000/tcp"]


def test_restore_publish_replaces_the_images_published_ports(snapbox, tmp_path):
    """Two sandboxes from one image with a published port, each restored with a -p of its
    own (as podman's restore --publish): each serves on its own port, beside the original;
    a -p whose port is taken fails the restore with one line."""
    (tmp_path / "page.txt").write_text("cloned")
    out = tmp_path / "out.txt"
    do_detached(snapbox, "orig", tmp_path, out, *http_server(8000, "0.0.0.0"), network="none",
                publish="127.0.0.1:0:8000")
    (first,) = published(snapbox, "orig")
    port = int(first.split(":")[1].split("-")[0])
    connect(port).close()  # listening
    image = tmp_path / "orig.img"
    snapbox("checkpoint", "--leave-running", "--image-path", str(image), "orig")
    ports = {port}
    for cid in ("c1", "c2"):
        with open(out, "a") as f:
            subprocess.run(snapbox.cmd("restore", "--image-path", str(image), "-p", "127.0.0.1:0:8000",
                                       "--detach", cid), stdout=f, stderr=f, stdin=subprocess.DEVNULL,
                           check=True, timeout=60)
        (mapping,) = published(snapbox, cid)
        assert mapping.endswith("->8000/tcp")
        ports.add(int(mapping.split(":")[1].split("-")[0]))
    assert len(ports) == 3
    for p in ports:
        conn = connect(p)
        conn.request("GET", "/page.txt")
        assert conn.getresponse().read() == b"cloned"
    p = snapbox("restore", "--image-path", str(image), "-p", f"127.0.0.1:{port}:8000", "c3", check=False)
    assert (p.returncode, p.stderr.strip().splitlines()) == (
        1, [f"snapbox: error: cannot publish 127.0.0.1:{port} (Address already in use)"])
    assert snapbox("state", "c3", check=False).returncode != 0


def test_a_published_port_is_checked_before_the_sandbox_starts(snapbox, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        p = snapbox("do", "-p", f"127.0.0.1:{port}:80", "--", "true", check=False)
        assert p.returncode != 0
        assert p.stderr.strip().splitlines() == [
            f"snapbox: error: cannot publish 127.0.0.1:{port} (Address already in use)"]
    p = snapbox("do", "-p", "8080:80/sctp", "--", "true", check=False)
    assert (p.returncode, p.stderr.strip()) == (1, "snapbox: error: --publish 8080:80/sctp: the protocol is tcp "
                                                   "or udp")


UDP_LATE_ECHO = textwrap.dedent("""
    import os, socket, time
    for _ in range(600):
        if os.path.exists("go"):
            break
        time.sleep(0.05)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5300))
    print("bound", flush=True)
    for _ in range(10):
        data, peer = s.recvfrom(2048)
        print("from", *peer, flush=True)
        s.sendto(data[::-1], peer)
""")


def test_a_published_udp_port_reaches_the_socket_bound_to_it(snapbox, tmp_path):
    """--network none: datagrams to a published UDP port are dropped until a socket of the
    sandbox has the port, then reach it from the client's address; its replies come from
    the published address (a connected client takes nothing else); and so again after a
    checkpoint and a restore."""
    (tmp_path / "echo.py").write_text(UDP_LATE_ECHO)
    out = tmp_path / "out.txt"
    do_detached(snapbox, "udpp", tmp_path, out, sys.executable, "echo.py", network="none",
                publish="127.0.0.1:0:5300/udp")
    (mapping,) = published(snapbox, "udpp")
    assert mapping.startswith("127.0.0.1:") and mapping.endswith("->5300/udp")
    port = int(mapping.split(":")[1].split("-")[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(10)
        c.connect(("127.0.0.1", port))
        c.send(b"early")
        (tmp_path / "go").touch()
        wait_for(lambda: "bound" in lines(out), timeout=30, what="the echo server")
        c.send(b"one")
        assert c.recv(2048) == b"eno"
        assert lines(out)[-1] == f"from 127.0.0.1 {c.getsockname()[1]}"
        image = tmp_path / "udpp.img"
        snapbox("checkpoint", "--image-path", str(image), "udpp")
        restore_detached(snapbox, image, "udpp2", out)
        assert published(snapbox, "udpp2") == [mapping]
        c.send(b"after the restore")
        assert c.recv(2048) == b"erotser eht retfa"


# -- namespaces ---------------------------------------------------------------------------------

@pytest.fixture
def netns():
    """A network namespace made for the test with pyroute2, loopback up; removed after."""
    from pyroute2 import NetNS
    from pyroute2 import netns as namespaces

    name = f"snapbox-test-{uuid.uuid4().hex[:8]}"
    namespaces.create(name)
    try:
        with NetNS(name) as ns:
            (lo,) = ns.link_lookup(ifname="lo")
            ns.link("set", index=lo, state="up")
        yield name
    finally:
        namespaces.remove(name)


def entering(name: str):
    """A preexec_fn that puts the child in namespace `name`."""
    def enter():
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
    return enter


def fetch_in(name: str, url: str) -> str:
    """GET `url` from inside namespace `name` (retrying while the server starts)."""
    script = textwrap.dedent(f"""
        import time, urllib.request
        for _ in range(300):
            try:
                print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end="")
                break
            except OSError:
                time.sleep(0.1)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=entering(name)).stdout


def host_bundle(tmp_path: Path, args: list[str], namespaces: list | None = None) -> Path:
    """A bundle on the host's / (as `do` makes), running `args` in tmp_path."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = {"ociVersion": "1.0.2",
              "process": {"args": args, "cwd": str(tmp_path), "env": [f"PATH={os.environ['PATH']}"]},
              "root": {"path": "/"},
              "mounts": [{"destination": "/sys", "type": "tmpfs", "source": "none"}]}
    if namespaces:
        config["linux"] = {"namespaces": namespaces}
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_a_bundle_runs_in_the_network_namespace_its_config_names(snapbox, tmp_path, netns):
    """How containerd and CNI hand a network to a runtime: the server is reached on the
    namespace's loopback, and not on the host's."""
    (tmp_path / "page.txt").write_text("inside the namespace")
    port = free_port()
    bundle = host_bundle(tmp_path, http_server(port),
                         [{"type": "network", "path": f"/var/run/netns/{netns}"}, {"type": "pid"}])
    with open(tmp_path / "out.txt", "a") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "ns"), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60)
    assert fetch_in(netns, f"http://127.0.0.1:{port}/page.txt") == "inside the namespace"
    assert json.loads(snapbox("state", "ns").stdout)["network"] == {"mode": "sandbox",
                                                                     "path": f"/var/run/netns/{netns}"}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_long_interface_dump_comes_in_datagrams_a_small_buffer_reads(snapbox, images, tmp_path, netns):
    """40 interfaces in the bundle's namespace: glibc's if_nameindex and getifaddrs read the
    dump 4 KiB at a time, and the sandbox answers in datagrams that fit, as Linux does (the
    host filled them for the sentry's larger reads; cut short, glibc crashed)."""
    from pyroute2 import NetNS

    with NetNS(netns) as ns:
        for i in range(20):
            ns.link("add", ifname=f"sbx{i}a", kind="veth", peer=f"sbx{i}b")
    program = str(images / "netif-glibc" / "rootfs" / "netif-glibc")
    want = subprocess.run([program], capture_output=True, text=True, timeout=60, preexec_fn=entering(netns)).stdout
    assert "sbx19b" in want
    bundle = host_bundle(tmp_path, [program], [{"type": "network", "path": f"/var/run/netns/{netns}"}])
    got = snapbox("run", "--bundle", str(bundle), "dump")
    assert got.stdout == want


def serve_in_own_namespace(snapbox, tmp_path: Path, port: int, cid: str, in_ns) -> dict:
    """http.server on [::]:`port` (IPv4 and IPv6) in a bundle with `--network sandbox`, snapbox itself
    run in the test's namespace (`in_ns`); returns the sandbox's network once its namespace
    is made (when the server binds: `state` shows it from then on)."""
    bundle = host_bundle(tmp_path, http_server(port, "::"))
    with open(tmp_path / "out.txt", "a") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", cid), stdout=f, stderr=f,
                       stdin=subprocess.DEVNULL, check=True, timeout=60, env=NO_POOL, preexec_fn=in_ns)

    def network() -> dict:
        return json.loads(snapbox("state", cid).stdout)["network"]
    return wait_for(lambda: network().get("address") and network(), timeout=30, what="the namespace")


def test_snapbox_makes_the_sandbox_its_own_namespace(snapbox, tmp_path, netns):
    """`--network sandbox` with no namespace named: one made by snapbox when the sandbox first
    needs it, its veth pair's host end in the namespace snapbox ran in (here the test's),
    the server reached at the sandbox's addresses, IPv4 and IPv6; and a restore keeps them."""
    (tmp_path / "page.txt").write_text("own namespace")
    port = free_port()
    in_ns = entering(netns)
    network = serve_in_own_namespace(snapbox, tmp_path, port, "own", in_ns)
    assert network["mode"] == "sandbox" and network["interface"].startswith("sbx")
    address = network["address"]
    assert fetch_in(netns, f"http://{address}:{port}/page.txt") == "own namespace"
    assert fetch_in(netns, f"http://[{network['address6']}]:{port}/page.txt") == "own namespace"
    image = tmp_path / "own.img"
    snapbox("checkpoint", "--image-path", str(image), "own")
    restore_detached(snapbox, image, "own2", tmp_path / "out.txt", env=NO_POOL, preexec_fn=in_ns)
    assert json.loads(snapbox("state", "own2").stdout)["network"]["address"] == address
    assert fetch_in(netns, f"http://{address}:{port}/page.txt") == "own namespace"
    assert fetch_in(netns, f"http://[{network['address6']}]:{port}/page.txt") == "own namespace"
    snapbox("delete", "--force", "own2")

    def links() -> str:
        return subprocess.run([sys.executable, "-c", "import socket; print(socket.if_nameindex())"],
                              capture_output=True, text=True, preexec_fn=in_ns).stdout
    wait_for(lambda: "sbx" not in links(), what="the veth pair to go with the sandbox")


def test_a_port_published_from_the_sandboxs_own_namespace(snapbox, tmp_path, netns):
    """--network sandbox: the published port is on the side snapbox ran in (the test's
    namespace), and reaches the listener on the sandbox's own address."""
    (tmp_path / "page.txt").write_text("published")
    in_ns = entering(netns)
    bundle = host_bundle(tmp_path, http_server(8000, "0.0.0.0"))
    with open(tmp_path / "out.txt", "a") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "-p", "127.0.0.1:0:8000", "ownp"),
                       stdout=f, stderr=f, stdin=subprocess.DEVNULL, check=True, timeout=60, env=NO_POOL,
                       preexec_fn=in_ns)
    (mapping,) = published(snapbox, "ownp")
    port = int(mapping.split(":")[1].split("-")[0])
    assert fetch_in(netns, f"http://127.0.0.1:{port}/page.txt") == "published"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)  # not in the test's own namespace


FAR_SERVER = textwrap.dedent("""
    import select, socket, sys
    tcp = socket.create_server(("198.51.100.2", int(sys.argv[1])))
    tcp6 = socket.create_server(("2001:db8::2", int(sys.argv[1])), family=socket.AF_INET6)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("198.51.100.2", int(sys.argv[2])))
    print("listening", flush=True)
    conns = []
    for _ in range(1200):
        ready, _, _ = select.select([tcp, tcp6, udp] + conns, [], [], 0.1)
        for listener in (tcp, tcp6):
            if listener in ready:
                conn, peer = listener.accept()
                conn.sendall(f"{peer[0]} port {peer[1]}\\n".encode())
                conns.append(conn)
        if udp in ready:
            _, peer = udp.recvfrom(100)
            udp.sendto(f"{peer[0]} port {peer[1]}".encode(), peer)
        for conn in conns:
            if conn in ready:
                data = conn.recv(100)
                if not data:
                    conns.remove(conn)
                    conn.close()
                else:
                    conn.sendall(data.upper())
""")

NAT_CLIENT = textwrap.dedent("""
    import os, socket, time
    def said(line):
        return line.rsplit(" port ", 1)[0]
    t = socket.create_connection(("198.51.100.2", {tcp}), timeout=30)
    f = t.makefile("rw")
    print("tcp: the server saw", said(f.readline().strip()), flush=True)
    print("tcp: my address", t.getsockname()[0], flush=True)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(30)
    u.sendto(b"hello", ("198.51.100.2", {udp}))
    data, source = u.recvfrom(100)
    print("udp: the server saw", said(data.decode()), "answering from", source[0], flush=True)
    # Bound first, as musl's resolver binds its socket: the traffic still leaves from the host's side.
    b = socket.socket()
    b.bind(("0.0.0.0", 0))
    port = b.getsockname()[1]
    b.settimeout(30)
    b.connect(("198.51.100.2", {tcp}))
    print("bound tcp: the server saw", said(b.makefile().readline().strip()), flush=True)
    print("bound tcp: my address", b.getsockname() == (t.getsockname()[0], port), flush=True)
    bu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bu.bind(("0.0.0.0", 0))
    bu.settimeout(30)
    bu.sendto(b"hello", ("198.51.100.2", {udp}))
    data, source = bu.recvfrom(100)
    print("bound udp: the server saw", said(data.decode()), "answering from", source[0], flush=True)
    t6 = socket.create_connection(("2001:db8::2", {tcp}), timeout=30)
    print("tcp6: the server saw", said(t6.makefile().readline().strip()), flush=True)
    print("tcp6: my address", t6.getsockname()[0], flush=True)
    for _ in range(600):
        if os.path.exists("go"):
            break
        time.sleep(0.1)
    f.write("after the restore\\n")
    f.flush()
    print("tcp:", f.readline().strip(), flush=True)
""")


@pytest.fixture
def far_side(netns):
    """A second namespace beyond the test's (`netns`): a veth pair between them,
    198.51.100.1/30 and 2001:db8::1/126 on the test's side, .2 and ::2 on the far one, which
    has no route back to anything else (so a sandbox reaches it only if its traffic comes
    from the near side)."""
    from pyroute2 import NetNS
    from pyroute2 import netns as namespaces

    name = f"snapbox-far-{uuid.uuid4().hex[:8]}"
    namespaces.create(name)
    try:
        with NetNS(netns) as near:
            near.link("add", ifname="far0", kind="veth", peer="near0")
            (peer,) = near.link_lookup(ifname="near0")
            near.link("set", index=peer, net_ns_fd=name)
            (mine,) = near.link_lookup(ifname="far0")
            near.addr("add", index=mine, address="198.51.100.1", prefixlen=30)
            near.addr("add", index=mine, address="2001:db8::1", prefixlen=126, flags=IFA_F_NODAD)
            near.link("set", index=mine, state="up")
        with NetNS(name) as far:
            for ifname, address in (("lo", None), ("near0", "198.51.100.2")):
                (index,) = far.link_lookup(ifname=ifname)
                if address:
                    far.addr("add", index=index, address=address, prefixlen=30)
                    far.addr("add", index=index, address="2001:db8::2", prefixlen=126, flags=IFA_F_NODAD)
                far.link("set", index=index, state="up")
        yield name
    finally:
        namespaces.remove(name)


def test_outgoing_traffic_of_a_namespace_snapbox_makes_leaves_from_the_hosts_side(snapbox, tmp_path, netns,
                                                                                   far_side):
    """A sandbox in a namespace snapbox made reaches a host beyond the one it runs on (which
    does not forward): TCP and UDP go out from the host's side, as a masquerade sends them,
    while the sandbox sees its own address; and the connection, kept with TCP_REPAIR, goes
    on after a checkpoint and a restore."""
    tcp_port, udp_port = 18300, 18301
    server = subprocess.Popen([sys.executable, "-c", FAR_SERVER, str(tcp_port), str(udp_port)], text=True,
                              stdout=subprocess.PIPE, preexec_fn=entering(far_side))
    try:
        assert server.stdout.readline() == "listening\n"
        in_ns = entering(netns)
        out = tmp_path / "out.txt"
        bundle = host_bundle(tmp_path, [sys.executable, "-c", NAT_CLIENT.format(tcp=tcp_port, udp=udp_port)])
        with open(out, "a") as f:
            subprocess.run(snapbox.cmd("run", "--bundle", str(bundle), "--detach", "nat"), stdout=f, stderr=f,
                           stdin=subprocess.DEVNULL, check=True, timeout=60, env=NO_POOL, preexec_fn=in_ns)
        wait_for(lambda: len(lines(out)) >= 8, timeout=60, what="the client's exchanges")
        network = json.loads(snapbox("state", "nat").stdout)["network"]
        assert network["address6"].startswith("fd0a:d5:213::")
        assert lines(out) == ["tcp: the server saw 198.51.100.1", f"tcp: my address {network['address']}",
                              "udp: the server saw 198.51.100.1 answering from 198.51.100.2",
                              "bound tcp: the server saw 198.51.100.1", "bound tcp: my address True",
                              "bound udp: the server saw 198.51.100.1 answering from 198.51.100.2",
                              "tcp6: the server saw 2001:db8::1", f"tcp6: my address {network['address6']}"]
        image = tmp_path / "nat.img"
        p = snapbox("checkpoint", "--image-path", str(image), "nat")
        assert f"<-> 198.51.100.2:{tcp_port}: saved with TCP_REPAIR" in p.stderr
        said = restore_detached(snapbox, image, "nat2", out, env=NO_POOL, preexec_fn=in_ns)
        assert f"<-> 198.51.100.2:{tcp_port}: restored with TCP_REPAIR" in said
        (tmp_path / "go").touch()
        wait_for(lambda: len(lines(out)) >= 9, timeout=60, what="the echo after the restore")
        assert lines(out)[8] == "tcp: AFTER THE RESTORE"
    finally:
        server.kill()
        server.wait()


def test_a_listener_migrated_answers_on_the_new_side(snapbox, tmp_path, netns, images):
    """A server in a namespace of its own, moved live to another root: the new sandbox has
    a namespace (and an address) of its own, its listener bound again there."""
    from tests.conftest import Snapbox, clean_up

    (tmp_path / "page.txt").write_text("moved")
    port = free_port()
    in_ns = entering(netns)
    first = serve_in_own_namespace(snapbox, tmp_path, port, "web", in_ns)["address"]
    assert fetch_in(netns, f"http://{first}:{port}/page.txt") == "moved"
    other = Snapbox(tmp_path / "other-root", images)
    try:
        command = " ".join(other.cmd("restore", "--image-path", "-", "web")) + f" 2>>{tmp_path / 'moved.txt'}"
        subprocess.run(snapbox.cmd("migrate", "--to", f"exec:{command}", "web"), check=True, timeout=120,
                       capture_output=True, env=NO_POOL, preexec_fn=in_ns)
        second = json.loads(other("state", "web").stdout)["network"]["address"]
        assert fetch_in(netns, f"http://{second}:{port}/page.txt") == "moved"
    finally:
        clean_up(other)


def test_a_published_port_and_its_connection_migrate(snapbox, tmp_path, images):
    """Moved live to another root on this host, the sandbox publishes its port there (the
    source let it go with its connections): the client's keep-alive connection goes on,
    and new connections reach the new side."""
    from tests.conftest import Snapbox, clean_up

    (tmp_path / "a.txt").write_text("first side")
    port = free_port()
    do_detached(snapbox, "mp", tmp_path, tmp_path / "out.txt", *http_server(8000, "0.0.0.0"), network="none",
                publish=f"127.0.0.1:{port}:8000")
    conn = connect(port)
    conn.request("GET", "/a.txt")
    assert conn.getresponse().read() == b"first side"
    other = Snapbox(tmp_path / "other-root", images)
    try:
        command = " ".join(other.cmd("restore", "--image-path", "-", "mp")) + f" 2>>{tmp_path / 'moved.txt'}"
        subprocess.run(snapbox.cmd("migrate", "--to", f"exec:{command}", "mp"), check=True, timeout=120,
                       capture_output=True)
        (tmp_path / "b.txt").write_text("second side")
        conn.request("GET", "/b.txt")
        assert conn.getresponse().read() == b"second side"
        fresh = connect(port)
        fresh.request("GET", "/b.txt")
        assert fresh.getresponse().read() == b"second side"
        assert published(other, "mp") == [f"127.0.0.1:{port}->8000/tcp"]
    finally:
        clean_up(other)


class Nameserver:
    """A DNS server on UDP port 53 of a loopback address, answering A queries for the names
    it holds and NXDOMAIN for the rest (AAAA: no answer), counting queries."""

    def __init__(self, address: str, names: dict[str, str]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        self.names, self.queries = names, 0
        in_background(self._serve)

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(512)
            except OSError:
                return
            self.queries += 1
            labels, pos = [], 12
            while query[pos]:
                labels.append(query[pos + 1:pos + 1 + query[pos]].decode())
                pos += 1 + query[pos]
            question = query[12:pos + 5]
            qtype = int.from_bytes(query[pos + 1:pos + 3], "big")
            address = self.names.get(".".join(labels).lower())
            answer = b""
            if address is not None and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
            flags = 0x8180 if address is not None else 0x8183
            header = query[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0)
            self.sock.sendto(header + question + answer, peer)

    def close(self) -> None:
        self.sock.close()


def test_getaddrinfo_reads_the_bundles_hosts_and_resolv_conf(snapbox, images, tmp_path):
    bundle = tmp_path / "resolve"
    shutil.copytree(images / "resolve", bundle)
    etc = bundle / "rootfs" / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n127.0.0.5 db.internal db\n")
    (etc / "resolv.conf").write_text("nameserver 127.0.0.7\noptions timeout:2 attempts:2\n")
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["/resolve", "db.internal", "db", "api.example", "missing.example"]
    (bundle / "config.json").write_text(json.dumps(config))
    server = Nameserver("127.0.0.7", {"api.example": "127.0.0.9"})
    try:
        p = snapbox("--network", "host", "run", "--bundle", str(bundle), "r0", timeout=60)
    finally:
        server.close()
    assert p.stdout.splitlines() == ["db.internal 127.0.0.5", "db 127.0.0.5", "api.example 127.0.0.9",
                                     "missing.example error: Name does not resolve"]
    assert server.queries >= 2  # the names not in /etc/hosts, asked of the bundle's nameserver
