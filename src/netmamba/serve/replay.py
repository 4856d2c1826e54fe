"""Packet sources for the service: capture files replayed at a chosen pace, standard input.

`Replay` hands on what a reader gives, in batches, at a chosen pace:

    speed = 1.0    the recorded pace (a packet leaves when its time since the first one is due)
    speed = N      N times faster
    speed = None   as fast as the consumer takes them (0 and inf mean the same)

It takes parsed `PacketBatch`es of the offline reader (what `read_captures` yields: no packet
is parsed twice, and an unpaced replay passes each batch on untouched; a paced one slices a
batch at the packets' due times) or single timestamped packets (anything whose first field is
the timestamp in ns, like `Packet(ts_ns, data, linktype)`), which it groups into lists.
`NextCapture` markers between captures pass through, and restart the pacing.

While it waits for the next packet it yields empty batches every `tick_s`, so the consumer can
expire idle flows and notice a shutdown request. `now_ns()` is the replay's clock in capture
time: the time the capture would show "now", which is what flow timeouts compare against.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np

from netmamba.capture.batch import PacketBatch
from netmamba.serve.service import NextCapture

log = logging.getLogger(__name__)

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

    def batches(self) -> Iterator[Any]:
        """Lists of packets, PacketBatches (slices of the reader's when paced), NextCapture
        markers, and [] ticks while waiting."""
        batch: list[P] = []
        for item in self.packets:
            if isinstance(item, PacketBatch | NextCapture):
                if batch:
                    yield batch
                    batch = []
                if isinstance(item, NextCapture):
                    self._anchor_ts = None  # another recording: its own pace from its start
                    yield item
                else:
                    yield from self._paced_batch(item)
                continue
            ts = item[0]
            if self._anchor_ts is None:
                self._anchor_ts, self._anchor_wall = ts, self._clock()
            elif self.speed is not None:
                self._shorten_gap(ts)
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
            batch.append(item)
            if len(batch) >= self.max_batch:
                yield batch
                batch = []
        if batch:
            yield batch

    def _shorten_gap(self, ts: int) -> None:
        """Shift the anchor so that a silence longer than max_gap_s lasts max_gap_s."""
        assert self.speed is not None
        gap = (ts - self._last_ts) / 1e9 / self.speed
        if self.max_gap_s is not None and gap > self.max_gap_s:
            self._anchor_wall -= gap - self.max_gap_s

    def _paced_batch(self, batch: PacketBatch) -> Iterator[Any]:
        """A reader's batch: whole when unpaced, else in slices of the packets due together."""
        n = len(batch)
        if not n:
            return
        ts = batch.packets["ts_ns"]
        if self._anchor_ts is None:
            self._anchor_ts, self._anchor_wall = int(ts[0]), self._clock()
            self._last_ts = int(ts[0])
        if self.speed is None:
            self._last_ts = max(self._last_ts, int(ts.max()))
            yield batch
            return
        # A packet is due once every packet before it is: pace by the running maximum, so a
        # timestamp going backwards leaves at once, as in the one-packet path.
        running = np.maximum.accumulate(ts)
        start, gap_checked = 0, -1
        while start < n:
            now = self._clock()
            # Capture time that is due now (1 ms early is on time, as above).
            due_ts = self._anchor_ts + (now + 0.001 - self._anchor_wall) * self.speed * 1e9
            end = int(np.searchsorted(running, due_ts, side="right"))
            if end > start:
                self._last_ts = max(self._last_ts, int(running[end - 1]))
                yield PacketBatch(batch.buf, batch.packets[start:end])
                start = end
                continue
            if gap_checked != start:  # before waiting for a packet: is its silence too long?
                gap_checked = start
                self._shorten_gap(int(running[start]))
                continue
            wait = self._due(int(running[start])) - now
            self._sleep(min(wait, self.tick_s))
            if wait > self.tick_s:
                yield []  # a tick: time passes, nothing arrived

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            if not isinstance(batch, NextCapture):
                yield from batch


def paced(packets: Iterable[P], speed: float | None = 1.0, **options: Any) -> Iterator[P]:
    """`packets` at their recorded pace times `speed` (None: unpaced), one by one."""
    return iter(Replay(packets, speed, **options))


def open_capture_stream(path: str) -> BinaryIO:
    """The binary stream a capture is read from: standard input for "-", else the file."""
    if path == "-":
        return sys.stdin.buffer
    return open(path, "rb")  # the caller's reader owns and closes it


class CaptureFiles:
    """The captures one `--read` names, read in turn as parsed PacketBatches.

    `path` is a capture file (pcap, pcapng, gzip of either), "-" for standard input, or a
    folder: every capture under it, in sorted order, found as `netmamba classify` finds them.
    Iterating yields, for each capture, `NextCapture(name)` then its batches. A file that is not
    a capture raises CaptureError at once when it was named directly (before the service
    starts); in a folder it is logged and skipped. Read errors (a truncated or corrupt file)
    end that capture with a warning, as in the offline reader.
    """

    def __init__(self, path: str) -> None:
        from netmamba.capture import CaptureError, open_capture
        from netmamba.dataset.extract import find_captures

        self.path = path
        self._open, self._error = open_capture, CaptureError
        self._reader: Any = None
        self.captures_read = 0
        self.captures_failed = 0
        if path == "-":
            self.paths = ["-"]
        elif Path(path).exists():
            found, _ = find_captures([path])  # names as `classify` gives them
            self.paths = [c.path for c in found]
            if not self.paths:
                raise CaptureError(f"{path}: no pcap or pcapng captures in this folder")
        else:
            raise CaptureError(f"{path}: no such capture file or folder")
        self.folder = Path(path).is_dir() if path != "-" else False
        if not self.folder:  # a bad file named directly is the user's error: say so now
            self._reader = self._open_one(self.paths[0])

    def _open_one(self, path: str) -> Any:
        name = "<stdin>" if path == "-" else path
        return self._open(open_capture_stream(path), name=name)

    def __iter__(self) -> Iterator[Any]:
        for path in self.paths:
            if self._reader is None:
                try:
                    self._reader = self._open_one(path)
                except (self._error, OSError) as exc:
                    self.captures_failed += 1
                    log.warning("skipping %s", exc)
                    continue
            reader = self._reader
            try:
                yield NextCapture("stdin" if path == "-" else path)
                yield from reader.batches()
            finally:
                reader.close()
                self._reader = None
            self.captures_read += 1
            if reader.stats.error:
                log.warning("%s: %s", reader.stats.path, reader.stats.error)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def read_capture(path: str) -> Iterator[PacketBatch]:
    """Parsed packet batches of a pcap/pcapng file, or of standard input ("-").

    A thin adapter over the offline reader (`netmamba.capture.open_capture`, which reads any
    binary stream), so `tcpdump -w - | netmamba serve --read -` goes through the same code as
    files, gzip and pcapng included."""
    for item in CaptureFiles(path):
        if isinstance(item, PacketBatch):
            yield item
