"""The multimodal representation of a flow (SPEC section 2): the arrays every model reads.

A flow becomes one sample made of these arrays (the names are used everywhere: the dataset
columns, the loader, the model's input dict, the service):

    bytes         uint8   [M_b * (N_h + N_p)]  per packet: N_h bytes from the IP header on, then
                                               N_p bytes of transport payload, each cropped or
                                               zero-padded; missing packets are zeros
    header_lens   uint16  [M_b]   real header bytes copied for each packet (0 = no packet)
    payload_lens  uint16  [M_b]   real payload bytes copied for each packet
    sizes         int16   [M_seq] IP packet length clipped at MTU; signed by direction in
                                  bidirectional mode (+ client to server, - server to client);
                                  0 where padded
    iats          float32 [M_seq] seconds since the previous packet of the flow (first 0); 0 where
                                  padded
    seq_mask      bool    [M_seq] True where a real packet stands

Batches stack these along a first axis. Padding is never encoded as a data value: the masks and
lengths say where the real data ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from netmamba.config import Config, ConfigError
from netmamba.debias import DebiasConfig, apply_debias

if TYPE_CHECKING:
    from netmamba.flows import Flow

ARRAY_NAMES = ("bytes", "header_lens", "payload_lens", "sizes", "iats", "seq_mask")


@dataclass
class FeatureConfig(Config):
    """Geometry of a sample; the defaults are the paper's."""

    n_packets: int = 5  # M_b: packets whose bytes are kept
    header_bytes: int = 80  # N_h: bytes from the start of the IP header
    payload_bytes: int = 240  # N_p: bytes of transport payload
    seq_len: int = 20  # M_seq: packets whose size and inter-arrival time are kept
    mtu: int = 1500  # sizes are clipped at this value

    def __post_init__(self) -> None:
        for name in ("n_packets", "header_bytes", "seq_len", "mtu"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FeatureConfig.{name} must be positive")
        if self.payload_bytes < 0:
            raise ConfigError("FeatureConfig.payload_bytes must be >= 0")
        if self.mtu > 32767:
            raise ConfigError("FeatureConfig.mtu must fit a signed 16-bit size (<= 32767)")

    @property
    def packet_bytes(self) -> int:
        """N_h + N_p: bytes kept per packet."""
        return self.header_bytes + self.payload_bytes

    @property
    def total_bytes(self) -> int:
        """M_b * (N_h + N_p): width of the `bytes` array (1600 in the paper)."""
        return self.n_packets * self.packet_bytes


# Arrays stored beside the sample arrays so that de-biasing can be redone later (the audit):
# the byte regions before de-biasing, and each byte-modality packet's direction.
RAW_ARRAY_NAMES = ("raw_bytes", "packet_dirs")

ARRAY_DTYPES = {
    "bytes": np.uint8,
    "header_lens": np.uint16,
    "payload_lens": np.uint16,
    "sizes": np.int16,
    "iats": np.float32,
    "seq_mask": np.bool_,
    "raw_bytes": np.uint8,
    "packet_dirs": np.int8,
}


def array_shapes(config: FeatureConfig) -> dict[str, tuple[int, ...]]:
    """Shape of one sample's arrays (without the leading flow axis)."""
    return {
        "bytes": (config.total_bytes,),
        "header_lens": (config.n_packets,),
        "payload_lens": (config.n_packets,),
        "sizes": (config.seq_len,),
        "iats": (config.seq_len,),
        "seq_mask": (config.seq_len,),
        "raw_bytes": (config.total_bytes,),
        "packet_dirs": (config.n_packets,),
    }


def empty_arrays(config: FeatureConfig, n: int = 0, *, raw: bool = False) -> dict[str, np.ndarray]:
    names = ARRAY_NAMES + (RAW_ARRAY_NAMES if raw else ())
    shapes = array_shapes(config)
    return {k: np.zeros((n, *shapes[k]), ARRAY_DTYPES[k]) for k in names}


def flow_arrays(
    flows: Sequence[Flow],
    config: FeatureConfig,
    debias: DebiasConfig | None = None,
    *,
    keep_raw: bool = False,
) -> dict[str, np.ndarray]:
    """The sample arrays (ARRAY_NAMES) of flows from the meter, stacked on a first axis.

    `debias` is applied to `bytes` (None: no de-biasing). With `keep_raw`, also `raw_bytes`
    (the bytes before de-biasing) and `packet_dirs` (RAW_ARRAY_NAMES), from which
    `redebias` makes `bytes` again with other switches.
    """
    n = len(flows)
    m_b, n_h, n_p, m_seq = (
        config.n_packets,
        config.header_bytes,
        config.payload_bytes,
        config.seq_len,
    )
    width = config.packet_bytes
    total = config.total_bytes
    zero_h, zero_p, zero_row = bytes(n_h), bytes(n_p), bytes(total)
    pieces: list[bytes] = []  # the byte matrix, row after row, joined once
    header_flat: list[int] = []
    payload_flat: list[int] = []
    dir_flat: list[int] = []
    stored = np.zeros(n, np.int64)
    seq_lens = np.zeros(n, np.int64)
    flat_ts: list[int] = []
    flat_sizes: list[int] = []
    add = pieces.append
    for i, flow in enumerate(flows):
        headers, payloads = flow.headers[:m_b], flow.payloads[:m_b]
        for h, p in zip(headers, payloads, strict=True):
            h, p = h[:n_h], p[:n_p]
            add(h)
            add(zero_h[len(h) :])
            add(p)
            add(zero_p[len(p) :])
            header_flat.append(len(h))
            payload_flat.append(len(p))
        add(zero_row[len(headers) * width :])
        stored[i] = len(headers)
        dir_flat.extend(flow.dirs[:m_b])
        ts = flow.ts[:m_seq]
        seq_lens[i] = len(ts)
        flat_ts.extend(ts)
        flat_sizes.extend(flow.sizes[:m_seq])
    slots = np.arange(m_b) < stored[:, None]
    header_lens = np.zeros((n, m_b), np.uint16)
    header_lens[slots] = header_flat
    payload_lens = np.zeros((n, m_b), np.uint16)
    payload_lens[slots] = payload_flat
    dirs = np.zeros((n, m_b), np.int8)
    dirs[slots] = dir_flat
    out = bytearray(b"".join(pieces))  # writable: de-biasing edits it in place
    byte_matrix = np.frombuffer(out, np.uint8).reshape(n, total)
    arrays = _sequence_arrays(seq_lens, flat_ts, flat_sizes, m_seq, config.mtu)
    arrays.update(bytes=byte_matrix, header_lens=header_lens, payload_lens=payload_lens)
    if keep_raw:
        arrays["raw_bytes"] = byte_matrix.copy()
        arrays["packet_dirs"] = dirs
    if debias is not None:
        apply_debias(byte_matrix, header_lens, payload_lens, dirs, n_h, n_p, debias)
    return {k: arrays[k] for k in ARRAY_NAMES + (RAW_ARRAY_NAMES if keep_raw else ())}


def _sequence_arrays(
    seq_lens: np.ndarray, flat_ts: list[int], flat_sizes: list[int], m_seq: int, mtu: int
) -> dict[str, np.ndarray]:
    n = len(seq_lens)
    mask = np.arange(m_seq) < seq_lens[:, None]
    ts = np.zeros((n, m_seq), np.int64)
    ts[mask] = flat_ts
    raw_sizes = np.zeros((n, m_seq), np.int64)
    raw_sizes[mask] = flat_sizes
    sizes = (np.sign(raw_sizes) * np.minimum(np.abs(raw_sizes), mtu)).astype(np.int16)
    iats = np.zeros((n, m_seq), np.float32)
    if m_seq > 1:
        gaps = np.maximum(ts[:, 1:] - ts[:, :-1], 0)  # out-of-order timestamps give 0, not < 0
        iats[:, 1:] = np.where(mask[:, 1:], gaps / 1e9, 0.0)
    return {"sizes": sizes, "iats": iats, "seq_mask": mask}


def redebias(
    raw_bytes: np.ndarray,
    header_lens: np.ndarray,
    payload_lens: np.ndarray,
    packet_dirs: np.ndarray,
    config: FeatureConfig,
    debias: DebiasConfig,
) -> np.ndarray:
    """`bytes` made again from the raw byte regions with other de-biasing switches."""
    out = np.array(raw_bytes, dtype=np.uint8, order="C", copy=True)
    apply_debias(
        out,
        header_lens,
        payload_lens,
        packet_dirs,
        config.header_bytes,
        config.payload_bytes,
        debias,
    )
    return out


def crop_arrays(
    arrays: dict[str, np.ndarray], source: FeatureConfig, target: FeatureConfig
) -> dict[str, np.ndarray]:
    """Arrays of a smaller geometry (fewer packets, fewer header/payload bytes, shorter
    sequences, a lower MTU) cut from arrays of `source` geometry, for models with a smaller
    input. Each dimension of `target` must be at most that of `source`.

    A cropped sample equals a fresh extraction with `target`, except that a relative
    de-biased field cut by a new, shorter header boundary keeps its leading bytes (a fresh
    extraction zeroes a field it cannot read whole).
    """
    for name in ("n_packets", "header_bytes", "payload_bytes", "seq_len", "mtu"):
        if getattr(target, name) > getattr(source, name):
            raise ConfigError(
                f"cannot crop {name} from {getattr(source, name)} up to {getattr(target, name)}: "
                "prepare the dataset again with the larger geometry"
            )
    m_b, n_h, n_p = target.n_packets, target.header_bytes, target.payload_bytes
    out: dict[str, np.ndarray] = {}
    for name in ("bytes", "raw_bytes"):
        if name in arrays:
            b = arrays[name].reshape(len(arrays[name]), source.n_packets, source.packet_bytes)
            hb = b[:, :m_b, :n_h]
            pb = b[:, :m_b, source.header_bytes : source.header_bytes + n_p]
            out[name] = np.ascontiguousarray(np.concatenate([hb, pb], axis=2)).reshape(
                len(b), target.total_bytes
            )
    if "header_lens" in arrays:
        out["header_lens"] = np.minimum(arrays["header_lens"][:, :m_b], n_h).astype(np.uint16)
    if "payload_lens" in arrays:
        out["payload_lens"] = np.minimum(arrays["payload_lens"][:, :m_b], n_p).astype(np.uint16)
    if "packet_dirs" in arrays:
        out["packet_dirs"] = np.ascontiguousarray(arrays["packet_dirs"][:, :m_b])
    m = target.seq_len
    if "sizes" in arrays:
        s = arrays["sizes"][:, :m]
        out["sizes"] = (np.sign(s) * np.minimum(np.abs(s), target.mtu)).astype(np.int16)
    for name in ("iats", "seq_mask"):
        if name in arrays:
            out[name] = np.ascontiguousarray(arrays[name][:, :m])
    return out
