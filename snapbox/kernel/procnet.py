"""/proc/net (/proc/PID/net): the sandbox's network as Linux's procfs shows it.

Its sockets (tcp, tcp6, udp, udp6, unix: the sentry's own, found through the fd tables of
its processes, the backlogs of its listeners and the ports closed connections still hold),
its interfaces (dev, if_inet6: with a network outside, the sandbox's namespace's own, as
the host has them; without, loopback alone) and its protocol counters (snmp: the
connections and datagrams of the sentry's loopback as Linux counts them, inet.mib, added
to the namespace's own where there is one; netstat's extended counters are the
namespace's, and none without one). The sentry's loopback carries no packets: it adds
nothing to the packet and segment counts (dev's, Ip's, InSegs, OutSegs).
"""

from __future__ import annotations

import ipaddress
import struct

from snapbox.kernel.creds import shown
from snapbox.kernel.inet import (AF_INET6, IPPROTO_UDPLITE, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED,
                                 TCP_FIN_WAIT2, TCP_LISTEN, InetSocket, UdpSocket, has_outside)
from snapbox.kernel.socket import SOCK_STREAM, UnixDgramSocket, UnixSocket

FILES = ("dev", "if_inet6", "netstat", "snmp", "tcp", "tcp6", "udp", "udp6", "unix")
TCP_TIME_WAIT = 6
SS_UNCONNECTED, SS_CONNECTED = 1, 3
SO_ACCEPTCON = 1 << 16
RTO_CLOCK, RTO_INIT_CLOCK, ATO_CLOCK = 20, 100, 4  # 200 ms, 1 s, 40 ms in USER_HZ ticks

TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
TCP6_HEADER = ("  sl  local_address                         remote_address                        st tx_queue "
               "rx_queue tr tm->when retrnsmt   uid  timeout inode")
UDP_HEADER = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops"
UDP6_HEADER = ("  sl  local_address                         remote_address                        st tx_queue "
               "rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops")
SNMP = {
    "Ip": "Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards "
          "InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs "
          "FragFails FragCreates OutTransmits",
    "Icmp": "InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos "
            "InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal "
            "OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos "
            "OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps",
    "Tcp": "RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs "
           "OutSegs RetransSegs InErrs OutRsts InCsumErrors",
    "Udp": "InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors",
    "UdpLite": "InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti "
               "MemErrors",
}
NETSTAT = {
    "TcpExt": "SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned "
              "OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow "
              "TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows "
              "ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging "
              "TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo "
              "TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans "
              "TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed "
              "TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose "
              "TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures "
              "TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs "
              "TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback "
              "TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow "
              "TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge "
              "TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive "
              "TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole "
              "TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv "
              "TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd "
              "TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq "
              "TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive "
              "TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop "
              "TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash "
              "TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash "
              "TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps",
    "IpExt": "InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets "
             "InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts "
             "InECT0Pkts InCEPkts ReasmOverlaps",
}
DEV_HEADER = ("Inter-|   Receive                                                |  Transmit\n"
              " face |bytes    packets errs drop fifo frame compressed multicast|"
              "bytes    packets errs drop fifo colls carrier compressed\n")


def content(k, name: str) -> str:
    """The text of /proc/net/`name` (one of FILES) as process k.current reads it."""
    if name in ("dev", "if_inet6"):
        return _interfaces(k, name)
    if name == "snmp":
        return _snmp(k)
    if name == "netstat":
        if has_outside(k):
            k.ensure_network()
            with open("/proc/thread-self/net/netstat") as f:
                return f.read()
        return "".join(f"{proto}: {names}\n{proto}:{' 0' * len(names.split())}\n" for proto, names in NETSTAT.items())
    if name == "unix":
        return _unix(k)
    if name.startswith("tcp"):
        return _tcp(k, v6=name == "tcp6")
    return _udp(k, v6=name == "udp6")


def _interfaces(k, name: str) -> str:
    if has_outside(k):
        k.ensure_network()  # the sentry's thread is in the sandbox's namespace from then on
        with open(f"/proc/thread-self/net/{name}") as f:
            return f.read()
    if name == "dev":
        return DEV_HEADER + "    lo:" + " 0" * 16 + "\n"
    return f"{1:032x} 01 80 10 80 {'lo':>8}\n"


def _snmp(k) -> str:
    """The sentry's counts, added to the namespace's own (its traffic with the outside)
    where the sandbox has a network."""
    counts = {}
    if has_outside(k):
        k.ensure_network()
        with open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f]
        for names, values in zip(rows[::2], rows[1::2]):
            proto = names[0].rstrip(":")
            counts.update({f"{proto}.{n}": int(v) for n, v in zip(names[1:], values[1:]) if proto in SNMP})
    counts.update({"Ip.Forwarding": 1 if k.net_sysctls.get("net/ipv4/ip_forward", 0) else 2, "Ip.DefaultTTL": 64,
                   "Tcp.RtoAlgorithm": 1, "Tcp.RtoMin": 200, "Tcp.RtoMax": 120000, "Tcp.MaxConn": -1})
    counts["Tcp.CurrEstab"] = counts.get("Tcp.CurrEstab", 0) + sum(
        s.state() in (TCP_ESTABLISHED, TCP_CLOSE_WAIT) for s in _sockets(k)
        if isinstance(s, InetSocket) and s.refs > 0 and s.host is None)
    for name, n in k.snmp.items():
        counts[name] = counts.get(name, 0) + n
    out = []
    for proto, names in SNMP.items():
        values = " ".join(str(counts.get(f"{proto}.{n}", 0)) for n in names.split())
        out.append(f"{proto}: {names}\n{proto}: {values}\n")
    return "".join(out)


def _sockets(k) -> list:
    """Every socket of the sandbox once: those open in its processes, the connections
    waiting in its listeners' backlogs, and the closed connections holding their port."""
    seen: dict[int, object] = {}
    for tg in k.tasks.pidns.groups.values():
        if tg.exit_status is None:
            for f in tg.fds.files.values():
                seen.setdefault(id(f), f)
    for s in list(seen.values()):
        for waiting in getattr(s, "pending", ()):
            seen.setdefault(id(waiting), waiting)
    for bound in k.inet_ports.values():
        for s in bound:
            if s.refs == 0 and s.lingering:
                seen.setdefault(id(s), s)
    return sorted(seen.values(), key=lambda s: getattr(s, "ino", 0))


def _uid(k, s) -> int:
    return shown(k.current.cred.user_ns if k.current is not None else None, s.owner[0], "uid")


def _address(addr: tuple, v6: bool) -> str:
    """An (ip, port) as Linux prints it: the address's 32-bit words in the machine's order."""
    if not addr:
        addr = ("::" if v6 else "0.0.0.0", 0)
    packed = ipaddress.ip_address(addr[0]).packed
    if v6 and len(packed) == 4:
        packed = ipaddress.IPv6Address(f"::ffff:{addr[0]}").packed
    words = struct.unpack(f"<{len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{addr[1]:04X}"


def _tcp(k, v6: bool) -> str:
    header = TCP6_HEADER if v6 else TCP_HEADER
    lines = [header + "\n" if v6 else f"{header:<149}\n"]
    sockets = [s for s in _sockets(k) if isinstance(s, InetSocket) and (s.family == AF_INET6) == v6]
    shown_sockets = [s for s in sockets if s.listening] + [s for s in sockets if not s.listening]
    for s in shown_sockets:
        if s.refs == 0 and s.lingering:
            state = TCP_TIME_WAIT if s.incoming.writers == 0 else TCP_FIN_WAIT2
            line = (f"{len(lines) - 1:4d}: {_address(s.local, v6)} {_address(s.remote, v6)} {state:02X} "
                    f"00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000")
        else:
            state = s.state()
            if state == TCP_CLOSE or not s.local:
                continue  # bound at most: in no table Linux lists
            if state == TCP_LISTEN:
                tx, rx, tail = s.backlog, len(s.pending), f"{RTO_INIT_CLOCK} 0 0 10 0"
            else:
                tx, rx, tail = 0, s.unread(), f"{RTO_CLOCK} {ATO_CLOCK} 0 10 -1"
            line = (f"{len(lines) - 1:4d}: {_address(s.local, v6)} {_address(s.remote, v6)} {state:02X} "
                    f"{tx:08X}:{rx:08X} 00:00000000 00000000 {_uid(k, s):5d}        0 {s.ino} 1 "
                    f"0000000000000000 {tail}")
        lines.append(line + "\n" if v6 else f"{line:<149}\n")
    return "".join(lines)


def _udp(k, v6: bool) -> str:
    header = UDP6_HEADER if v6 else UDP_HEADER
    lines = [header + "\n" if v6 else f"{header:<127}\n"]
    for s in _sockets(k):
        if not isinstance(s, UdpSocket) or s.protocol == IPPROTO_UDPLITE or (s.family == AF_INET6) != v6:
            continue
        if not s.local:
            continue  # unbound: in no hash table
        state = TCP_ESTABLISHED if s.connected else TCP_CLOSE
        line = (f"{len(lines) - 1:5d}: {_address(s.local, v6)} {_address(s.remote if s.connected else (), v6)} "
                f"{state:02X} 00000000:{s.queued:08X} 00:00000000 00000000 {_uid(k, s):5d}        0 {s.ino} 2 "
                f"0000000000000000 0")
        lines.append(line + "\n" if v6 else f"{line:<127}\n")
    return "".join(lines)


def _unix(k) -> str:
    lines = ["Num       RefCount Protocol Flags    Type St Inode Path\n"]
    for s in _sockets(k):
        if isinstance(s, UnixSocket) and not isinstance(s, InetSocket):
            kind, flags = s.kind, SO_ACCEPTCON if s.listening else 0
            state = SS_CONNECTED if s.incoming is not None and not s.listening else SS_UNCONNECTED
        elif isinstance(s, UnixDgramSocket):
            kind, flags = 2, 0  # SOCK_DGRAM
            state = SS_CONNECTED if s.peer_socket is not None else SS_UNCONNECTED
        else:
            continue
        path = s.address.replace(b"\0", b"@") if s.address[:1] == b"\0" else s.address
        refs = 2 if s.refs > 0 else 1
        name = f" {path.decode(errors='replace')}" if path else ""
        lines.append(f"0000000000000000: {refs:08X} 00000000 {flags:08X} {kind or SOCK_STREAM:04X} {state:02X} "
                     f"{s.ino:5d}{name}\n")
    return "".join(lines)
