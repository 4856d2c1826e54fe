"""Live capture (AF_PACKET) on a veth pair into a network namespace the tests create.

Frames are injected on the namespace's end of the pair with a packet socket, so the bytes the
capture must return are known exactly; real TCP/UDP traffic from the Linux stacks checks the
ordinary path. Tests that need namespaces skip, saying why, where the machine forbids them.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from netmamba.capture import live
from netmamba.capture.live import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    CaptureError,
    CapturePermissionError,
    FilterError,
    LiveCapture,
    LiveCaptureConfig,
    compile_bpf,
    cook_program,
)
from netmamba.config import ConfigError
from netns import Veth, ipv4_frame, veth_pair

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_PACKET is Linux")

METHODS = ("ring", "recvmsg")
HAVE_TCPDUMP = shutil.which("tcpdump") is not None
HAVE_LIBPCAP = live._load_libpcap() is not None
COMPILERS = [
    pytest.param("libpcap", marks=pytest.mark.skipif(not HAVE_LIBPCAP, reason="no libpcap")),
    pytest.param("tcpdump", marks=pytest.mark.skipif(not HAVE_TCPDUMP, reason="no tcpdump")),
]


@pytest.fixture
def veth() -> Iterator[Veth]:
    with veth_pair() as v:
        yield v


# --- reading helpers ----------------------------------------------------------------------------


def collect(
    capture: LiveCapture, done: Callable[[list[live.Packet]], bool], timeout: float = 5.0
) -> list[live.Packet]:
    """Packets from `capture` until `done(packets)` or the timeout."""
    got: list[live.Packet] = []
    deadline = time.monotonic() + timeout
    for batch in capture.batches():
        got.extend(batch)
        if done(got) or time.monotonic() > deadline:
            break
    return got


def udp_payloads(packets: list[live.Packet], dport: int) -> list[bytes]:
    """UDP payloads to `dport` in Ethernet/IPv4 frames (offsets from the headers)."""
    out = []
    for p in packets:
        d = p.data
        if len(d) < 42 or d[12:14] != b"\x08\x00" or d[23] != 17:
            continue
        l4 = 14 + (d[14] & 0x0F) * 4
        if struct.unpack_from("!H", d, l4 + 2)[0] == dport:
            out.append(d[l4 + 8 :])
    return out


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_injected_frames_arrive_byte_for_byte(veth: Veth, method: str) -> None:
    sizes = [0, 1, 18, 100, 513, 1472]  # UDP payloads: minimum frame up to a full 1514 bytes
    frames = [ipv4_frame(veth, 17, 40000 + i, 7001, bytes([i]) * n) for i, n in enumerate(sizes)]
    inject = veth.injector()
    with LiveCapture(LiveCaptureConfig(interface=veth.host_if, method=method)) as cap:
        assert cap.linktype == LINKTYPE_ETHERNET and cap.method == method
        before = time.time_ns()
        for frame in frames:
            inject.send(frame)
        got = collect(cap, lambda ps: len([p for p in ps if p.data in frames]) == len(frames))
        after = time.time_ns()
    ours = [p for p in got if p.data in frames]
    assert [p.data for p in ours] == frames  # every byte, in order, nothing added
    assert all(p.linktype == LINKTYPE_ETHERNET for p in ours)
    assert all(before <= p.ts_ns <= after for p in ours)  # kernel time, ns since the epoch
    assert [p.ts_ns for p in ours] == sorted(p.ts_ns for p in ours)


@pytest.mark.parametrize("method", METHODS)
def test_real_tcp_and_udp_traffic_from_the_namespace(veth: Veth, method: str) -> None:
    server = socket.create_server((veth.host_ip, 0))
    port = server.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((veth.host_ip, 0))
    udp_port = udp.getsockname()[1]
    message = b"hello netmamba over a real TCP connection"

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(conn.recv(1024).upper())

    def client() -> bytes:
        with socket.create_connection((veth.host_ip, port), timeout=5) as c:
            c.sendall(message)
            reply = c.recv(1024)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"udp datagram", (veth.host_ip, udp_port))
        return reply

    with LiveCapture(LiveCaptureConfig(interface=veth.host_if, method=method)) as cap:
        threading.Thread(target=echo, daemon=True).start()
        assert veth.in_netns(client) == message.upper()
        got = collect(cap, lambda ps: b"udp datagram" in udp_payloads(ps, udp_port))
    server.close()
    udp.close()

    def tcp_segments(src_ip: str, dport: int) -> list[tuple[int, bytes]]:
        segs = []
        for p in got:
            d = p.data
            if d[12:14] == b"\x08\x00" and d[23] == 6 and socket.inet_ntoa(d[26:30]) == src_ip:
                l4 = 14 + (d[14] & 0x0F) * 4
                if struct.unpack_from("!H", d, l4 + 2)[0] == dport:
                    total = struct.unpack_from("!H", d, 16)[0]
                    payload = d[l4 + (d[l4 + 12] >> 4) * 4 : 14 + total]
                    segs.append((d[l4 + 13], payload))
        return segs

    to_server = tcp_segments(veth.peer_ip, port)
    assert to_server[0][0] & 0x12 == 0x02  # the SYN opens the connection
    assert message in b"".join(payload for _, payload in to_server)
    from_server = [
        (f, pl)
        for p in got
        if p.data[12:14] == b"\x08\x00" and socket.inet_ntoa(p.data[26:30]) == veth.host_ip
        for f, pl in [(p.data[47], p.data[54:])]
    ]
    assert any(message.upper() in pl for _, pl in from_server)
    assert udp_payloads(got, udp_port) == [b"udp datagram"]


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("method", METHODS)
def test_bpf_filter_keeps_only_what_it_should(veth: Veth, method: str, compiler: str) -> None:
    keep = [ipv4_frame(veth, 17, 1000 + i, 5001, b"keep %d" % i) for i in range(5)]
    drop = [
        ipv4_frame(veth, 17, 1000, 5002, b"other port"),
        ipv4_frame(veth, 6, 1000, 5001, b"tcp, same port"),
        ipv4_frame(veth, 17, 5001, 9999, b"source port only"),
    ]
    config = LiveCaptureConfig(
        interface=veth.host_if, method=method, bpf="udp and dst port 5001", filter_compiler=compiler
    )
    inject = veth.injector()
    with LiveCapture(config) as cap:
        for d, k in zip(drop, keep, strict=False):
            inject.send(d)
            inject.send(k)
        for k in keep[len(drop) :]:
            inject.send(k)
        got = collect(cap, lambda ps: keep[-1] in [p.data for p in ps])
        stats = cap.stats()
    assert [p.data for p in got] == keep
    assert stats.received == len(keep) and stats.dropped == 0


@pytest.mark.parametrize("method", METHODS)
def test_vlan_tag_moved_out_by_the_kernel_is_put_back(veth: Veth, method: str) -> None:
    frame = ipv4_frame(veth, 17, 1234, 7002, b"tagged", vlan=7)
    inject = veth.injector()
    with LiveCapture(LiveCaptureConfig(interface=veth.host_if, method=method)) as cap:
        inject.send(frame)
        got = collect(cap, lambda ps: any(b"tagged" in p.data for p in ps))
    tagged = [p.data for p in got if b"tagged" in p.data]
    assert tagged == [frame]
    assert tagged[0][12:16] == b"\x81\x00\x00\x07"


@pytest.mark.parametrize("method", METHODS)
def test_interface_any_gives_linux_cooked_headers(veth: Veth, method: str) -> None:
    frame = ipv4_frame(veth, 17, 4321, 7003, b"cooked")
    config = LiveCaptureConfig(interface="any", method=method, bpf=f"udp and host {veth.peer_ip}")
    inject = veth.injector()
    with LiveCapture(config) as cap:
        assert cap.linktype == LINKTYPE_LINUX_SLL
        inject.send(frame)
        got = collect(cap, lambda ps: len(ps) > 0)
    assert len(got) == 1
    data = got[0].data
    # Cooked header: packet type 0 (to us), ARPHRD_ETHER, 6-byte source MAC padded to 8, IPv4.
    expected = struct.pack("!HHH", 0, 1, 6) + veth.peer_mac + b"\0\0" + b"\x08\x00"
    assert data[:16] == expected
    assert data[16:] == frame[14:]


@pytest.mark.parametrize("method", METHODS)
def test_kernel_drops_are_counted(veth: Veth, method: str) -> None:
    config = LiveCaptureConfig(
        interface=veth.host_if, method=method, buffer_mb=1, block_kb=4, bpf="udp dst port 7004"
    )
    inject = veth.injector()
    sent = 3000
    with LiveCapture(config) as cap:
        frame = ipv4_frame(veth, 17, 1, 7004, bytes(1472))
        for i in range(sent):  # nobody reads: a 1 MB buffer overflows
            inject.send(frame)
            if i % 200 == 199:
                time.sleep(0.005)  # let the veth backlog (1000 packets) drain into the socket
        time.sleep(0.2)
        stats = cap.stats()
        read = collect(cap, lambda ps: False, timeout=0.5)
    assert stats.dropped > 0
    assert stats.received <= sent
    assert len(read) == stats.received - stats.dropped


@pytest.mark.parametrize("method", METHODS)
def test_close_from_another_thread_ends_iteration(veth: Veth, method: str) -> None:
    config = LiveCaptureConfig(
        interface=veth.host_if, method=method, poll_timeout_ms=50, bpf="udp port 1"
    )
    cap = LiveCapture(config)
    threading.Timer(0.3, cap.close).start()
    start = time.monotonic()
    assert collect(cap, lambda ps: False, timeout=10) == []
    assert time.monotonic() - start < 5


def test_unknown_interface_names_the_available_ones() -> None:
    with pytest.raises(
        CaptureError, match=r"no network interface named 'nosuch0' \(available: .*lo"
    ):
        LiveCapture("nosuch0")


def test_missing_permission_says_how_to_grant_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(live.socket, "socket", refuse)
    with pytest.raises(CapturePermissionError) as info:
        LiveCapture("lo")
    message = str(info.value)
    assert "needs root or CAP_NET_RAW" in message
    assert "sudo" in message and "setcap cap_net_raw+ep" in message


def _drop_cap_net_raw() -> None:
    # In the child before exec: remove CAP_NET_RAW from the bounding set, so even root lacks it.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 13, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_RAW
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_process_without_cap_net_raw_gets_the_permission_message() -> None:
    code = (
        "from netmamba.capture.live import LiveCapture, CapturePermissionError\n"
        "try:\n    LiveCapture('lo')\nexcept CapturePermissionError as e:\n    print(e)\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            preexec_fn=_drop_cap_net_raw if os.geteuid() == 0 else None,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot start a child without CAP_NET_RAW here: {exc}")
    assert "capturing on 'lo' needs root or CAP_NET_RAW" in proc.stdout, proc.stderr


# --- filters, without a network ---------------------------------------------------------------


@pytest.mark.parametrize("compiler", COMPILERS)
def test_compile_bpf_gives_the_classic_program(compiler: str) -> None:
    # "ip" on Ethernet: load the EtherType halfword at 12, accept 0x0800 with the snap length.
    expected = [(0x28, 0, 0, 12), (0x15, 0, 1, 0x0800), (0x06, 0, 0, 4096), (0x06, 0, 0, 0)]
    assert compile_bpf("ip", LINKTYPE_ETHERNET, 4096, compiler=compiler) == expected


@pytest.mark.parametrize("compiler", COMPILERS)
def test_invalid_filter_reports_the_compilers_message(compiler: str) -> None:
    with pytest.raises(FilterError, match=r"invalid capture filter 'udp port nope'.*nope"):
        compile_bpf("udp port nope", compiler=compiler)


def test_no_filter_compiler_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "_load_libpcap", lambda: None)
    monkeypatch.setattr(live.shutil, "which", lambda name: None)
    monkeypatch.setattr(live.os, "access", lambda path, mode: False)
    with pytest.raises(FilterError, match=r"needs libpcap .*apt-get install libpcap0.8.*tcpdump"):
        compile_bpf("tcp")


def test_cook_program_moves_loads_past_the_cooked_header() -> None:
    # "ip and udp" for cooked captures: protocol at 14 becomes the kernel's protocol ancillary
    # load; the IP protocol byte at 16 + 9 becomes 9; jumps and returns are untouched.
    program = [(0x28, 0, 0, 14), (0x15, 0, 3, 0x800), (0x30, 0, 0, 25), (0x15, 0, 1, 17)]
    program += [(0x06, 0, 0, 65535), (0x06, 0, 0, 0)]
    cooked = cook_program(program)
    assert cooked[0] == (0x28, 0, 0, 0xFFFFF000)  # SKF_AD_OFF + SKF_AD_PROTOCOL
    assert cooked[2] == (0x30, 0, 0, 9)
    assert cooked[1] == program[1] and cooked[3:] == program[3:]
    with pytest.raises(FilterError, match="link-layer address"):
        cook_program([(0x20, 0, 0, 6), (0x06, 0, 0, 0)])  # a load inside the address field


def test_config_round_trip_and_bad_values() -> None:
    config = LiveCaptureConfig(interface="eth0", bpf="tcp port 443", method="recvmsg")
    assert LiveCaptureConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="method must be 'ring' or 'recvmsg'"):
        LiveCaptureConfig(method="dpdk")
    with pytest.raises(ConfigError, match="interface is empty"):
        LiveCaptureConfig(interface="")
