"""Helpers shared by the service tests (imported by name: tests/serve is on sys.path)."""

from __future__ import annotations

from netmamba.serve.store import FlowRecord


def record(
    flow_id: str,
    label: str = "web",
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    sport: int = 40000,
    dport: int = 443,
    protocol: int = 6,
    t: float = 1_699_999_980.0,
    first_ts: float | None = None,
    packets: int = 5,
    nbytes: int = 1000,
    unknown: bool = False,
    short: bool = False,
    source: str = "eth0",
) -> FlowRecord:
    """A record classified at `t` (first packet 2 s earlier unless `first_ts`)."""
    first = t - 2.0 if first_ts is None else first_ts
    return FlowRecord(
        flow_id=flow_id,
        source=source,
        protocol=protocol,
        src_ip=src,
        src_port=sport,
        dst_ip=dst,
        dst_port=dport,
        first_ts=first,
        last_ts=first + 1.5,
        packets=packets,
        bytes=nbytes,
        label=label,
        confidence=0.75,
        top=[(label, 0.75), ("other", 0.2), ("third", 0.05)],
        unknown=unknown,
        classified_at=t,
        short=short,
    )
