"""The sandbox's network (`--network`), joined by the sandbox process before its kernel
makes any host socket.

- `sandbox` (the default for bundles, as runsc's): a network namespace of the sandbox's
  own. A bundle whose config names one (`linux.namespaces: [{"type": "network", "path":
  P}]`, how containerd and CNI hand a network to a runtime) gets that one, as it is. Else
  snapbox makes one with pyroute2: loopback up, and a veth pair to the namespace the
  command ran in: `sbxN` there with 10.213.x.(4N+1)/30 and fd0a:d5:213::(4N+1)/126,
  `eth0` inside with the next addresses and default routes through the first. The namespace lives as long as the
  sandbox process, and takes the pair with it. Nothing is routed beyond this host: what
  the sandbox sends further leaves from this side instead (snapbox.kernel.inet.masquerades). A restored sandbox gets the address it
  had if it is free, so that its connections can come back on it.
- `host`: the host's own stack, as runsc's hostinet (`snapbox do` uses it by default).
- `none`: loopback only; every socket lives in the sentry.

Traffic between the sandbox's own sockets never leaves the sentry, whatever the mode.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass

from snapbox.state import SnapboxError

MODES = ("sandbox", "host", "none")
SUBNET = ipaddress.IPv4Network("10.213.0.0/16")  # cut in /30s, one per sandbox
SLOTS = SUBNET.num_addresses // 4
SUBNET6 = ipaddress.IPv6Network("fd0a:d5:213::/64")  # a unique local prefix: slot N's /126 is its Nth
IFA_F_NODAD = 0x02  # an address usable at once (no duplicate detection: the pair has two ends only)
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Network:
    """What the sandbox's network is: saved in its image, shown by `inspect`."""

    mode: str = "none"
    address: str = ""  # the sandbox's own address (a namespace snapbox made)
    gateway: str = ""  # the host side of its veth pair
    address6: str = ""  # the same two in IPv6 (none if the host has IPv6 turned off)
    gateway6: str = ""
    interface: str = ""  # the host side's name
    path: str = ""  # the namespace the bundle named

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def parse_publish(text: str) -> tuple[tuple[str, int], int, str]:
    """`--publish [IP:]HOSTPORT:PORT[/tcp|/udp]` as ((ip, host port), sandbox port,
    protocol); an IPv6 address in brackets. No IP: every address of the host (0.0.0.0), as
    Docker's -p."""
    spec, _, proto = text.partition("/")
    if proto not in ("", "tcp", "udp"):
        raise SnapboxError(f"--publish {text}: the protocol is tcp or udp")
    ip = "0.0.0.0"
    if spec.startswith("["):
        ip, close, spec = spec[1:].partition("]")
        if not close or not spec.startswith(":"):
            raise SnapboxError(f"--publish {text}: expected [IPV6]:HOSTPORT:PORT")
        spec = spec[1:]
    elif spec.count(":") == 2:
        ip, _, spec = spec.partition(":")
    host_port, colon, port = spec.partition(":")
    try:
        address = ipaddress.ip_address(ip)
        host, inner = int(host_port), int(port)
    except ValueError:
        raise SnapboxError(f"--publish {text}: expected [IP:]HOSTPORT:PORT") from None
    if not colon or not 0 <= host < 65536 or not 0 < inner < 65536:
        raise SnapboxError(f"--publish {text}: expected [IP:]HOSTPORT:PORT (host port 0: any free one)")
    return (str(address), host), inner, proto or "tcp"


def bundle_namespace(config: dict) -> str:
    """The network namespace path a bundle's config names ("" for none)."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return ""


def enter(mode: str, path: str = "", address: str = "") -> Network:
    """Put this process's thread in the network `mode` asks for. `address`: the one a
    restored sandbox had (a namespace snapbox makes then takes the same slot)."""
    if mode not in MODES:
        raise SnapboxError(f"unknown network mode {mode!r} (one of {', '.join(MODES)})")
    if mode != "sandbox":
        return Network(mode=mode)
    if path:
        _join(path)
        return Network(mode=mode, path=path)
    return _make(address)


def _join(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapboxError(f"cannot open network namespace {path} ({e.strerror})") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise SnapboxError(f"cannot join network namespace {path} ({os.strerror(err)})")
    finally:
        os.close(fd)


def _slot_addresses(slot: int, subnet=SUBNET) -> tuple[str, str]:
    base = subnet.network_address + 4 * slot
    return str(base + 1), str(base + 2)


def _make(address: str) -> Network:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    slots = list(range(SLOTS))
    if address and ipaddress.IPv4Address(address) in SUBNET:
        # The address it had first; if another sandbox has it, any other (what needed the
        # old one, a connection or a listener bound to it, then says so as it loads).
        first = (int(ipaddress.IPv4Address(address)) - int(SUBNET.network_address)) // 4
        slots.remove(first)
        slots.insert(0, first)
    with IPRoute() as outer:
        for slot in slots:
            name = f"sbx{slot}"
            try:
                outer.link("add", ifname=name, kind="veth", peer=f"sbxp{slot}")
                break
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise SnapboxError(f"cannot make the sandbox's network ({e.args[1]})") from None
        else:
            raise SnapboxError(f"cannot make the sandbox's network (all {SLOTS} addresses are taken)")
        gateway, mine = _slot_addresses(slot)
        gateway6, mine6 = _slot_addresses(slot, SUBNET6)
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise SnapboxError(f"cannot make a network namespace ({os.strerror(ctypes.get_errno())})")
            # `outer` still speaks to the namespace it was opened in: it moves the inner end here.
            (host_end,) = outer.link_lookup(ifname=name)
            (inner_end,) = outer.link_lookup(ifname=f"sbxp{slot}")
            outer.link("set", index=inner_end, net_ns_pid=os.getpid())
            outer.addr("add", index=host_end, address=gateway, prefixlen=30)
            if not _add_ipv6(outer, host_end, gateway6):
                gateway6 = mine6 = ""
            outer.link("set", index=host_end, state="up")
        except BaseException:
            outer.link("del", ifname=name)
            raise
    with IPRoute() as inner:
        (lo,) = inner.link_lookup(ifname="lo")
        inner.link("set", index=lo, state="up")
        (eth,) = inner.link_lookup(ifname=f"sbxp{slot}")
        inner.link("set", index=eth, ifname="eth0")
        inner.addr("add", index=eth, address=mine, prefixlen=30)
        inner.link("set", index=eth, state="up")
        inner.route("add", dst="0.0.0.0/0", gateway=gateway)
        if mine6 and _add_ipv6(inner, eth, mine6):
            inner.route("add", dst="::/0", gateway=gateway6, family=socket.AF_INET6)
        else:
            mine6 = gateway6 = ""
    return Network(mode="sandbox", address=mine, gateway=gateway, address6=mine6, gateway6=gateway6,
                   interface=name)


def _add_ipv6(ipr, index: int, address: str) -> bool:
    """Give link `index` `address`/126; False where the host has IPv6 turned off (the
    sandbox then has IPv4 only, as a container on such a host)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.addr("add", index=index, address=address, prefixlen=126, flags=IFA_F_NODAD)
    except NetlinkError as e:
        if e.code in (errno.EACCES, errno.EAFNOSUPPORT, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    return True
