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

from dataclasses import dataclass

from netmamba.config import Config, ConfigError

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
