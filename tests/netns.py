"""A veth pair into a network namespace of the test's own, and frames built by hand.

    with veth_pair() as veth:             # skips (pytest) where namespaces are not allowed
        inject = veth.injector()          # a packet socket on the namespace's end
        inject.send(ipv4_frame(veth, 17, 1234, 53, b"query"))   # arrives at veth.host_if
        veth.in_netns(lambda: ...)        # run code (make sockets) inside the namespace

Used by the live-capture tests and the service's live tests. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


@dataclass
class Veth:
    netns: str
    host_if: str
    peer_if: str
    host_ip: str
    peer_ip: str
    host_mac: bytes
    peer_mac: bytes

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a thread that entered the namespace (sockets it makes live there)."""
        result: dict[str, object] = {}

        def target() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{self.netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    result["error"] = OSError(ctypes.get_errno(), "setns failed")
                    return
                result["value"] = fn()
            except BaseException as exc:
                result["error"] = exc
            finally:
                os.close(fd)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["value"]  # type: ignore[return-value]

    def injector(self) -> socket.socket:
        """A packet socket on the namespace's end: what it sends arrives at `host_if`."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind((self.peer_if, 0))
            return s

        return self.in_netns(make)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _mac(netns: str | None, ifname: str) -> bytes:
    cmd = ["ip", *(["-n", netns] if netns else []), "-o", "link", "show", ifname]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return bytes.fromhex(out.split("link/ether ")[1].split()[0].replace(":", ""))


def _namespaces_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces and veth pairs needs root"
    probe = f"nmprobe{secrets.token_hex(3)}"
    proc = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"this machine does not allow network namespaces ({proc.stderr.strip()})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@contextlib.contextmanager
def veth_pair() -> Iterator[Veth]:
    """A fresh namespace and veth pair, removed afterwards; pytest.skip where not allowed."""
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    tag = secrets.token_hex(3)
    netns, host_if, peer_if = f"nmtest{tag}", f"nmh{tag}", f"nmp{tag}"
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    host_ip, peer_ip = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", netns)
        _ip("addr", "add", f"{host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{peer_ip}/24", "dev", peer_if)
        _ip("-n", netns, "link", "set", peer_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        if shutil.which("ethtool"):  # wire-sized TCP segments, not 64 KB offload blobs
            for prefix, ifname in (([], host_if), (["ip", "netns", "exec", netns], peer_if)):
                subprocess.run(
                    [*prefix, "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"],
                    capture_output=True,
                )
        yield Veth(
            netns, host_if, peer_if, host_ip, peer_ip, _mac(None, host_if), _mac(netns, peer_if)
        )
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_frame(
    veth: Veth, proto: int, sport: int, dport: int, payload: bytes, vlan: int | None = None
) -> bytes:
    """Ethernet + IPv4 + UDP (17) or TCP (6, PSH|ACK) from the peer to the host."""
    src, dst = socket.inet_aton(veth.peer_ip), socket.inet_aton(veth.host_ip)
    if proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        csum = _checksum(src + dst + struct.pack("!BBH", 0, 17, len(l4)) + l4) or 0xFFFF
        l4 = l4[:6] + struct.pack("!H", csum) + l4[8:]
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, 0x18, 64240, 0, 0)
        l4 += payload
        csum = _checksum(src + dst + struct.pack("!BBH", 0, 6, len(l4)) + l4)
        l4 = l4[:16] + struct.pack("!H", csum) + l4[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0x1234, 0x4000, 64, proto, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return veth.host_mac + veth.peer_mac + tag + b"\x08\x00" + ip + l4
