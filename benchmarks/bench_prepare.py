"""Packets per second of `prepare`'s extraction, side by side with a scapy extraction done the
way the paper's public code does it, and with a plain read of the packet records.

    python benchmarks/bench_prepare.py [CAPTURE]

CAPTURE is a pcap/pcapng file, or a folder: then its classic-pcap Ethernet captures are
concatenated, record by record, into one temporary pcap (nDPI's captures are small, so this
gives a realistic mix of traffic in one file). Default: ../shared/data/ndpi-4.2/pcap when it
exists, else a generated capture of 200,000 packets (TCP sessions and UDP flows, 60-1500
bytes).

Each measurement runs in a fresh process on the same file (best of --repeat runs, the methods
interleaved so that they see the same machine load), and reports packets per second and the
process's peak memory:

- raw read: the floor any extractor pays. The simplest honest Python loop over the records:
  read the 24-byte file header, then repeatedly read a 16-byte record header, unpack it with
  struct and read the captured bytes. Nothing is parsed. (pcap files only.)
- prepare: netmamba's extraction, as `netmamba prepare` runs it per file: streaming reader and
  parser -> uni-directional flow meter -> sample arrays of every flow with the default
  de-biasing (bytes, sizes, IATs, masks; SPEC section 2). Dataset writing is not included
  (it is timed separately as `prepare_full_s`: the whole command on the file, to Parquet).
- scapy: the paper's public code's way: `rdpcap` the file, then per packet `bytes(pkt[IP])`
  and the payload `bytes(pkt[Raw])`, the header found by removing the payload's hex from the
  packet's hex, grouped by 5-tuple into the same features (first 5 packets' bytes, first 20
  sizes and times).

It also compares header parsers on the same frames (dpkt, netmamba's Python reference parser,
netmamba's native parser) to record why the native one is used.

The last line printed is one JSON object with prepare_pps, scapy_pps, raw_read_pps,
speedup_vs_scapy, slowdown_vs_raw_read, peak_rss_mb (of prepare) and the other figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ndpi-4.2" / "pcap"


# ---------------------------------------------------------------------------------------------
# input


def concatenate_pcaps(folder: Path, out: Path) -> dict:
    """Copy the records of every little/big-endian microsecond Ethernet pcap in `folder`
    (sorted by name) into one pcap; stops a file at its first implausible record."""
    files = 0
    packets = 0
    with open(out, "wb") as w:
        w.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for path in sorted(folder.iterdir()):
            data = path.read_bytes()
            if len(data) < 24:
                continue
            magic = data[:4]
            order = (
                "<"
                if magic == b"\xd4\xc3\xb2\xa1"
                else ">"
                if magic == b"\xa1\xb2\xc3\xd4"
                else None
            )
            if order is None or struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF != 1:
                continue
            files += 1
            pos = 24
            while pos + 16 <= len(data):
                sec, usec, incl, orig = struct.unpack_from(order + "IIII", data, pos)
                if incl > 262144 or pos + 16 + incl > len(data):
                    break
                w.write(struct.pack("<IIII", sec, usec, incl, orig))
                w.write(data[pos + 16 : pos + 16 + incl])
                pos += 16 + incl
                packets += 1
    return {"source": f"{folder} ({files} Ethernet pcap files concatenated)", "packets": packets}


def generate(out: Path, n: int = 200_000) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import pcapgen as pg

    rng = random.Random(0)
    frames = []
    t = 1_700_000_000 * 10**9
    flow = 0
    while len(frames) < n:
        flow += 1
        client = (
            f"10.{flow // 250 % 250}.{flow % 250}.{rng.randrange(1, 250)}",
            1024 + flow % 60000,
        )
        server = (f"192.0.2.{rng.randrange(1, 250)}", rng.choice([80, 443, 8443, 3478]))
        k = rng.randrange(2, 40)
        payloads = [
            (rng.choice(["client", "server"]), rng.randbytes(rng.randrange(0, 1400)))
            for _ in range(k)
        ]
        if rng.random() < 0.7:
            sent = pg.tcp_session(
                client, server, payloads, start_ns=t, gap_ns=rng.randrange(10**5, 10**8)
            )
        else:
            sent = pg.udp_flow(
                client, server, payloads, start_ns=t, gap_ns=rng.randrange(10**5, 10**8)
            )
        frames += pg.frames(sent)
        t += 10**7
    frames = pg.merge(frames[:n])
    pg.write_pcap(out, frames)
    return {"source": f"generated ({n} packets)", "packets": n}


# ---------------------------------------------------------------------------------------------
# the measured methods (each run in its own process: python bench_prepare.py --measure M FILE)


def raw_read(path: str) -> int:
    n = 0
    unpack = struct.Struct("<IIII").unpack
    with open(path, "rb") as f:
        f.read(24)
        while True:
            header = f.read(16)
            if len(header) < 16:
                break
            _, _, incl, _ = unpack(header)
            f.read(incl)
            n += 1
    return n


def netmamba_extract(path: str) -> int:
    from netmamba.capture import open_capture
    from netmamba.debias import DebiasConfig
    from netmamba.features import FeatureConfig, flow_arrays
    from netmamba.flows import FlowConfig, FlowMeter

    features, debias = FeatureConfig(), DebiasConfig()
    with open_capture(path) as reader:
        meter = FlowMeter(FlowConfig(), features, source=path)
        chunk = []
        for flow in meter.run(reader.batches()):
            chunk.append(flow)
            if len(chunk) == 4096:
                flow_arrays(chunk, features, debias, keep_raw=True)
                chunk = []
        flow_arrays(chunk, features, debias, keep_raw=True)
    return reader.stats.packets


def scapy_extract(path: str) -> int:
    """Features of every uni-directional flow, done the way the paper's public code does."""
    import binascii
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.all import IP, TCP, UDP, IPv6, Raw, rdpcap

    packets = rdpcap(path)
    flows: dict = {}
    for pkt in packets:
        if IP in pkt:
            ip = pkt[IP]
        elif IPv6 in pkt:
            ip = pkt[IPv6]
        else:
            continue
        l4 = pkt.getlayer(TCP)
        if l4 is None:
            l4 = pkt.getlayer(UDP)
        key = (
            ip.src,
            ip.dst,
            ip.proto if IP in pkt else ip.nh,
            l4.sport if l4 is not None else 0,
            l4.dport if l4 is not None else 0,
        )
        f = flows.setdefault(key, {"n": 0, "bytes": [], "sizes": [], "times": []})
        f["n"] += 1
        if f["n"] <= 20:
            f["sizes"].append(len(ip))
            f["times"].append(float(pkt.time))
        if f["n"] <= 5:
            header = binascii.hexlify(bytes(ip)).decode()
            try:
                payload = binascii.hexlify(bytes(pkt[Raw])).decode()
                header = header.replace(payload, "")
            except IndexError:
                payload = ""
            f["bytes"].append((header[:160].ljust(160, "0"), payload[:480].ljust(480, "0")))
    for f in flows.values():  # the arrays, as the paper's code builds them
        hexes = "".join(h + p for h, p in f["bytes"]).ljust(5 * 640, "0")
        bytes.fromhex(hexes)
        gaps = [b - a for a, b in zip(f["times"], f["times"][1:], strict=False)]
        _ = [0.0, *gaps] + [0.0] * (20 - len(f["times"]))
    return len(packets)


def parsers(path: str) -> dict:
    """Header parsing alone, on the same in-memory frames: dpkt vs netmamba (Python, native)."""
    import dpkt
    import numpy as np

    from netmamba.capture import PacketBatch, read_frames
    from netmamba.capture.batch import native, parse_records_python

    frames = [(f.ts_ns, f.data, f.linktype) for f in read_frames(path)]
    out = {}

    t = time.perf_counter()
    for _, data, _ in frames:
        try:
            eth = dpkt.ethernet.Ethernet(data)
        except (dpkt.UnpackError, struct.error):
            continue
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                _ = (ip.src, ip.dst, l4.sport, l4.dport, len(l4.data))
    out["parser_dpkt_pps"] = len(frames) / (time.perf_counter() - t)

    batch = PacketBatch.from_frames(frames)
    records = batch.packets.copy()
    t = time.perf_counter()
    parse_records_python(batch.buf, records)
    out["parser_python_pps"] = len(frames) / (time.perf_counter() - t)
    if native() is not None:
        records2 = batch.packets.copy()
        t = time.perf_counter()
        native().nm_parse(  # type: ignore[union-attr]
            np.frombuffer(batch.buf, np.uint8).ctypes.data,
            len(batch.buf),
            records2.ctypes.data,
            len(records2),
        )
        out["parser_native_pps"] = len(frames) / (time.perf_counter() - t)
    return out


def prepare_full(path: str) -> int:
    from netmamba.dataset import PrepareConfig, prepare
    from netmamba.labels import LabelConfig

    with tempfile.TemporaryDirectory() as tmp:
        result = prepare(
            [path],
            Path(tmp) / "ds",
            PrepareConfig(labels=LabelConfig(source="none")),
            progress=False,
        )
        return result.manifest["captures"]["packets"]


METHODS = {
    "raw": raw_read,
    "prepare": netmamba_extract,
    "scapy": scapy_extract,
    "prepare_full": prepare_full,
}


def child(method: str, path: str) -> None:
    if method == "parsers":
        print(json.dumps(parsers(path)))
        return
    if method != "raw":  # libraries are imported before the clock starts, as for the raw loop
        if method == "scapy":
            import scapy.all  # noqa: F401
        else:
            import netmamba.dataset  # noqa: F401
    t = time.perf_counter()
    n = METHODS[method](path)
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"packets": n, "seconds": seconds, "peak_rss_mb": rss}))


def measure(method: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", method, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", nargs="?", type=Path, help="pcap file or folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs of raw read and prepare")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        child(args.measure, str(args.capture))
        return

    with tempfile.TemporaryDirectory() as tmp:
        target = args.capture
        if target is None:
            target = DEFAULT_DATA if DEFAULT_DATA.is_dir() else None
        if target is None:
            path = Path(tmp) / "generated.pcap"
            info = generate(path)
        elif target.is_dir():
            path = Path(tmp) / "concatenated.pcap"
            info = concatenate_pcaps(target, path)
        else:
            path = target
            info = {"source": str(target)}
        info["file_mb"] = round(path.stat().st_size / 2**20, 1)
        print(f"capture: {info['source']}, {info['file_mb']} MB", flush=True)

        runs: dict[str, list[dict]] = {"raw": [], "prepare": []}
        for i in range(args.repeat):
            for method in ("raw", "prepare"):
                r = measure(method, path)
                runs[method].append(r)
                print(
                    f"  run {i + 1} {method:8s} {r['packets'] / r['seconds']:>12,.0f} packets/s "
                    f"({r['seconds']:.2f} s, peak {r['peak_rss_mb']:.0f} MB)",
                    flush=True,
                )
        scapy = measure("scapy", path)
        print(
            f"  scapy          {scapy['packets'] / scapy['seconds']:>12,.0f} packets/s "
            f"({scapy['seconds']:.2f} s, peak {scapy['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
        full = measure("prepare_full", path)
        print(f"  prepare (whole command, to Parquet) {full['seconds']:.2f} s", flush=True)
        parse = measure("parsers", path)
        for k, v in parse.items():
            print(f"  {k:20s} {v:>12,.0f}", flush=True)

    best = {m: min(rs, key=lambda r: r["seconds"]) for m, rs in runs.items()}
    packets = best["prepare"]["packets"]
    prepare_pps = packets / best["prepare"]["seconds"]
    raw_pps = best["raw"]["packets"] / best["raw"]["seconds"]
    scapy_pps = scapy["packets"] / scapy["seconds"]
    result = {
        "capture": info["source"],
        "packets": packets,
        "file_mb": info["file_mb"],
        "prepare_pps": round(prepare_pps),
        "scapy_pps": round(scapy_pps),
        "raw_read_pps": round(raw_pps),
        "speedup_vs_scapy": round(prepare_pps / scapy_pps, 1),
        "slowdown_vs_raw_read": round(raw_pps / prepare_pps, 2),
        "peak_rss_mb": round(best["prepare"]["peak_rss_mb"], 1),
        "scapy_peak_rss_mb": round(scapy["peak_rss_mb"], 1),
        "prepare_full_s": round(full["seconds"], 2),
        **{k: round(v) for k, v in parse.items()},
        "native": "parser_native_pps" in parse,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
