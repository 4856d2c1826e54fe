"""Live capture from a Linux network interface with an AF_PACKET socket.

`LiveCapture(interface)` yields `Packet(ts_ns, data, linktype)` like the offline readers, or
lists of them (`batches()`, an empty list when nothing arrived within the poll timeout, so a
caller can expire flows while the link is quiet). Two ways of reading the socket:

- `ring` (default): a TPACKET_V3 receive ring shared with the kernel through mmap. The kernel
  fills whole blocks of packets; one poll() hands over a block of many packets, so the cost per
  packet is a struct unpack and a copy, with no system call. Measured faster (see
  benchmarks/bench_serve.py --capture-rate).
- `recvmsg`: one system call per packet with the kernel's nanosecond timestamp
  (SO_TIMESTAMPNS). Simpler, kept as the fallback when a ring cannot be set up.

A capture filter is a tcpdump-style expression compiled to classic BPF by libpcap
(`pcap_compile` through ctypes) or, without libpcap, by `tcpdump -ddd`, and attached with
SO_ATTACH_FILTER before the socket is bound, so no unfiltered packet slips in. Kernel drop
counters come from PACKET_STATISTICS. VLAN tags the kernel moved out of the frame (VLAN
acceleration) are put back, so the bytes are those on the wire.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from netmamba.config import Config, ConfigError

log = logging.getLogger(__name__)

# Link types of the frames we yield (pcap LINKTYPE_* values, as in capture files).
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link header (tun devices, IP tunnels)
LINKTYPE_LINUX_SLL = 113  # Linux "cooked" header (interface "any", other link layers)

# libpcap's DLT_* for pcap_open_dead (DLT_RAW is 12 on Linux, not 101).
_DLT_FOR_LINKTYPE = {LINKTYPE_ETHERNET: 1, LINKTYPE_RAW: 12, LINKTYPE_LINUX_SLL: 113}

# ARPHRD_* (from /sys/class/net/IF/type) -> how to open the socket.
_ARPHRD_ETHERNET_LIKE = {1, 772}  # Ethernet, loopback (which carries a zeroed Ethernet header)
_ARPHRD_RAW_IP = {65534, 768, 769, 776, 778}  # none (tun), ipip, ip6tnl, sit, gre

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_OUTGOING = 4
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SLL_HDR_LEN = 16

PERMISSION_HINT = "needs root or CAP_NET_RAW: run with sudo or `setcap cap_net_raw+ep`"

_BLOCK_HDR = struct.Struct("<I I I I I")  # version, offset_to_priv, status, num_pkts, first_off
_PKT_HDR = struct.Struct("<I I I I I I H H I I H")  # tpacket3_hdr up to tp_vlan_tpid
_SLL_ADDR = struct.Struct("<H H i H B B 8s")  # sockaddr_ll (protocol in network order)
_TPACKET3_HDRLEN = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)): where sockaddr_ll starts


class Packet(NamedTuple):
    """One captured frame: kernel timestamp (ns since the epoch), frame bytes, pcap link type."""

    ts_ns: int
    data: bytes
    linktype: int


class CaptureError(RuntimeError):
    """A live capture cannot be opened or read; the message says why and what to do."""


class CapturePermissionError(CaptureError):
    """The process may not open a packet socket."""


class FilterError(CaptureError):
    """A capture filter expression cannot be compiled or attached."""


@dataclass
class LiveCaptureConfig(Config):
    """How to capture from an interface; stored with what a live service produced."""

    interface: str = "any"  # an interface name, or "any" for all (Linux cooked headers)
    bpf: str = ""  # tcpdump-style filter expression ("" = everything)
    method: str = "ring"  # "ring" (TPACKET_V3 mmap ring) or "recvmsg" (one syscall a packet)
    snaplen: int = 262144  # bytes kept of each frame
    buffer_mb: int = 32  # kernel ring (or socket receive buffer) size
    block_kb: int = 1024  # ring block size: the unit the kernel hands over
    block_timeout_ms: int = 20  # a partly filled block is handed over after this long
    poll_timeout_ms: int = 100  # an empty batch is yielded after this long without packets
    promiscuous: bool = False  # also capture frames not addressed to this host
    filter_compiler: str = "auto"  # "auto", "libpcap" or "tcpdump"

    def __post_init__(self) -> None:
        if self.method not in ("ring", "recvmsg"):
            raise ConfigError(
                f"LiveCaptureConfig.method must be 'ring' or 'recvmsg', not {self.method!r}"
            )
        if self.filter_compiler not in ("auto", "libpcap", "tcpdump"):
            raise ConfigError("LiveCaptureConfig.filter_compiler must be auto, libpcap or tcpdump")
        for name in ("snaplen", "buffer_mb", "block_kb", "block_timeout_ms", "poll_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LiveCaptureConfig.{name} must be positive")
        if not self.interface:
            raise ConfigError("LiveCaptureConfig.interface is empty: name an interface or 'any'")


@dataclass
class CaptureStats:
    """Kernel counters since the capture opened."""

    received: int = 0  # packets that passed the filter (kernel count, drops included)
    dropped: int = 0  # packets the kernel dropped because the ring/buffer was full


# ---------------------------------------------------------------------------------------------
# BPF compilation


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_BpfInsn)))


BpfProgram = list[tuple[int, int, int, int]]  # (code, jt, jf, k) per instruction

_PCAP_LOCK = threading.Lock()  # pcap_compile is not thread-safe in older libpcap
_INSTALL_HINT = (
    "compiling a capture filter needs libpcap (Debian/Ubuntu: `apt-get install libpcap0.8`, "
    "Fedora: `dnf install libpcap`) or tcpdump on the PATH (`apt-get install tcpdump`)"
)


def _load_libpcap() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("pcap")
    for candidate in (name, "libpcap.so", "libpcap.so.1", "libpcap.so.0.8"):
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = (
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        )
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
        lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
        lib.pcap_close.argtypes = (ctypes.c_void_p,)
        return lib
    return None


def _compile_libpcap(lib: ctypes.CDLL, expression: str, linktype: int, snaplen: int) -> BpfProgram:
    program = _BpfProgram()
    with _PCAP_LOCK:
        handle = lib.pcap_open_dead(_DLT_FOR_LINKTYPE[linktype], snaplen)
        if not handle:
            raise FilterError("libpcap could not open a handle to compile the filter")
        try:
            # optimize=1, netmask unknown (PCAP_NETMASK_UNKNOWN): "ip broadcast" then fails cleanly.
            if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF):
                message = (lib.pcap_geterr(handle) or b"syntax error").decode(errors="replace")
                raise FilterError(f"invalid capture filter {expression!r}: {message}")
            insns = [(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[: program.bf_len]]
            lib.pcap_freecode(ctypes.byref(program))
            return insns
        finally:
            lib.pcap_close(handle)


def _compile_tcpdump(tcpdump: str, expression: str, linktype: int, snaplen: int) -> BpfProgram:
    # tcpdump compiles for the link type of what it reads: an empty capture file of ours.
    with tempfile.NamedTemporaryFile(suffix=".pcap") as empty:
        empty.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
        empty.flush()
        proc = subprocess.run(
            [tcpdump, "-ddd", "-r", empty.name, "--", expression],
            capture_output=True,
            text=True,
            timeout=30,
        )
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        message = message.removeprefix("tcpdump: ")
        raise FilterError(f"invalid capture filter {expression!r}: {message}")
    lines = proc.stdout.split("\n")
    count = int(lines[0])
    insns = [tuple(int(v) for v in line.split()) for line in lines[1 : count + 1]]
    return [(c, jt, jf, k) for c, jt, jf, k in insns]


def compile_bpf(
    expression: str,
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 262144,
    compiler: str = "auto",
) -> BpfProgram:
    """Compile a tcpdump-style filter to classic BPF for frames of `linktype`.

    Uses libpcap's pcap_compile when libpcap is installed, else `tcpdump -ddd`; `compiler`
    forces one. Raises FilterError with the compiler's message for a bad expression, and with
    what to install when neither is present.
    """
    if linktype not in _DLT_FOR_LINKTYPE:
        raise FilterError(f"cannot compile filters for link type {linktype}")
    if compiler in ("auto", "libpcap"):
        lib = _load_libpcap()
        if lib is not None:
            return _compile_libpcap(lib, expression, linktype, snaplen)
        if compiler == "libpcap":
            raise FilterError(f"libpcap is not installed: {_INSTALL_HINT}")
    tcpdump = shutil.which("tcpdump") or next(
        (p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump") if os.access(p, os.X_OK)), None
    )
    if tcpdump is None:
        raise FilterError(f"cannot compile capture filter {expression!r}: {_INSTALL_HINT}")
    return _compile_tcpdump(tcpdump, expression, linktype, snaplen)


def cook_program(program: BpfProgram) -> BpfProgram:
    """Rewrite a filter compiled for Linux cooked (SLL) headers to run on a SOCK_DGRAM socket.

    The kernel runs the filter on the packet without the 16-byte cooked header that user space
    sees, so loads past the header move back 16 bytes and loads of the packet type and protocol
    fields become the kernel's ancillary loads (what libpcap does for `-i any`).
    """
    cooked = []
    for code, jt, jf, k in program:
        cls, mode = code & 0x07, code & 0xE0
        if cls in (0x00, 0x01) and mode in (0x20, 0x40, 0xA0):  # LD/LDX with ABS, IND, MSH
            if k >= SLL_HDR_LEN:
                k -= SLL_HDR_LEN
            elif k == 0:
                k = (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF
            elif k == 14:
                k = (SKF_AD_OFF + SKF_AD_PROTOCOL) & 0xFFFFFFFF
            else:
                raise FilterError(
                    "this filter reads link-layer address fields, which interface 'any' does "
                    "not provide to the kernel filter; capture a named interface instead"
                )
        cooked.append((code, jt, jf, k))
    return cooked


def attach_bpf(sock: socket.socket, program: BpfProgram) -> None:
    """Attach a classic BPF program to a socket (SO_ATTACH_FILTER)."""
    insns = (_BpfInsn * len(program))(*program)
    fprog = _SockFprog(len(program), ctypes.cast(insns, ctypes.POINTER(_BpfInsn)))
    try:
        # The kernel copies the instructions during the call; `insns` stays alive until then.
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    except OSError as exc:
        raise FilterError(f"the kernel refused the capture filter: {exc.strerror}") from exc


# ---------------------------------------------------------------------------------------------
# Interfaces


def list_interfaces() -> list[str]:
    """Names of this network namespace's interfaces."""
    return sorted(name for _, name in socket.if_nameindex())


def _interface_arphrd(interface: str) -> int:
    try:
        return int(Path(f"/sys/class/net/{interface}/type").read_text())
    except (OSError, ValueError):
        return 1  # sysfs not mounted: assume Ethernet, the common case


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bind(sock: socket.socket, ifindex: int) -> None:
    # Python's AF_PACKET bind needs an interface name; "any" is ifindex 0, so call bind(2).
    address = _SLL_ADDR.pack(socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex, 0, 0, 0, b"")
    if _libc().bind(sock.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _open_packet_socket(kind: int, interface: str) -> socket.socket:
    try:
        # Protocol 0: nothing is received until bind(), after the filter is attached.
        return socket.socket(socket.AF_PACKET, kind, 0)
    except PermissionError as exc:
        raise CapturePermissionError(f"capturing on {interface!r} {PERMISSION_HINT}") from exc
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise CapturePermissionError(f"capturing on {interface!r} {PERMISSION_HINT}") from exc
        raise CaptureError(f"cannot open a packet socket for {interface!r}: {exc}") from exc


def _loopback_index() -> int:
    for index, name in socket.if_nameindex():
        if _interface_arphrd(name) == 772:
            return index
    return -1


def _reinsert_vlan(frame: bytes, tci: int, tpid: int) -> bytes:
    return frame[:12] + struct.pack("!HH", tpid or 0x8100, tci) + frame[12:]


def _sll_header(pkttype: int, hatype: int, halen: int, addr: bytes, protocol_be: int) -> bytes:
    # The Linux cooked header of tcpdump -i any: type, ARPHRD, address length, 8 address bytes,
    # protocol (already in network order as the kernel gives it).
    return struct.pack("!HHH8s", pkttype, hatype, halen, addr[:8]) + struct.pack("=H", protocol_be)


# ---------------------------------------------------------------------------------------------
# Capture


class LiveCapture:
    """Packets from a network interface as they arrive.

    Iterate it for `Packet`s, or call `batches()` for lists of packets (empty after a quiet
    poll timeout). `close()` (from any thread) ends the iteration; `stats()` gives the kernel's
    received/dropped counters. Use as a context manager.
    """

    def __init__(self, config: LiveCaptureConfig | str) -> None:
        if isinstance(config, str):
            config = LiveCaptureConfig(interface=config)
        self.config = config
        self.interface = config.interface
        self._closed = threading.Event()
        self._stats = CaptureStats()
        self._stats_lock = threading.Lock()
        self._ring: mmap.mmap | None = None
        self._block = 0

        if self.interface == "any":
            ifindex, arphrd = 0, -1
        else:
            try:
                ifindex = socket.if_nametoindex(self.interface)
            except OSError:
                raise CaptureError(
                    f"no network interface named {self.interface!r} "
                    f"(available: {', '.join(list_interfaces()) or 'none'}, or 'any')"
                ) from None
            arphrd = _interface_arphrd(self.interface)
        if arphrd in _ARPHRD_ETHERNET_LIKE:
            kind, self.linktype = socket.SOCK_RAW, LINKTYPE_ETHERNET
        elif arphrd in _ARPHRD_RAW_IP:
            kind, self.linktype = socket.SOCK_RAW, LINKTYPE_RAW
        else:
            kind, self.linktype = socket.SOCK_DGRAM, LINKTYPE_LINUX_SLL
        self._cooked = kind == socket.SOCK_DGRAM
        # Linux shows a loopback packet twice (sent, then received): keep only the received copy,
        # as tcpdump does. -1 when loopback is not captured.
        self._lo_index = _loopback_index() if self.interface in ("any", "lo") else -1
        self._lo_name = socket.if_indextoname(self._lo_index) if self._lo_index >= 0 else ""

        self._sock = _open_packet_socket(kind, self.interface)
        try:
            self._setup(ifindex)
        except BaseException:
            self._sock.close()
            raise
        log.info(
            "capturing on %s (%s, link type %d%s)",
            self.interface,
            self.method,
            self.linktype,
            f", filter {config.bpf!r}" if config.bpf else "",
        )

    def _setup(self, ifindex: int) -> None:
        config, sock = self.config, self._sock
        if config.bpf:
            program = compile_bpf(
                config.bpf, self.linktype, config.snaplen, compiler=config.filter_compiler
            )
            attach_bpf(sock, cook_program(program) if self._cooked else program)
        self.method = config.method
        if self.method == "ring":
            try:
                self._setup_ring()
            except OSError as exc:
                log.warning("no TPACKET_V3 ring (%s); capturing with recvmsg instead", exc)
                self.method = "recvmsg"
        if self.method == "recvmsg":
            self._setup_recvmsg()
        try:
            _bind(sock, ifindex)
        except OSError as exc:
            raise CaptureError(f"cannot capture on {self.interface!r}: {exc.strerror}") from exc
        if config.promiscuous and ifindex:
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def _setup_ring(self) -> None:
        config = self.config
        page = mmap.PAGESIZE
        block_size = max(page, (config.block_kb * 1024 // page) * page)
        while block_size < config.snaplen + 256 and block_size < (1 << 22):
            block_size *= 2  # a block must hold at least one full frame
        block_nr = max(2, config.buffer_mb * 1024 * 1024 // block_size)
        frame_size = 2048  # unused by TPACKET_V3 (variable-size frames) but checked
        req = struct.pack(
            "7I",
            block_size,
            block_nr,
            frame_size,
            block_size * block_nr // frame_size,
            config.block_timeout_ms,
            0,  # sizeof_priv
            0,  # feature_req_word
        )
        self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._block_size, self._block_nr = block_size, block_nr
        self._ring = mmap.mmap(
            self._sock.fileno(),
            block_size * block_nr,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    def _setup_recvmsg(self) -> None:
        sock = self._sock
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        size = self.config.buffer_mb * 1024 * 1024
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:  # without CAP_NET_ADMIN the buffer is capped by net.core.rmem_max
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    # -- reading --------------------------------------------------------------------------

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Packet]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Packet]]:
        """Lists of packets as the kernel hands them over; [] after a quiet poll timeout."""
        read = self._read_ring if self.method == "ring" else self._read_recvmsg
        while not self._closed.is_set():
            try:
                batch = read()
            except (OSError, ValueError):
                if self._closed.is_set():  # closed under our feet by another thread
                    return
                raise
            yield batch

    def _wait(self) -> bool:
        try:
            events = self._poll.poll(self.config.poll_timeout_ms)
        except InterruptedError:
            return False
        return bool(events)

    def _read_ring(self) -> list[Packet]:
        ring = self._ring
        assert ring is not None
        base = self._block * self._block_size
        _, _, status, num_pkts, offset = _BLOCK_HDR.unpack_from(ring, base)
        if not status & TP_STATUS_USER:
            if not self._wait():
                return []
            _, _, status, num_pkts, offset = _BLOCK_HDR.unpack_from(ring, base)
            if not status & TP_STATUS_USER:
                return []
        packets = []
        linktype, cooked, lo_index = self.linktype, self._cooked, self._lo_index
        unpack_pkt = _PKT_HDR.unpack_from
        for _ in range(num_pkts):
            at = base + offset
            (next_off, sec, nsec, snaplen, _len, pstatus, mac, net, _hash, tci, tpid) = unpack_pkt(
                ring, at
            )
            offset += next_off
            if cooked or lo_index >= 0:
                _, proto, ifindex, hatype, pkttype, halen, addr = _SLL_ADDR.unpack_from(
                    ring, at + _TPACKET3_HDRLEN
                )
                if pkttype == PACKET_OUTGOING and ifindex == lo_index:
                    continue
            if cooked:
                data = (
                    _sll_header(pkttype, hatype, halen, addr, proto)
                    + ring[at + net : at + net + snaplen]
                )
            else:
                data = ring[at + mac : at + mac + snaplen]
                if pstatus & TP_STATUS_VLAN_VALID and linktype == LINKTYPE_ETHERNET:
                    tpid = tpid if pstatus & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    data = _reinsert_vlan(data, tci & 0xFFFF, tpid)
            packets.append(Packet(sec * 1_000_000_000 + nsec, data, linktype))
        struct.pack_into("<I", ring, base + 8, 0)  # hand the block back to the kernel
        self._block = (self._block + 1) % self._block_nr
        return packets

    def _read_recvmsg(self, max_packets: int = 256) -> list[Packet]:
        sock, linktype, cooked, lo_index = self._sock, self.linktype, self._cooked, self._lo_index
        snaplen = self.config.snaplen
        packets: list[Packet] = []
        while len(packets) < max_packets:
            try:
                data, ancdata, _flags, address = sock.recvmsg(snaplen, 256)
            except BlockingIOError:
                if packets or not self._wait():
                    break
                continue
            if lo_index >= 0 and address[2] == PACKET_OUTGOING and address[0] == self._lo_name:
                continue
            ts_ns = 0
            tci = tpid = -1
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("qq", value)
                    ts_ns = sec * 1_000_000_000 + nsec
                elif level == SOL_PACKET and kind == PACKET_AUXDATA:
                    # struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
                    st, _, _, _, _, vtci, vtpid = struct.unpack_from("IIIHHHH", value)
                    if st & TP_STATUS_VLAN_VALID:
                        tci = vtci
                        tpid = vtpid if st & TP_STATUS_VLAN_TPID_VALID else 0x8100
            if cooked:
                _, proto, pkttype, hatype, addr = address
                data = _sll_header(pkttype, hatype, len(addr), addr, socket.htons(proto)) + data
            elif tci >= 0 and linktype == LINKTYPE_ETHERNET:
                data = _reinsert_vlan(data, tci, tpid)
            packets.append(Packet(ts_ns or time.time_ns(), data, linktype))
        return packets

    # -- counters and shutdown ------------------------------------------------------------

    def stats(self) -> CaptureStats:
        """Kernel counters since the capture opened (PACKET_STATISTICS; reading resets them)."""
        with self._stats_lock:
            if not self._closed.is_set():
                size = 12 if self.method == "ring" else 8
                try:
                    raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, size)
                except OSError:
                    raw = b""
                if len(raw) >= 8:
                    received, dropped = struct.unpack_from("II", raw)
                    self._stats.received += received
                    self._stats.dropped += dropped
            return CaptureStats(self._stats.received, self._stats.dropped)

    def close(self) -> None:
        """Stop capturing; a running iteration ends within one poll timeout."""
        if self._closed.is_set():
            return
        self.stats()
        self._closed.set()
        # The reader may be inside poll(): shutting the socket down wakes it; the ring is
        # unmapped by the socket's finaliser once nobody reads it.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
