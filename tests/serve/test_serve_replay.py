"""Replay pacing, on a fake clock: recorded pace, N times it, as fast as possible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netmamba.capture import PacketBatch
from netmamba.serve.replay import CaptureFiles, Replay, normalise_speed, open_capture_stream, paced
from netmamba.serve.service import NextCapture

S = 1_000_000_000  # ns per second


class FakeClock:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock, and is recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def packets(*times_s: float) -> list[tuple[int, bytes, int]]:
    return [(int(1_600_000_000 * S + t * S), b"p%d" % i, 1) for i, t in enumerate(times_s)]


def departures(replay: Replay, fake: FakeClock) -> list[tuple[float, list[bytes]]]:
    """(fake time, packet payloads) for every batch the replay yields."""
    return [(round(fake.now, 6), [p[1] for p in batch]) for batch in replay.batches()]


def test_recorded_pace_timeline() -> None:
    fake = FakeClock()
    replay = Replay(packets(0, 0.05, 0.05, 0.3), speed=1.0, clock=fake.clock, sleep=fake.sleep)
    got = departures(replay, fake)
    assert got == [
        (100.0, [b"p0"]),  # the first packet leaves at once
        (100.05, [b"p1", b"p2"]),  # 50 ms later, together (same timestamp)
        (100.15, []),  # a tick while waiting 250 ms for the next one
        (100.25, []),
        (100.3, [b"p3"]),
    ]
    assert sum(fake.sleeps) == pytest.approx(0.3)


def test_n_times_the_recorded_pace() -> None:
    fake = FakeClock()
    replay = Replay(packets(0, 1, 2, 4), speed=10.0, clock=fake.clock, sleep=fake.sleep)
    assert list(replay) == packets(0, 1, 2, 4)
    assert fake.now == pytest.approx(100.4)  # 4 s of capture in 0.4 s


def test_as_fast_as_possible_never_sleeps_and_batches() -> None:
    fake = FakeClock()
    many = packets(*[i * 10.0 for i in range(600)])
    replay = Replay(many, speed=None, max_batch=256, clock=fake.clock, sleep=fake.sleep)
    sizes = [len(b) for b in replay.batches()]
    assert sizes == [256, 256, 88] and fake.sleeps == []
    assert replay.now_ns() == many[-1][0]  # the replay's clock is the last packet's time


def test_now_ns_runs_in_capture_time_while_waiting() -> None:
    fake = FakeClock()
    replay = Replay(packets(0, 10), speed=2.0, clock=fake.clock, sleep=fake.sleep)
    batches = replay.batches()
    next(batches)  # p0 at capture time 0
    next(batches)  # the first tick: 0.1 s of wall time = 0.2 s of capture time
    assert replay.now_ns() - packets(0)[0][0] == pytest.approx(0.2 * S, rel=1e-6)


def test_long_silences_can_be_shortened() -> None:
    fake = FakeClock()
    replay = Replay(
        packets(0, 1, 3601, 3602), speed=1.0, max_gap_s=2.0, clock=fake.clock, sleep=fake.sleep
    )
    assert [p[1] for p in replay] == [b"p0", b"p1", b"p2", b"p3"]
    assert fake.now == pytest.approx(100 + 1 + 2 + 1)  # the hour became 2 s


def test_timestamps_going_backwards_do_not_stall() -> None:
    fake = FakeClock()
    replay = Replay(packets(0, 5, 1, 6), speed=1.0, clock=fake.clock, sleep=fake.sleep)
    assert [p[1] for p in replay] == [b"p0", b"p1", b"p2", b"p3"]
    assert fake.now == pytest.approx(106)  # p2 (at 1 s, after 5 s) left at once


def test_paced_wraps_any_iterator() -> None:
    fake = FakeClock()
    gen = (p for p in packets(0, 0.5))
    assert list(paced(gen, 1.0, clock=fake.clock, sleep=fake.sleep)) == packets(0, 0.5)
    assert fake.now == pytest.approx(100.5)


@pytest.mark.parametrize(("speed", "expected"), [(None, None), (0, None), (float("inf"), None),
                                                 (1, 1.0), (2.5, 2.5)])  # fmt: skip
def test_speed_values(speed: float | None, expected: float | None) -> None:
    assert normalise_speed(speed) == expected


def test_negative_speed_is_refused() -> None:
    with pytest.raises(ValueError, match="replay speed must be positive"):
        normalise_speed(-1)


def test_dash_reads_standard_input() -> None:
    assert open_capture_stream("-") is sys.stdin.buffer


def test_capture_on_standard_input_goes_through_the_offline_reader(tmp_path: Path) -> None:
    capture = pytest.importorskip("netmamba.capture", reason="the offline reader is not there")
    if not hasattr(capture, "open_capture"):
        pytest.skip("netmamba.capture has no open_capture(stream) yet")
    import pcapgen

    t0 = 1_650_000_000_123_456_789
    frames = [
        (t0 + i * 1_000_123, pcapgen.ethernet(pcapgen.ip("10.0.0.1", "10.0.0.2",
                                                         pcapgen.udp(5000 + i, 53, b"q" * i))))
        for i in range(5)
    ]  # fmt: skip
    path = pcapgen.write_pcap(tmp_path / "in.pcap.gz", frames, nanosecond=True, gzip=True)
    code = (
        "from netmamba.serve.replay import read_capture\n"
        "for batch in read_capture('-'):\n"
        "    for p in batch:\n        print(p.ts_ns, p.frame.hex(), p.linktype)\n"
    )
    with open(path, "rb") as stdin:  # as in: tcpdump -w - | netmamba serve --read -
        proc = subprocess.run(
            [sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == [f"{ts} {data.hex()} 1" for ts, data in frames]


# --- the reader's parsed batches ------------------------------------------------------------------


def packet_batch(*times_s: float) -> PacketBatch:
    """A parsed batch of UDP packets p0, p1, ... stamped at `times_s` (payload = the name)."""
    import pcapgen

    frames = [
        (int(1_600_000_000 * S + t * S), pcapgen.ethernet(pcapgen.ip(
            "10.0.0.1", "10.0.0.2", pcapgen.udp(5000, 53, b"p%d" % i))), 1)
        for i, t in enumerate(times_s)
    ]  # fmt: skip
    return PacketBatch.from_frames(frames)


def names(batch: PacketBatch) -> list[bytes]:
    return [p.payload for p in batch]


def test_unpaced_batches_pass_through_untouched() -> None:
    fake = FakeClock()
    first, second = packet_batch(0, 1, 2), packet_batch(3, 4)
    replay = Replay([first, second], speed=None, clock=fake.clock, sleep=fake.sleep)
    out = list(replay.batches())
    assert out[0] is first and out[1] is second and fake.sleeps == []
    assert replay.now_ns() == int(1_600_000_004 * S)


def test_paced_batches_are_sliced_at_due_times() -> None:
    fake = FakeClock()
    replay = Replay([packet_batch(0, 0.05, 0.05, 0.3)], speed=1.0, clock=fake.clock,
                    sleep=fake.sleep)  # fmt: skip
    got = [
        (round(fake.now, 6), names(b) if isinstance(b, PacketBatch) else b)
        for b in replay.batches()
    ]
    assert got == [
        (100.0, [b"p0"]),
        (100.05, [b"p1", b"p2"]),
        (100.15, []),  # ticks while waiting 250 ms, as for single packets
        (100.25, []),
        (100.3, [b"p3"]),
    ]


def test_paced_batches_shorten_long_silences_and_tolerate_backwards_time() -> None:
    fake = FakeClock()
    replay = Replay([packet_batch(0, 1, 3601, 3600.5, 3602)], speed=1.0, max_gap_s=2.0,
                    clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    out = [names(b) for b in replay.batches() if isinstance(b, PacketBatch)]
    assert [n for batch in out for n in batch] == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert [b"p2", b"p3"] in out  # p3 is earlier than p2: it leaves with it
    assert fake.now == pytest.approx(100 + 1 + 2 + 1)  # the hour became 2 s


def test_next_capture_markers_pass_through_and_restart_the_pace() -> None:
    fake = FakeClock()
    later = packet_batch(86400, 86400.5)  # a recording made a day later
    replay = Replay(
        [NextCapture("a.pcap"), packet_batch(0, 0.5), NextCapture("b.pcap"), later],
        speed=1.0,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    out = [
        b if isinstance(b, NextCapture) else names(b)
        for b in replay.batches()
        if isinstance(b, NextCapture) or len(b)
    ]
    assert out == [NextCapture("a.pcap"), [b"p0"], [b"p1"], NextCapture("b.pcap"), [b"p0"],
                   [b"p1"]]  # fmt: skip
    assert fake.now == pytest.approx(101.0)  # 0.5 s each, not a day


def test_a_folder_is_read_capture_by_capture_in_sorted_order(tmp_path: Path) -> None:
    import pcapgen

    def write(path: Path, sport: int) -> None:
        pcapgen.write_pcap(path, [(S * 1_600_000_000, pcapgen.ethernet(pcapgen.ip(
            "10.0.0.1", "10.0.0.2", pcapgen.udp(sport, 53, b"x"))))])  # fmt: skip

    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "a.pcap", 1)
    write(tmp_path / "b.pcap", 2)
    (tmp_path / "notes.txt").write_text("not a capture")
    (tmp_path / "broken.pcap").write_bytes(b"garbage, not a capture at all")
    files = CaptureFiles(str(tmp_path))
    items = list(files)
    markers = [i.name for i in items if isinstance(i, NextCapture)]
    assert markers == [str(tmp_path / "b.pcap"), str(tmp_path / "sub" / "a.pcap")]
    ports = [p.sport for i in items if isinstance(i, PacketBatch) for p in i]
    assert ports == [2, 1]
    assert (files.captures_read, files.captures_failed) == (2, 1)  # broken.pcap: skipped


def test_a_bad_capture_named_directly_is_an_error_at_once(tmp_path: Path) -> None:
    from netmamba.capture import CaptureError

    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"hello world")
    with pytest.raises(CaptureError, match=r"bad.pcap: not a pcap or pcapng capture"):
        CaptureFiles(str(bad))
    with pytest.raises(CaptureError, match=r"nowhere.pcap: no such capture file or folder"):
        CaptureFiles(str(tmp_path / "nowhere.pcap"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptureError, match=r"empty: no pcap or pcapng captures in this folder"):
        CaptureFiles(str(tmp_path / "empty"))
