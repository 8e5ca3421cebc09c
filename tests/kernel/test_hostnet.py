"""HostSocket: a real TCP connection on the host's loopback, saved with TCP_REPAIR and made
again, with the bytes that were in flight both ways."""

from __future__ import annotations

import socket
import time

from snapbox.kernel.checkpoint import LoadContext
from snapbox.kernel.hostnet import HostSocket
from snapbox.state import decode_graph, encode_graph


def _pair() -> tuple[HostSocket, HostSocket, socket.socket]:
    listener = HostSocket.open(socket.AF_INET, socket.SOCK_STREAM, {(1, 2): 1})
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    peer = socket.create_connection(listener.local, timeout=10)
    for _ in range(100):
        conn = listener.accept()
        if conn is not None:
            return listener, conn, peer
        time.sleep(0.01)
    raise AssertionError("no connection to accept")


def test_a_connection_comes_back_with_its_queues_and_the_peer_sees_nothing():
    listener, conn, peer = _pair()
    peer.sendall(b"unread by the sandbox")  # in conn's receive queue at checkpoint
    time.sleep(0.1)
    ctx = LoadContext(host_sockets=[])
    images = encode_graph(listener), encode_graph(conn)
    assert conn.fate == "saved with TCP_REPAIR"
    listener.close()
    conn.close()  # in repair mode: no FIN, no RST
    peer.settimeout(0.3)
    try:
        got = peer.recv(100)
    except TimeoutError:
        got = None
    assert got is None  # the peer heard nothing
    new_listener, new_conn = (decode_graph(image, ctx) for image in images)
    for h in ctx.host_sockets:
        h.reconnect()
    assert (new_listener.fate, new_conn.fate) == ("bound again", "restored with TCP_REPAIR")
    assert new_conn.local == conn.local and new_conn.remote == conn.remote
    new_conn.sock.setblocking(True)
    new_conn.sock.settimeout(10)
    assert new_conn.sock.recv(100) == b"unread by the sandbox"
    new_conn.sock.sendall(b"after the restore")
    assert peer.recv(100) == b"after the restore"
    other = socket.create_connection(new_listener.local, timeout=10)  # the listener works too
    other.close()
    for s in (peer, new_conn, new_listener):
        s.close()


def test_a_connection_whose_address_is_gone_comes_back_reset():
    listener, conn, peer = _pair()
    image = encode_graph(conn)
    conn.resume()  # still running: the original keeps its address and goes on
    ctx = LoadContext(host_sockets=[])
    copy = decode_graph(image, ctx)
    copy.reconnect()
    assert copy.role == "reset" and copy.fate.startswith("reset (not restored: ")
    conn.sock.sendall(b"the original still works")
    assert peer.recv(100) == b"the original still works"
    for s in (peer, conn, listener):
        s.close()
