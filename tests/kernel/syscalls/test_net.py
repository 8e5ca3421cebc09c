"""Sockets against native runs: unix stream, datagram and seqpacket sockets (socketpair, bound
names, SCM_RIGHTS), and TCP and UDP over loopback (127.0.0.1, ::1); each survives a
checkpoint mid-exchange."""

from __future__ import annotations

import pytest

from tests.conftest import held_through_a_restore, native_fixture, same_output


@pytest.mark.parametrize("bundle", ["sockets", "sockets-glibc"])
def test_unix_sockets_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "recv 2: second fd=yes" in want and "pipe: through the pipe" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "so").stdout, want)


@pytest.mark.parametrize("bundle", ["inet", "inet-glibc"])
def test_tcp_over_loopback_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "::1 server got: hello" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "tcp").stdout, want)


@pytest.mark.parametrize("lazy", [False, True])
def test_a_tcp_connection_and_its_unread_bytes_survive_a_checkpoint(snapbox, images, tmp_path, lazy):
    """The client has connected and sent; the server sleeps before accepting. Checkpointed
    then, the connection waits in the listener's backlog with its bytes, the client in
    recv(2): restored, the server accepts and reads them, and the client gets its reply."""
    got = held_through_a_restore(snapbox, images, tmp_path, "inet", "127.0.0.1 client then: 0 (the server closed)",
                                 lazy)
    assert got == ["holding", "127.0.0.1 accept: ok from 127.0.0.1",
                          "127.0.0.1 accepted socket is on 127.0.0.1, same port as the listener: yes",
                          "127.0.0.1 server got: sent before the checkpoint", "127.0.0.1 client connect: ok",
                          "127.0.0.1 client got: reply", "127.0.0.1 client then: 0 (the server closed)"]


@pytest.mark.parametrize("bundle", ["udp", "udp-glibc"])
def test_udp_over_loopback_matches_native(snapbox, images, bundle):
    want = native_fixture(images, bundle)
    assert "and recv: Connection refused" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "udp").stdout, want)


def test_queued_datagrams_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "udp",
                                 "after the sleep: second queued (ok) from 127.0.0.1, the sender's port: yes", False)
    assert got == ["holding", "after the sleep: first queued (ok) from 127.0.0.1, the sender's port: yes",
                   "after the sleep: second queued (ok) from 127.0.0.1, the sender's port: yes"]


@pytest.mark.parametrize("bundle", ["unixdgram", "unixdgram-glibc"])
def test_unix_datagram_and_seqpacket_sockets_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "unnamed sends to sb, connected elsewhere: Operation not permitted" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ud").stdout, want)


def test_queued_datagrams_and_records_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "unixdgram", "datagram: second", True)
    assert got == ["holding", "seqpacket record: record one (10)",
                   "seqpacket into 6 bytes: record (6), MSG_TRUNC set", "seqpacket after the peer closed: 0",
                   "datagram: first datagram", "datagram: second"]
