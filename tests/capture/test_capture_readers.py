"""Capture readers: pcap (byte orders, us/ns), pcapng (interfaces, resolutions, block kinds),
gzip, streams, chunk boundaries and every kind of bad input."""

from __future__ import annotations

import gzip
import io
import struct

import pytest

import pcapgen as pg
from netmamba.capture import CaptureError, open_capture, read_frames, read_packets, sniff
from netmamba.capture import reader as reader_module

T0 = 1_600_000_000_123_456_789  # ns; not a whole number of microseconds


def _udp_frames(n, linktype=pg.LINKTYPE_ETHERNET, start=T0, gap=1_000_001, size=10):
    sent = pg.udp_flow(
        ("10.0.0.1", 1234),
        ("10.0.0.2", 80),
        [("client", bytes([i % 256]) * size) for i in range(n)],
        start_ns=start,
        gap_ns=gap,
    )
    return pg.frames(sent, linktype)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_pcap_timestamps_and_frames_in_both_byte_orders(tmp_path, big_endian, nanosecond):
    frames = _udp_frames(3)
    path = pg.write_pcap(tmp_path / "a.pcap", frames, nanosecond=nanosecond, big_endian=big_endian)
    got = list(read_frames(path))
    assert [f.data for f in got] == [f for _, f in frames]
    expected = [t if nanosecond else t // 1000 * 1000 for t, _ in frames]
    assert [f.ts_ns for f in got] == expected
    assert {f.linktype for f in got} == {pg.LINKTYPE_ETHERNET}


def test_gzip_capture_reads_like_the_plain_one(tmp_path):
    frames = _udp_frames(5)
    plain = pg.write_pcap(tmp_path / "a.pcap", frames)
    packed = pg.write_pcap(tmp_path / "a.bin", frames, gzip=True)  # the name says nothing
    assert sniff(packed) == "pcap.gz"
    assert [f.data for f in read_frames(packed)] == [f.data for f in read_frames(plain)]
    with open_capture(packed) as r:
        list(r.batches())
        assert r.stats.format == "pcap.gz" and r.stats.packets == 5 and r.stats.error is None


def test_pcapng_interfaces_resolutions_and_block_kinds(tmp_path):
    ip4 = pg.ip("10.0.0.1", "10.0.0.2", pg.udp(1, 2, b"a"))
    ip6 = pg.ip("2001:db8::1", "2001:db8::2", pg.udp(3, 4, b"b"))
    interfaces = [
        pg.Interface(pg.LINKTYPE_ETHERNET),  # no if_tsresol: microseconds
        pg.Interface(pg.LINKTYPE_RAW, tsresol=9),  # nanoseconds
        pg.Interface(pg.LINKTYPE_LINUX_SLL, tsresol=0x80 | 20, tsoffset=100),  # 2^-20 s
    ]
    t_us, t_ns = 1_000_000_000_000_001_000, 1_000_000_000_000_000_007
    t_bin = 7 * 9_765_625  # 7 * 2^11 ticks of 2^-20 s: a whole number of ns
    packets = [
        (0, t_us, pg.ethernet(ip4)),
        (1, t_ns, ip6),
        (2, 100_000_000_000 + t_bin, pg.linux_sll(ip4)),
        (0, 0, pg.ethernet(ip6)),  # written as a simple packet block
    ]
    path = pg.write_pcapng(tmp_path / "a.pcapng", packets, interfaces, simple=[3])
    got = list(read_packets(path))
    assert [p.linktype for p in got] == [1, 101, 113, 1]
    assert [p.ts_ns for p in got[:3]] == [t_us, t_ns, 100_000_000_000 + t_bin]
    assert got[3].ts_ns == got[2].ts_ns  # a simple packet block has no timestamp of its own
    assert [(p.src, p.dport) for p in got] == [
        ("10.0.0.1", 2),
        ("2001:db8::1", 4),
        ("10.0.0.1", 2),
        ("2001:db8::1", 4),
    ]
    assert all(p.status == "ok" for p in got)


def test_pcapng_big_endian_and_a_second_section(tmp_path):
    ip4 = pg.ip("10.0.0.1", "10.0.0.2", pg.udp(1, 2, b"x"))
    first = pg.pcapng_bytes([(0, T0, pg.ethernet(ip4))], big_endian=True)
    second = pg.pcapng_bytes([(0, T0 + 5000, ip4)], [pg.Interface(pg.LINKTYPE_RAW, tsresol=9)])
    path = tmp_path / "two.pcapng"
    path.write_bytes(first + second)
    got = list(read_packets(path))
    assert [p.linktype for p in got] == [1, 101]  # the second section has its own interfaces
    assert [p.ts_ns for p in got] == [T0 // 1000 * 1000, T0 + 5000]


def test_records_across_chunk_boundaries_and_small_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_module, "CHUNK", 4096)
    frames = _udp_frames(600, size=700)  # ~450 kB: records straddle many 4 kB chunks
    for name, writer in (("a.pcap", pg.write_pcap), ("a.pcapng", None)):
        if writer:
            path = writer(tmp_path / name, frames)
        else:
            path = pg.write_pcapng(tmp_path / name, [(0, t, f) for t, f in frames])
        with open_capture(path) as r:
            batches = list(r.batches(max_packets=7))
        assert max(len(b) for b in batches) <= 7
        data = [p.frame for b in batches for p in b]
        assert data == [f for _, f in frames]
        assert r.stats.packets == 600 and r.stats.error is None


def test_reading_from_a_stream(tmp_path):
    data = pg.pcap_bytes(_udp_frames(4))
    with open_capture(io.BytesIO(data), name="<stdin>") as r:
        assert [p.sport for p in r.packets()] == [1234] * 4
        assert r.stats.path == "<stdin>"


def test_truncated_file_keeps_the_packets_before_and_says_so(tmp_path):
    data = pg.pcap_bytes(_udp_frames(5))
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-7])
    with open_capture(path) as r:
        got = list(r.packets())
    assert len(got) == 4
    assert r.stats.skipped == {"truncated_record": 1}
    assert "truncated capture" in r.stats.error and "after 4 packets" in r.stats.error


def test_truncated_gzip_stream_keeps_what_was_read(tmp_path):
    frames = _udp_frames(2000, size=200)
    blob = gzip.compress(pg.pcap_bytes(frames))
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with open_capture(path) as r:
        n = sum(len(b) for b in r.batches())
    assert 0 < n < 2000
    assert r.stats.error  # the cut stream is reported, not silent


def test_corrupt_record_length_stops_reading_with_an_error(tmp_path):
    data = bytearray(pg.pcap_bytes(_udp_frames(3)))
    first_len = struct.unpack_from("<I", data, 24 + 8)[0]
    second = 24 + 16 + first_len
    struct.pack_into("<I", data, second + 8, 50_000_000)  # captured length of record 2
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(data))
    with open_capture(path) as r:
        assert len(list(r.packets())) == 1
    assert "corrupt packet record after 1 packets" in r.stats.error


def test_empty_and_non_capture_files_raise_a_clear_error(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError, match=r"empty\.pcap: empty file"):
        open_capture(empty)
    text = tmp_path / "notes.pcap"
    text.write_text("hello world")
    with pytest.raises(CaptureError, match=r"notes\.pcap: not a pcap or pcapng capture .*68 65"):
        open_capture(text)
    with pytest.raises(CaptureError, match="is a directory"):
        open_capture(tmp_path)
    with pytest.raises(CaptureError, match="cannot open"):
        open_capture(tmp_path / "missing.pcap")
    assert sniff(text) is None and sniff(empty) is None


def test_header_only_and_cut_header(tmp_path):
    path = tmp_path / "hdr.pcap"
    path.write_bytes(pg.pcap_bytes([]))
    with open_capture(path) as r:
        assert list(r.batches()) == [] and r.stats.error is None
    path.write_bytes(pg.pcap_bytes([])[:10])
    with open_capture(path) as r:
        assert list(r.batches()) == []
        assert "24-byte pcap file header" in r.stats.error


def test_unknown_link_type_and_non_ip_frames_are_counted(tmp_path):
    arp = pg.ethernet(b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes(20), ethertype=0x0806)
    frames = [*_udp_frames(2), (T0, arp)]
    path = pg.write_pcap(tmp_path / "mixed.pcap", frames)
    with open_capture(path) as r:
        ok = [p for p in r.packets() if p.status == "ok"]
    assert len(ok) == 2 and r.stats.skipped == {"not_ip": 1} and r.stats.used == 2
    path = pg.write_pcap(tmp_path / "wifi.pcap", frames, linktype=127)  # radiotap
    with open_capture(path) as r:
        list(r.batches())
    assert r.stats.skipped == {"unknown_link_type": 3} and r.stats.used == 0


def test_snap_length_cuts_payload_but_keeps_the_packet(tmp_path):
    frames = _udp_frames(2, size=100)
    path = pg.write_pcap(tmp_path / "snap.pcap", frames, snaplen=14 + 20 + 8 + 30)
    got = list(read_packets(path))
    assert [len(p.payload) for p in got] == [30, 30]
    assert [p.ip_len for p in got] == [128, 128]  # the IP length comes from the header
    with open_capture(path) as r:
        list(r.batches())
    assert r.stats.snapped == 2 and r.stats.used == 2
    path = pg.write_pcap(tmp_path / "tiny.pcap", frames, snaplen=14 + 20 + 4)
    with open_capture(path) as r:
        list(r.batches())
    assert r.stats.skipped == {"truncated_transport": 2}
