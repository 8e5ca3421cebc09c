"""Sockets against native runs: unix stream, datagram and seqpacket sockets (socketpair, bound
names, SCM_RIGHTS, SCM_CREDENTIALS), and TCP and UDP over loopback (127.0.0.1, ::1); each survives a
checkpoint mid-exchange. And the network interfaces as programs learn them (route netlink,
getifaddrs, the SIOCGIF* ioctls) in each network mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import (busybox_bundle, bundle_held_through_a_restore, held_through_a_restore, lines,
                            native_fixture, same_output, wait_for)


@pytest.mark.parametrize("bundle", ["sockets", "sockets-glibc"])
def test_unix_sockets_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "recv 2: second fd=yes" in want and "pipe: through the pipe" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "so").stdout, want)


@pytest.mark.parametrize("network", ["sandbox", "none"])
@pytest.mark.parametrize("bundle", ["inet", "inet-glibc"])
def test_tcp_over_loopback_matches_native(snapbox, images, bundle, network):
    """Connections inside the sentry (listeners of the sandbox's own) and, with a network, a
    connect to a port no one listens on through a host socket; with none, refused by the
    sentry as Linux's loopback refuses it (after EINPROGRESS, for a nonblocking one)."""
    want = native_fixture(images, bundle)
    assert "::1 server got: hello" in want and want.endswith("done\n")
    assert "127.0.0.1 waiting for room: connect Operation" in want and "TCP_INQ 71" in want
    assert same_output(snapbox("--network", network, "run", "--bundle", str(images / bundle), "tcp").stdout, want)


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


@pytest.mark.parametrize("network", ["sandbox", "none"])
@pytest.mark.parametrize("bundle", ["udp", "udp-glibc"])
def test_udp_over_loopback_matches_native(snapbox, images, bundle, network):
    """With a network, a bound socket's loopback traffic goes through its host socket (the
    host's ICMP errors too); with none, it stays in the sentry, which answers them itself."""
    want = native_fixture(images, bundle)
    assert "and recv: Connection refused" in want and want.endswith("done\n")
    assert "127.0.0.1: error queue 1: 6 'third ' flags ERRQUEUE 1 TRUNC 1" in want
    assert "SO_TIMESTAMPNS 1; a datagram's control messages: (1, 35, 16 bytes, recent) (0, 2, 4 bytes)" in want
    assert same_output(snapbox("--network", network, "run", "--bundle", str(images / bundle), "udp").stdout, want)


def test_queued_datagrams_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "udp",
                                 "after the sleep: second queued (ok) from 127.0.0.1, the sender's port: yes", False)
    assert got == ["holding", "after the sleep: first queued (ok) from 127.0.0.1, the sender's port: yes",
                   "after the sleep: second queued (ok) from 127.0.0.1, the sender's port: yes"]


@pytest.mark.parametrize("bundle", ["udplite", "udplite-glibc"])
def test_udplite_matches_native(snapbox, images, bundle):
    """UDP-Lite over IPv4 and IPv6 loopback: ports apart from UDP's, checksum coverage
    options clamped, partial coverage below the receiver's asked for dropped."""
    want = native_fixture(images, bundle)
    assert "IPv6: coverage 10 sent, 20 asked: Resource temporarily unavailable" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ul").stdout, want)


def test_a_udplite_socket_and_its_port_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "udplite", "done", lazy=False)
    assert got == ["holding", "after the hold: kept", "SO_PROTOCOL after the hold: 136",
                   "another UDP-Lite socket on its port: Address in use", "a UDP socket on that port number: ok",
                   "done"]


@pytest.mark.parametrize("bundle", ["ipheader", "ipheader-glibc"])
def test_udp_ip_header_fields_match_native(snapbox, images, bundle):
    """TTL and TOS, hop limit and traffic class: set by options or sendmsg's control
    messages (checked as Linux checks them), received as control messages when asked for,
    cut short with MSG_CTRUNC as Linux cuts them, IPv4's on an IPv6 socket for an IPv4 sender."""
    want = native_fixture(images, bundle)
    assert "IPv6 control messages: received, controllen 48; level 41 type 52, 4 bytes: 2; " \
        "level 41 type 67, 4 bytes: 255" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "iph").stdout, want)


def test_a_queued_datagrams_header_fields_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "ipheader", "done", lazy=False)
    assert got == ["holding", "after the hold: received, controllen 48; level 0 type 2, 4 bytes: 5; "
                   "level 0 type 1, 1 bytes: 40", "done"]


@pytest.mark.parametrize("bundle", ["unixdgram", "unixdgram-glibc"])
def test_unix_datagram_and_seqpacket_sockets_match_native(snapbox, images, tmp_path, bundle):
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert "unnamed sends to sb, connected elsewhere: Operation not permitted" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "ud").stdout, want)


@pytest.mark.parametrize("bundle", ["unixcreds", "unixcreds-glibc"])
def test_credentials_passed_on_unix_sockets_match_native(snapbox, images, tmp_path, bundle):
    """SCM_CREDENTIALS and SO_PASSCRED: what each send carries, which claims are refused, cut
    control buffers, the name a sender with SO_PASSCRED gets, the options unix sockets keep."""
    want = native_fixture(images, bundle, cwd=tmp_path)
    assert 'stream: 6 bytes "before", controllen 32, ctrunc 0, creds pid 0 uid 65534 gid 65534' in want
    assert "as nobody, claim uid 0: Operation not permitted" in want and want.endswith("done\n")
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "uc").stdout, want)


def test_credentials_queued_with_data_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "unixcreds", "done", lazy=False)
    assert got == ["holding",
                   'held stream: 9 bytes "anonymous", controllen 32, ctrunc 0, creds pid 0 uid 65534 gid 65534',
                   'held stream: 7 bytes "claimed", controllen 32, ctrunc 0, creds pid self uid 0 gid 0',
                   'held dgram: 8 bytes "datagram", controllen 32, ctrunc 0, creds pid self uid 0 gid 0', "done"]


def test_queued_datagrams_and_records_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "unixdgram", "datagram: second", True)
    assert got == ["holding", "seqpacket record: record one (10)",
                   "seqpacket into 6 bytes: record (6), MSG_TRUNC set", "seqpacket after the peer closed: 0",
                   "datagram: first datagram", "datagram: second"]


@pytest.mark.parametrize("bundle", ["netif", "netif-glibc"])
def test_network_interfaces_match_native_on_the_hosts_network(snapbox, images, bundle):
    """--network host: the host's own interfaces, through route netlink dumps (answers
    addressed to the socket's port), getifaddrs, if_nameindex and the SIOCGIF* ioctls."""
    want = native_fixture(images, bundle)
    assert "if_nameindex: 1 lo" in want and "link 1 with an ack: 1 answer, ack 0, addressed to us 1" in want
    assert same_output(snapbox("--network", "host", "run", "--bundle", str(images / bundle), "nif").stdout, want)


def test_a_sandbox_without_a_network_sees_loopback_alone(snapbox, images):
    got = snapbox("--network", "none", "run", "--bundle", str(images / "netif"), "nif").stdout.splitlines()
    assert got[:4] == ["if_nameindex: 1 lo", "getifaddrs: lo 127.0.0.1/8 up 1", "getifaddrs: lo ::1/128 up 1",
                       "if_nametoindex: lo 1, nosuch0 0 (No such device)"]
    assert "SIOCGIFCONF: 40 bytes needed, 40 given: lo 127.0.0.1" in got
    assert "link dump: as many as if_nameindex 1, addressed to us 1" in got and got[-1] == "done"


def test_ip_route_without_a_network_is_a_fresh_namespaces(snapbox):
    """Route dumps with --network none: the local table of a namespace with loopback up
    (`unshare -n` natively), the main one empty, as `ip` prints them."""
    script = "ip route; echo -; ip route show table all; echo -; ip -6 route show table all; echo -; " \
             "ip -j route show table local"
    native = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up; " + script], capture_output=True,
                            text=True, timeout=30, check=True).stdout
    assert "broadcast 127.255.255.255 dev lo table local" in native and native.startswith("-\n")
    assert snapbox("--network", "none", "do", "sh", "-c", script).stdout == native


def test_a_sandbox_in_its_own_namespace_sees_its_own_eth0(snapbox, images, tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        subprocess.run(snapbox.cmd("run", "--bundle", str(images / "netif"), "--detach", "nif"), stdout=f,
                       stderr=f, check=True, timeout=60, stdin=subprocess.DEVNULL)
    wait_for(lambda: "done" in lines(out), timeout=30, what="the program")
    address = json.loads(snapbox("state", "nif").stdout)["network"]["address"]
    got = lines(out)
    assert got[0].startswith("if_nameindex: 1 lo ") and got[0].endswith(" eth0")
    assert f"getifaddrs: eth0 {address}/30 up 1" in got
    assert f"SIOCGIFCONF: 80 bytes needed, 80 given: lo 127.0.0.1 eth0 {address}" in got


def test_unread_netlink_answers_survive_a_checkpoint(snapbox, images, tmp_path):
    got = held_through_a_restore(snapbox, images, tmp_path, "netif", "done", lazy=False)
    before = int(got[0].split(": ")[1])
    assert before >= 2 and got[1:] == ["holding", f"links after the restore: {before}, addressed to us 1", "done"]


def test_a_netlink_request_that_is_not_a_query_is_refused_and_logged(snapbox, tmp_path):
    """Only RTM_GET* queries are answered: a request to change a link is refused with
    EOPNOTSUPP (its header echoed, as NETLINK_CAP_ACK asks) and changes nothing."""
    script = textwrap.dedent("""
        import socket, struct
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        s.setsockopt(270, 10, 1)  # NETLINK_CAP_ACK
        s.send(struct.pack("<IHHII", 32, 16, 1 | 4, 7, 0) + struct.pack("<BxHiII", 0, 0, 1, 0, 1))  # RTM_NEWLINK
        length, kind, flags, seq, port = struct.unpack_from("<IHHII", reply := s.recv(4096))
        error, = struct.unpack_from("<i", reply, 16)
        print(kind, seq, port == s.getsockname()[0], error, length)
    """)
    log = tmp_path / "sandbox.log"
    got = snapbox("--network", "none", "--debug-log", str(log), "do", "--", os.path.realpath(sys.executable),
                  "-c", script).stdout
    assert got == "2 7 True -95 36\n"  # NLMSG_ERROR, -EOPNOTSUPP, the request's header
    assert "netlink route message 16: EOPNOTSUPP" in log.read_text()


PORT_RANGE = """
import errno, os, socket
path = '/proc/sys/net/ipv4/ip_local_port_range'
print(open(path).read().split())
fd = os.open(path, os.O_WRONLY)
for text in (b'5 2', b'x', b'40000 40001'):
    try:
        os.write(fd, text)
        print('wrote', text.decode())
    except OSError as e:
        print(text.decode(), errno.errorcode[e.errno])
print(open(path).read().split())
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    held = []
    for i in range(3):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(('127.0.0.1', 0))
            held.append(s)
            print(kind, 'bound to a port in the range', 40000 <= s.getsockname()[1] <= 40001)
        except OSError as e:
            print(kind, errno.errorcode[e.errno])
"""


@pytest.mark.parametrize("network", ["sandbox", "none"])
def test_the_sandbox_has_its_own_ephemeral_port_range(snapbox, tmp_path, network):
    """net.ipv4.ip_local_port_range written inside the sandbox (checked as Linux checks it)
    is where its binds to port 0 take ports from, with or without a network, until they run
    out (EADDRINUSE); the host's range is not touched."""
    host = open("/proc/sys/net/ipv4/ip_local_port_range").read()
    p = subprocess.run(snapbox.cmd("--network", network, "do", sys.executable, "-c", PORT_RANGE), capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.stdout.splitlines() == [
        "['32768', '60999']", "5 2 EINVAL", "x EINVAL", "wrote 40000 40001", "['40000', '40001']",
        *[f"{kind} bound to a port in the range True" for kind in (1, 1)], "1 EADDRINUSE",
        *[f"{kind} bound to a port in the range True" for kind in (2, 2)], "2 EADDRINUSE"], p.stderr
    assert open("/proc/sys/net/ipv4/ip_local_port_range").read() == host


@pytest.mark.parametrize("bundle", ["procnet", "procnet-glibc"])
def test_proc_net_shows_the_sandboxs_sockets_and_counts_like_linux(snapbox, images, bundle):
    """/proc/net: the link to self/net, a process's TCP, UDP and unix sockets in tcp, udp
    and unix with their states, owners and inodes, and the snmp counters they move."""
    want = native_fixture(images, bundle)
    assert "tcp listener: state 0A, address ours, port ours, uid ours" in want
    assert same_output(snapbox("run", "--bundle", str(images / bundle), "pn").stdout, want)


def test_net_settings_written_inside_are_kept_through_a_checkpoint(snapbox, images, tmp_path):
    """net.ipv4.tcp_recovery, ip_forward and tcp_sack take integers (anything else EINVAL)
    and read back as written, here and after a restore; ip_forward is snmp's Forwarding."""
    script = ("cd /proc/sys/net/ipv4; echo 2 > tcp_recovery; echo 1 > ip_forward; "
              "echo yes > tcp_sack || echo refused; cat tcp_recovery ip_forward tcp_sack; "
              "grep '^Ip: [0-9]' /proc/net/snmp | cut -d' ' -f2; echo holding; sleep 1; "
              "cat tcp_recovery ip_forward; echo done")
    got = bundle_held_through_a_restore(snapbox, busybox_bundle(images, tmp_path, script), tmp_path, "done",
                                        lazy=False)
    got = [line for line in got if "Invalid argument" not in line]
    assert got == ["refused", "2", "1", "1", "1", "holding", "2", "1", "done"]
