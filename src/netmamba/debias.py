"""De-biasing: remove shortcut fields from the byte modality (SPEC section 2).

Models learn shortcuts that do not generalise: addresses, ports, TCP sequence numbers,
timestamps, checksums, the TLS server name. Each is a named switch of `DebiasConfig`, applied
to the header and payload bytes of a sample at offsets found by parsing those bytes (IP header
length, IPv6 extension headers, TCP data offset and options, TLS record and handshake lengths),
never by searching for byte patterns. De-biasing works on the cropped packet regions of a
sample (the first N_h header bytes and N_p payload bytes of each of the M_b packets), so it
can be re-applied with other settings to the raw bytes a dataset keeps (the shortcut audit).

Default set (`DebiasConfig()`), and why:

    ip_addresses     relative  client 0.0.0.0 / ::, server 0.0.0.1 / ::1: hosts are the
                               recording's, not the class's; direction stays visible
    ports            relative  client port 0, server port 1: ephemeral ports are noise and
                               server ports label the service without looking at the traffic
    tcp_seq_ack      relative  random initial sequence numbers identify a connection; relative
                               to the first packet of each direction (an acknowledgement without
                               the ACK flag is meaningless and zeroed)
    tcp_timestamps   relative  the TCP timestamp option counts host uptime: TSval relative to
                               the first of its direction, TSecr to the first non-zero one
    checksums        on        IPv4 header, TCP, UDP, SCTP, ICMP checksums: they encode the
                               other (per-host) fields
    ttl              on        IPv4 TTL / IPv6 hop limit: the path length to the capture point
    ipv4_id          on        IPv4 identification: a per-host counter
    ipv6_flow_label  on        random per flow: an identifier, like the ports
    tls_sni          on        the TLS ClientHello server name (masked with zeros, same length):
                               it spells the application out
    tcp_window       off       the receive window is partly OS behaviour (legitimate signal) and
                               partly host state; off by default, switch on to audit it
    tls_random       off       ClientHello/ServerHello random and session id: random per
                               connection (old stacks put the date in the first 4 bytes, and a
                               resumed session repeats the server's id, linking flows)
    ip_tos           off       IPv4 TOS / IPv6 traffic class (DSCP, ECN): set by the recording
                               network's policy rather than the application

Three-way switches take "keep" | "zero" | "relative"; the others are booleans (True = remove).
A field only partly inside a cropped header region is zeroed where visible when it has to be
made relative (its value cannot be read) and written where visible when it is a constant.

Known shortcuts not handled: names in plaintext TLS 1.2 certificates, HTTP Host headers, QUIC
and DTLS handshakes, addresses inside ICMP errors and application payloads.

`apply_debias` uses the native kernel (`csrc/packets.c`, `nm_debias`) when built and this
module's Python reference otherwise; the tests check that both give identical bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from netmamba.config import Config, ConfigError

MODES = ("keep", "zero", "relative")
_MODE_CODE = {"keep": 0, "zero": 1, "relative": 2}
KEEP, ZERO, RELATIVE = 0, 1, 2
_MASK32 = 0xFFFFFFFF
_IPV6_EXTENSIONS = (0, 43, 60, 135, 139, 140)


@dataclass
class DebiasConfig(Config):
    """Shortcut removal switches; see the module docstring for each default and its reason."""

    ip_addresses: str = "relative"  # keep | zero | relative
    ports: str = "relative"  # keep | zero | relative
    tcp_seq_ack: str = "relative"  # keep | zero | relative
    tcp_timestamps: str = "relative"  # keep | zero | relative
    checksums: bool = True
    ttl: bool = True
    ipv4_id: bool = True
    ipv6_flow_label: bool = True
    tls_sni: bool = True
    tcp_window: bool = False
    tls_random: bool = False
    ip_tos: bool = False

    def __post_init__(self) -> None:
        for name in ("ip_addresses", "ports", "tcp_seq_ack", "tcp_timestamps"):
            if getattr(self, name) not in MODES:
                raise ConfigError(
                    f"DebiasConfig.{name} must be one of {', '.join(MODES)}, "
                    f"not {getattr(self, name)!r}"
                )
        for f in fields(self):
            if f.type in (bool, "bool") and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f"DebiasConfig.{f.name} must be true or false")

    @classmethod
    def none(cls) -> DebiasConfig:
        """Every switch off: the bytes as captured (the paper's public code path)."""
        return cls("keep", "keep", "keep", "keep", *([False] * 8))

    def codes(self) -> np.ndarray:
        """The switches as the native kernel's int32 array (order of `nm_debias`'s cfg)."""
        return np.array(
            [
                _MODE_CODE[self.ip_addresses],
                _MODE_CODE[self.ports],
                _MODE_CODE[self.tcp_seq_ack],
                _MODE_CODE[self.tcp_timestamps],
                self.checksums,
                self.ttl,
                self.ipv4_id,
                self.ipv6_flow_label,
                self.tcp_window,
                self.tls_sni,
                self.tls_random,
                self.ip_tos,
            ],
            dtype=np.int32,
        )

    def is_noop(self) -> bool:
        return not self.codes().any()

    def set(self, assignment: str) -> DebiasConfig:
        """A copy with one switch set from text 'name=value' (command line)."""
        name, sep, value = assignment.partition("=")
        name = name.strip().replace("-", "_")
        known = [f.name for f in fields(self)]
        if not sep or name not in known:
            raise ConfigError(
                f"de-biasing switch {assignment!r}: expected NAME=VALUE with NAME one of "
                f"{', '.join(known)}"
            )
        value = value.strip().lower()
        if isinstance(getattr(self, name), bool):
            if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"de-biasing switch {name} takes on/off, not {value!r}")
            return self.replace(**{name: value in ("on", "true", "1", "yes")})
        return self.replace(**{name: value})


def apply_debias(
    byte_matrix: np.ndarray,
    header_lens: np.ndarray,
    payload_lens: np.ndarray,
    dirs: np.ndarray,
    header_bytes: int,
    payload_bytes: int,
    config: DebiasConfig,
    *,
    use_native: bool | None = None,
) -> None:
    """De-bias in place the `bytes` arrays of n flows ([n, M_b * (N_h + N_p)] uint8).

    header_lens / payload_lens [n, M_b]: real bytes in each region; dirs [n, M_b] int8: +1 for a
    packet from the first sender, -1 towards it, 0 for no packet.
    """
    n = len(byte_matrix)
    if n == 0 or config.is_noop():
        return
    n_packets = header_lens.shape[1]
    if byte_matrix.dtype != np.uint8 or not byte_matrix.flags.c_contiguous:
        raise ValueError("apply_debias needs a C-contiguous uint8 byte matrix")
    if byte_matrix.shape[1] != n_packets * (header_bytes + payload_bytes):
        raise ValueError("apply_debias: byte matrix width does not match the geometry")
    from netmamba.capture.batch import native

    lib = native() if use_native is not False else None
    if lib is not None:
        hl = np.ascontiguousarray(header_lens, dtype=np.uint16)
        pl = np.ascontiguousarray(payload_lens, dtype=np.uint16)
        dr = np.ascontiguousarray(dirs, dtype=np.int8)
        codes = config.codes()
        lib.nm_debias(
            byte_matrix.ctypes.data,
            n,
            n_packets,
            header_bytes,
            payload_bytes,
            hl.ctypes.data,
            pl.ctypes.data,
            dr.ctypes.data,
            codes.ctypes.data,
        )
        return
    if use_native:
        raise RuntimeError("the native packet kernel is not available")
    debias_python(byte_matrix, header_lens, payload_lens, dirs, header_bytes, payload_bytes, config)


def debias_python(
    byte_matrix: np.ndarray,
    header_lens: np.ndarray,
    payload_lens: np.ndarray,
    dirs: np.ndarray,
    header_bytes: int,
    payload_bytes: int,
    config: DebiasConfig,
) -> None:
    """The reference of `apply_debias`, one packet at a time in plain Python."""
    cfg = config.codes().tolist()
    n, n_packets = header_lens.shape
    width = header_bytes + payload_bytes
    hls, pls, drs = header_lens.tolist(), payload_lens.tolist(), dirs.tolist()
    for i in range(n):
        row = bytearray(byte_matrix[i].tobytes())
        state = [_DirState(), _DirState()]
        for j in range(n_packets):
            if drs[i][j] == 0:
                continue
            base = j * width
            h = _Region(row, base, min(hls[i][j], header_bytes))
            p = _Region(row, base + header_bytes, min(pls[i][j], payload_bytes))
            _debias_packet(h, p, drs[i][j], cfg, state)
        byte_matrix[i] = np.frombuffer(bytes(row), np.uint8)


class _DirState:
    """First values seen in one direction, for the relative fields."""

    __slots__ = ("ack", "seq", "tsecr", "tsval")

    def __init__(self) -> None:
        self.seq = self.ack = self.tsval = self.tsecr = None


class _Region:
    """A window [base, base + len) of a bytearray; reads and writes outside it are ignored."""

    __slots__ = ("b", "base", "len")

    def __init__(self, b: bytearray, base: int, length: int) -> None:
        self.b, self.base, self.len = b, base, length

    def __getitem__(self, i: int) -> int:
        return self.b[self.base + i]

    def visible(self, off: int, n: int) -> bool:
        return off >= 0 and off + n <= self.len

    def u16(self, off: int) -> int:
        return (self.b[self.base + off] << 8) | self.b[self.base + off + 1]

    def u32(self, off: int) -> int:
        return int.from_bytes(self.b[self.base + off : self.base + off + 4], "big")

    def zero(self, off: int, n: int) -> None:
        for i in range(max(off, 0), min(off + n, self.len)):
            self.b[self.base + i] = 0

    def put(self, off: int, n: int, value: int) -> None:
        data = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "big")
        for i in range(n):
            if 0 <= off + i < self.len:
                self.b[self.base + off + i] = data[i]


def _relative32(r: _Region, off: int, state: _DirState, name: str, skip_zero: bool) -> None:
    if not r.visible(off, 4):
        r.zero(off, 4)
        return
    v = r.u32(off)
    if skip_zero and v == 0:
        return
    base = getattr(state, name)
    if base is None:
        base = v
        setattr(state, name, v)
    r.put(off, 4, (v - base) & _MASK32)


def _transform32(r: _Region, off: int, mode: int, state: _DirState, name: str, skip0: bool) -> None:
    if mode == ZERO:
        r.zero(off, 4)
    elif mode == RELATIVE:
        _relative32(r, off, state, name, skip0)


def _debias_packet(h: _Region, p: _Region, direction: int, cfg: list, st: list) -> None:
    addr, ports, seq, tsopt, checksums, ttl, ipid, flowlabel, window, sni, rnd, tos = cfg
    if h.len < 1:
        return
    version = h[0] >> 4
    l4 = -1
    proto = -1
    later_fragment = False
    client = direction >= 0
    if version == 4:
        if tos:
            h.zero(1, 1)
        if ipid:
            h.zero(4, 2)
        if ttl:
            h.zero(8, 1)
        if checksums:
            h.zero(10, 2)
        if addr == ZERO:
            h.zero(12, 8)
        elif addr == RELATIVE:
            h.put(12, 4, 0 if client else 1)
            h.put(16, 4, 1 if client else 0)
        if h.len >= 20:
            l4 = (h[0] & 15) * 4
            proto = h[9]
            later_fragment = (h.u16(6) & 0x1FFF) != 0
            if l4 < 20:
                l4 = -1
    elif version == 6:
        if tos and h.len >= 2:
            h.b[h.base] &= 0xF0
            h.b[h.base + 1] &= 0x0F
        if flowlabel:
            if h.len >= 2:
                h.b[h.base + 1] &= 0xF0
            h.zero(2, 2)
        if ttl:
            h.zero(7, 1)
        if addr == ZERO:
            h.zero(8, 32)
        elif addr == RELATIVE:
            h.zero(8, 32)
            h.put(20, 4, 0 if client else 1)
            h.put(36, 4, 1 if client else 0)
        if h.len >= 40:
            proto = h[6]
            l4 = 40
            for _ in range(8):
                if proto in _IPV6_EXTENSIONS or proto == 51:
                    if l4 + 2 > h.len:
                        l4 = -1
                        break
                    step = (h[l4 + 1] + 2) * 4 if proto == 51 else (h[l4 + 1] + 1) * 8
                    proto = h[l4]
                    l4 += step
                elif proto == 44:
                    if l4 + 8 > h.len:
                        l4 = -1
                        break
                    later_fragment = (h.u16(l4 + 2) & 0xFFF8) != 0
                    proto = h[l4]
                    l4 += 8
                    if later_fragment:
                        break
                else:
                    break
    if l4 < 0 or later_fragment:
        return
    s = st[0 if client else 1]
    if proto in (6, 17, 136, 132):
        if ports == ZERO:
            h.zero(l4, 4)
        elif ports == RELATIVE:
            h.put(l4, 2, 0 if client else 1)
            h.put(l4 + 2, 2, 1 if client else 0)
    if proto == 6:
        ack_flag = h.visible(l4 + 13, 1) and bool(h[l4 + 13] & 0x10)
        if seq == ZERO:
            h.zero(l4 + 4, 8)
        elif seq == RELATIVE:
            _relative32(h, l4 + 4, s, "seq", False)
            if ack_flag:
                _relative32(h, l4 + 8, s, "ack", False)
            else:
                h.zero(l4 + 8, 4)
        if window:
            h.zero(l4 + 14, 2)
        if checksums:
            h.zero(l4 + 16, 2)
        if tsopt != KEEP and h.visible(l4 + 12, 1):
            end = l4 + (h[l4 + 12] >> 4) * 4
            o = l4 + 20
            while o < end and o < h.len:
                kind = h[o]
                if kind == 0:
                    break
                if kind == 1:
                    o += 1
                    continue
                if o + 1 >= h.len:
                    break
                olen = h[o + 1]
                if olen < 2:
                    break
                if kind == 8 and olen == 10:
                    _transform32(h, o + 2, tsopt, s, "tsval", False)
                    _transform32(h, o + 6, tsopt, s, "tsecr", True)
                o += olen
        _tls(p, sni, rnd)
    elif proto in (17, 136):
        if checksums:
            h.zero(l4 + 6, 2)
    elif proto == 132:
        if checksums:
            h.zero(l4 + 8, 4)
    elif proto in (1, 58) and checksums:
        h.zero(l4 + 2, 2)


def _tls(p: _Region, sni: int, rnd: int) -> None:
    """Mask the server name (and optionally random / session id) of a TLS hello record that
    starts the payload, walking the handshake by its length fields."""
    n = p.len
    if n < 6 or p[0] != 0x16 or p[1] != 3:
        return
    hs = p[5]
    if hs not in (1, 2):
        return
    q = 9 + 2  # record header 5, handshake header 4, legacy version 2
    if rnd:
        p.zero(q, 32)
    q += 32
    if q >= n:
        return
    sid = p[q]
    if rnd:
        p.zero(q + 1, sid)
    q += 1 + sid
    if hs != 1 or not sni:
        return
    if q + 2 > n:
        return
    q += 2 + p.u16(q)  # cipher suites
    if q + 1 > n:
        return
    q += 1 + p[q]  # compression methods
    if q + 2 > n:
        return
    ext_end = q + 2 + p.u16(q)
    q += 2
    while q + 4 <= n and q + 4 <= ext_end:
        kind, elen = p.u16(q), p.u16(q + 2)
        q += 4
        if kind == 0:  # server_name: list length, then (type, length, name)...
            r, end = q, q + elen
            if r + 2 <= n:
                list_end = min(r + 2 + p.u16(r), end)
                r += 2
                while r + 3 <= n and r + 3 <= list_end:
                    nlen = p.u16(r + 1)
                    r += 3
                    p.zero(r, nlen)
                    r += nlen
        q += elen
