"""Packet sources for the service: capture files replayed at a chosen pace, standard input.

`Replay` wraps any iterator of timestamped packets (anything whose first field is the
timestamp in ns, like `Packet(ts_ns, data, linktype)`) and hands them on in batches:

    speed = 1.0    the recorded pace (a packet leaves when its time since the first one is due)
    speed = N      N times faster
    speed = None   as fast as the consumer takes them (0 and inf mean the same)

While it waits for the next packet it yields empty batches every `tick_s`, so the consumer can
expire idle flows and notice a shutdown request. `now_ns()` is the replay's clock in capture
time: the time the capture would show "now", which is what flow timeouts compare against.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar

P = TypeVar("P", bound=Sequence[Any])


def normalise_speed(speed: float | None) -> float | None:
    """None for "as fast as possible" (None, 0, inf); else the positive factor."""
    if speed is None or speed == 0 or math.isinf(speed):
        return None
    if speed < 0 or math.isnan(speed):
        raise ValueError(
            f"replay speed must be positive (or 0 for as fast as possible), not {speed}"
        )
    return float(speed)


class Replay:
    """Timestamped packets in batches, at their recorded pace, N times it, or unpaced."""

    def __init__(
        self,
        packets: Iterable[P],
        speed: float | None = None,
        max_batch: int = 256,
        tick_s: float = 0.1,
        max_gap_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.packets = packets
        self.speed = normalise_speed(speed)
        self.max_batch = max_batch
        self.tick_s = tick_s
        self.max_gap_s = max_gap_s  # longer silences of the capture are shortened to this
        self._clock, self._sleep = clock, sleep
        self._anchor_ts: int | None = None  # capture time of the first packet (ns)
        self._anchor_wall = 0.0  # wall clock when it left
        self._last_ts = 0

    def _due(self, ts_ns: int) -> float:
        """Wall-clock time at which a packet stamped `ts_ns` leaves."""
        assert self._anchor_ts is not None and self.speed is not None
        return self._anchor_wall + (ts_ns - self._anchor_ts) / 1e9 / self.speed

    def now_ns(self) -> int:
        """The replay's current time in capture time (ns)."""
        if self._anchor_ts is None:
            return 0
        if self.speed is None:
            return self._last_ts
        elapsed = self._clock() - self._anchor_wall
        return max(self._last_ts, self._anchor_ts + int(elapsed * self.speed * 1e9))

    def batches(self) -> Iterator[list[P]]:
        batch: list[P] = []
        for packet in self.packets:
            ts = packet[0]
            if self._anchor_ts is None:
                self._anchor_ts, self._anchor_wall = ts, self._clock()
            elif self.speed is not None:
                gap = (ts - self._last_ts) / 1e9 / self.speed
                if self.max_gap_s is not None and gap > self.max_gap_s:
                    # Shift the anchor so this silence lasts max_gap_s instead.
                    self._anchor_wall -= gap - self.max_gap_s
                while True:
                    wait = self._due(ts) - self._clock()
                    if wait <= 0.001:  # sleeping less than a millisecond is not precise anyway
                        break
                    if batch:  # what is due now goes before we wait
                        yield batch
                        batch = []
                    self._sleep(min(wait, self.tick_s))
                    if wait > self.tick_s:
                        yield []  # a tick: time passes, nothing arrived
            self._last_ts = max(self._last_ts, ts)
            batch.append(packet)
            if len(batch) >= self.max_batch:
                yield batch
                batch = []
        if batch:
            yield batch

    def __iter__(self) -> Iterator[P]:
        for batch in self.batches():
            yield from batch


def paced(packets: Iterable[P], speed: float | None = 1.0, **options: Any) -> Iterator[P]:
    """`packets` at their recorded pace times `speed` (None: unpaced), one by one."""
    return iter(Replay(packets, speed, **options))


def open_capture_stream(path: str) -> BinaryIO:
    """The binary stream a capture is read from: standard input for "-", else the file."""
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")  # the caller's reader owns and closes it


def read_capture(path: str) -> Iterator[Any]:
    """Frames (ts_ns, frame bytes, link type) of a pcap/pcapng file, or of standard input ("-").

    A thin adapter over the offline reader (`netmamba.capture.open_capture`, which reads any
    binary stream), so `tcpdump -w - | netmamba serve --read -` goes through the same code as
    files, gzip and pcapng included.
    """
    # TODO(part 2): hand the reader's parsed PacketBatches to the flow table instead of frames
    # (no re-parsing), pacing them with Replay by slicing batches at their due times.
    try:
        from netmamba.capture import open_capture
    except ImportError as exc:
        raise RuntimeError("the offline capture reader (netmamba.capture) is missing") from exc
    name = "<stdin>" if path == "-" else path
    with open_capture(open_capture_stream(path), name=name) as reader:
        yield from reader.frames()
