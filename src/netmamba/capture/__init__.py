"""Reading packet captures: streaming readers, link layers, thin header parsing.

    with open_capture("trace.pcapng.gz") as reader:
        for batch in reader.batches():      # PacketBatch: parsed packets, a few thousand at once
            ...
        print(reader.stats.describe())      # packets read, used, skipped by reason, errors

`read_packets(path)` yields one `Packet` at a time (for scripts and tests). Live capture from a
network interface is in `netmamba.capture.live`.
"""

from netmamba.capture.batch import PACKET_DTYPE, Packet, PacketBatch
from netmamba.capture.parse import STATUS_NAMES, flow_key, parse_frame
from netmamba.capture.reader import (
    CaptureError,
    CaptureReader,
    CaptureStats,
    Frame,
    open_capture,
    read_frames,
    read_packets,
    sniff,
)

__all__ = [
    "PACKET_DTYPE",
    "STATUS_NAMES",
    "CaptureError",
    "CaptureReader",
    "CaptureStats",
    "Frame",
    "Packet",
    "PacketBatch",
    "flow_key",
    "open_capture",
    "parse_frame",
    "read_frames",
    "read_packets",
    "sniff",
]
