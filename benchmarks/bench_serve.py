#!/usr/bin/env python3
"""Benchmarks of `netmamba serve`. Figures are printed; the last line is one JSON object.

python benchmarks/bench_serve.py [CAPTURE_DIR] [--config default|fast|paper] [--check]
    Replay every capture of CAPTURE_DIR (default ../shared/data/ndpi-4.2/pcap, or a generated
    corpus when absent) as fast as possible through the whole service: reader, flow table
    (the model's flow settings), batched inference in the worker, SQLite store. Reports Mb/s
    (wire bytes), packets/s, flows/s classified, batch latency p50/p99 (oldest flow of a
    batch queued -> its results back), drops, lost flows (seen, not too short, not stored)
    and peak memory (this process + the largest child). The model is the built-in default
    one, or until it exists a `fast` (or --config paper) classifier with random weights: the
    cost of inference does not depend on the weights. --check also runs `netmamba classify`
    on the same captures and reports the share of its labelled flows stored with its label.

python benchmarks/bench_serve.py --capture-rate [--packets N]
    Live capture on a veth pair into a network namespace (needs root): how many packets
    per second each capture method (TPACKET_V3 ring, recvmsg) hands to Python. The kernel
    first queues N frames while nobody reads; the time to drain them is the consumer's
    rate, whatever the sender can do. Methods alternate, each run several times.

python benchmarks/bench_serve.py --plumbing [--flows N]
    The service's own machinery alone: ready flows of the paper's geometry through the
    inference queue, a worker whose model costs nothing, and the SQLite store. The ceiling
    the parser, flow table and model sit under; not a figure of the classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000


# -- live capture rate ----------------------------------------------------------------------------


@contextlib.contextmanager
def veth_pair() -> Iterator[tuple[str, str, str]]:
    """(host interface, namespace, namespace interface) of a fresh veth pair."""
    tag = secrets.token_hex(3)
    netns, host, peer = f"nmbench{tag}", f"nmbh{tag}", f"nmbp{tag}"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", netns)
    try:
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns)
        run("ip", "link", "set", host, "up")
        run("ip", "-n", netns, "link", "set", peer, "up")
        yield host, netns, peer
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def socket_in_netns(netns: str, ifname: str) -> socket.socket:
    """A packet socket bound to `ifname` inside `netns` (made by a thread that entered it)."""
    out: dict[str, object] = {}

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.bind((ifname, 0))
            out["sock"] = s
        except OSError as exc:
            out["error"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


def udp_frame(size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes to port 9 (discard)."""
    payload = bytes(size - 42)
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 99, 0, 2]), bytes([10, 99, 0, 1]))  # fmt: skip
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip + udp


def drain_rate(host: str, inject: socket.socket, method: str, frame: bytes, n: int) -> dict:
    from netmamba.capture.live import LiveCapture, LiveCaptureConfig

    buffer_mb = max(64, n * (len(frame) + 3000) // 2**20)  # room for all n (recvmsg truesize)
    config = LiveCaptureConfig(
        interface=host, method=method, bpf="udp dst port 9", buffer_mb=buffer_mb, block_kb=4096
    )
    with LiveCapture(config) as cap:
        start = time.perf_counter()
        for i in range(n):
            inject.send(frame)
            if i % 500 == 499:
                time.sleep(0)  # let the veth backlog drain into the socket
        sent_s = time.perf_counter() - start
        time.sleep(0.2)
        stats = cap.stats()
        queued = stats.received - stats.dropped
        got = 0
        start = time.perf_counter()
        for batch in cap.batches():
            got += len(batch)
            if got >= queued or (not batch and got):
                break
        drain_s = time.perf_counter() - start
    return {
        "method": method,
        "frame_bytes": len(frame),
        "queued": queued,
        "kernel_drops": stats.dropped,
        "read": got,
        "pps": got / drain_s,
        "sender_pps": n / sent_s,
    }


def capture_rate(n: int, repeats: int) -> dict:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("--capture-rate needs root and iproute2 (network namespace, veth pair)")
    results: dict[str, dict[int, list[float]]] = {"ring": {}, "recvmsg": {}}
    with veth_pair() as (host, netns, peer):
        inject = socket_in_netns(netns, peer)
        for size in (64, 1514):
            frame = udp_frame(size)
            for rep in range(repeats):
                order = ("ring", "recvmsg") if rep % 2 == 0 else ("recvmsg", "ring")
                for method in order:
                    r = drain_rate(host, inject, method, frame, n)
                    results[method].setdefault(size, []).append(r["pps"])
                    print(
                        f"  {method:8s} {size:5d}-byte frames: read {r['read']:,} of "
                        f"{r['queued']:,} queued ({r['kernel_drops']} kernel drops) at "
                        f"{r['pps']:,.0f} packets/s (sender {r['sender_pps']:,.0f}/s)",
                        flush=True,
                    )
    summary: dict = {"packets": n, "repeats": repeats}
    for size in (64, 1514):
        ring = statistics.median(results["ring"][size])
        recv = statistics.median(results["recvmsg"][size])
        summary[f"ring_pps_{size}"] = round(ring)
        summary[f"recvmsg_pps_{size}"] = round(recv)
        summary[f"ring_over_recvmsg_{size}"] = round(ring / recv, 2)
    return summary


# -- the service's machinery alone ---------------------------------------------------------------


def paper_geometry() -> dict[str, tuple[tuple[int, ...], str]]:
    return {
        "bytes": ((1600,), "uint8"),
        "header_lens": ((5,), "uint16"),
        "payload_lens": ((5,), "uint16"),
        "sizes": ((20,), "int16"),
        "iats": ((20,), "float32"),
        "seq_mask": ((20,), "bool"),
    }


def free_predict_factory(classes: int = 10):  # type: ignore[no-untyped-def]
    """A model that costs nothing: probabilities from the first byte (picklable factory)."""

    def predict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = arrays["bytes"][:, 0].astype(np.int64)
        probs = np.full((len(first), classes), 0.5 / (classes - 1), dtype=np.float32)
        probs[np.arange(len(first)), first % classes] = 0.5
        return {"probs": probs}

    return predict


class OneFlowPerPacket:
    """A flow table stand-in: every 'packet' is a whole ready flow (no parsing)."""

    flows_evicted = 0
    active_flows = 0

    def __init__(self) -> None:
        self.flows_seen = 0
        rng = np.random.default_rng(0)
        self.arrays = {
            name: rng.integers(0, 200, size=shape).astype(dtype)
            for name, (shape, dtype) in paper_geometry().items()
        }

    def add(self, packets: list) -> list:  # type: ignore[type-arg]
        from netmamba.serve.service import ReadyFlow

        ready = []
        for ts, data, _ in packets:
            n = self.flows_seen
            self.flows_seen += 1
            arrays = dict(self.arrays)
            arrays["bytes"] = arrays["bytes"].copy()
            arrays["bytes"][0] = n % 251
            ready.append(
                ReadyFlow(
                    protocol=6,
                    src_ip="10.0.0.1",
                    src_port=1024 + n % 60000,
                    dst_ip="10.0.0.2",
                    dst_port=443,
                    first_ts_ns=ts,
                    last_ts_ns=ts + 1000,
                    packets=5,
                    bytes=len(data) * 5,
                    arrays=arrays,
                )
            )
        return ready

    def expire(self, now_ns: int) -> list:  # type: ignore[type-arg]
        return []

    def flush(self) -> list:  # type: ignore[type-arg]
        return []


def plumbing(n_flows: int) -> dict:
    from netmamba.serve.replay import Replay
    from netmamba.serve.service import ModelSpec, ReplaySource, ServeConfig, Service

    labels = [f"class{i}" for i in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        config = ServeConfig(store=f"{tmp}/r.sqlite", http=False, log_interval_s=0)
        packets = [(1_700_000_000 * 10**9 + i * 1000, b"x" * 700, 1) for i in range(n_flows)]
        model = ModelSpec("free", labels, paper_geometry(), free_predict_factory)
        service = Service(config, ReplaySource(Replay(packets), "synthetic"), OneFlowPerPacket(),
                          model)  # fmt: skip
        service.start()
        summary = service.run(install_signals=False)
        from netmamba.serve.sqlite_store import SQLiteStore

        with SQLiteStore(f"{tmp}/r.sqlite") as store:
            stored = store.count()
    latencies = np.array(summary.batch_latencies_s) * 1000
    return {
        "flows": n_flows,
        "flows_per_s": round(summary.flows_per_s),
        "stored": stored,
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "drops": summary.flows_dropped,
        "lost_flows": summary.flows_lost,
    }


# -- the whole service ---------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its (finished) children, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


DATA = REPO.parent / "shared" / "data" / "ndpi-4.2" / "pcap"
BENCH_LABELS = [f"class{i:02d}" for i in range(20)]


def generated_corpus(folder: Path, files: int = 40) -> Path:
    """Captures made with tests/pcapgen.py (TCP sessions of 3-40 packets, UDP exchanges),
    for machines without ../shared/data."""
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "serve")]
    import servemodel

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        servemodel.write_traffic(
            folder / f"gen{i:03d}.pcap",
            n_sessions=200,
            start_ns=servemodel.T0 + i * 10**12,
            subnet=i % 250,
        )
    return folder


def benchmark_checkpoint(folder: Path, config_name: str) -> Path:
    """A classifier checkpoint of the `config_name` preset with random weights (the cost of
    inference does not depend on the weights), with the paper's data settings."""
    import torch

    from netmamba.debias import DebiasConfig
    from netmamba.evaluate.ood import UnknownDetector
    from netmamba.features import FeatureConfig
    from netmamba.flows import FlowConfig
    from netmamba.models import ModelConfig, build_classifier
    from netmamba.models.weights import save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig.preset(config_name)
    model = build_classifier(config, len(BENCH_LABELS))
    extra = {
        "label_names": BENCH_LABELS,
        "logit_scale": 30.0,
        "unknown_detector": UnknownDetector(temperature=1.5, threshold=2.5).to_dict(),
        "features": config.feature_config().to_dict(),
        "data_features": FeatureConfig().to_dict(),
        "flow": FlowConfig().to_dict(),
        "debias": DebiasConfig().to_dict(),
    }
    return save_checkpoint(folder, model, extra)


def replay_benchmark(
    capture_dir: Path | None,
    config_name: str,
    threads: int | None,
    batch: int,
    check: bool,
    profile: bool = False,
    chunk: int | None = None,
    queue: int = 4096,
) -> dict:
    """The replay benchmark of issue 6: every capture of `capture_dir` replayed as fast as
    possible through the whole service (reader, flow table, worker with the model, SQLite)."""
    from netmamba.cli.serve import default_threads
    from netmamba.serve.flowtable import MeterFlowTable, table_config_for
    from netmamba.serve.model import checkpoint_info, model_spec
    from netmamba.serve.replay import CaptureFiles, Replay
    from netmamba.serve.service import ModelSpec, ReplaySource, ServeConfig, Service
    from netmamba.serve.sqlite_store import SQLiteStore

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        if capture_dir is None:
            capture_dir = DATA if DATA.is_dir() else generated_corpus(tmp / "corpus")
        default = REPO / "src" / "netmamba" / "default_model"
        if config_name == "default" and (default / "checkpoint.json").is_file():
            model_path, model_note = default, "the built-in default model"
        else:
            preset = "fast" if config_name in ("default", "free") else config_name
            model_path = benchmark_checkpoint(tmp / "model", preset)
            model_note = f"a `{preset}` preset classifier with random weights"
        info = checkpoint_info(str(model_path))
        threads = threads or default_threads()
        spec = model_spec(info, threads=threads, chunk=chunk)
        if config_name == "free":  # the packet path's ceiling: a model that costs nothing
            spec = ModelSpec("free", BENCH_LABELS[:10], info.array_spec(), free_predict_factory)
            model_note = "none (a stand-in that costs nothing)"
        table = MeterFlowTable(
            info.flow,
            info.data_features,
            info.debias,
            table_config_for(info),
        )
        files = CaptureFiles(str(capture_dir))
        source = ReplaySource(Replay(files), str(capture_dir))
        config = ServeConfig(
            store=str(tmp / "results.sqlite"),
            http=False,
            overload="block",
            log_interval_s=0,
            max_batch=batch,
            queue_flows=queue,
        )
        service = Service(config, source, table, spec)
        service.start()
        cpu = time.process_time()
        if profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            summary = profiler.runcall(service.run, install_signals=False)
            stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime")
            stats.print_stats(25)
        else:
            summary = service.run(install_signals=False)
        cpu = time.process_time() - cpu
        with SQLiteStore(tmp / "results.sqlite") as store:
            stored = store.count()
        latencies = np.array(summary.batch_latencies_s or [0.0]) * 1000
        result = {
            "captures": str(capture_dir),
            "model": model_note,
            "config": config_name,
            "threads": threads,
            "max_batch": batch,
            "chunk": chunk,
            "queue": queue,
            "seconds": round(summary.seconds, 3),
            "packet_process_cpu_s": round(cpu, 2),
            "worker_cpu_s": round(summary.worker_cpu_s, 2),
            "packets": summary.packets,
            "bytes": summary.bytes,
            "flows_seen": summary.flows_seen,
            "flows_classified": summary.flows_classified,
            "flows_too_short": summary.flows_too_short,
            "flows_other_protocol": summary.flows_other_protocol,
            "stored": stored,
            "mean_batch": round(
                summary.flows_classified / max(1, len(summary.batch_latencies_s)), 1
            ),
            "mbps": round(summary.mbps, 2),
            "pps": round(summary.pps),
            "flows_per_s": round(summary.flows_per_s, 1),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "drops": summary.flows_dropped,
            "lost_flows": max(
                summary.flows_lost,
                summary.flows_seen
                - summary.flows_too_short
                - summary.flows_other_protocol
                - stored,
            ),
        }
        if check:
            result["agree_with_classify"] = compare_with_classify(
                capture_dir, model_path, tmp / "results.sqlite"
            )
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_with_classify(capture_dir: Path, model: Path, results: Path) -> float:
    """Share of `netmamba classify`'s labelled flows stored by the service with its label."""
    import sqlite3

    from netmamba.classify import classify_captures

    flows = classify_captures([capture_dir], model=model).flows
    flows = flows[flows["status"] == "ok"]
    with sqlite3.connect(results) as db:
        rows = db.execute(
            "SELECT source, src_ip, src_port, dst_ip, dst_port, protocol, first_ts, label "
            "FROM flows"
        ).fetchall()
    served = {(r[0], r[1], r[2], r[3], r[4], r[5], round(r[6], 5)): r[7] for r in rows}
    first = flows["first_seen"].astype("int64") / 1e9
    same = 0
    for row, t in zip(flows.itertuples(), first, strict=True):
        key = (row.capture, row.src_ip, row.src_port, row.dst_ip, row.dst_port, row.protocol)
        same += served.get((*key, round(t, 5))) == row.label
    return round(same / max(1, len(flows)), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture_dir", nargs="?", type=Path, default=None)
    parser.add_argument(
        "--config",
        choices=("default", "fast", "paper", "free"),
        default="default",
        help="the built-in default model (a random `fast` one until it exists), a preset, or "
        "free: a model that costs nothing (the packet path's ceiling)",
    )
    parser.add_argument("--threads", type=int, default=None, help="model threads")
    parser.add_argument("--batch", type=int, default=256, help="flows per batch at most")
    parser.add_argument(
        "--check", action="store_true", help="also compare the labels with netmamba classify"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the packet thread")
    parser.add_argument("--chunk", type=int, default=None, help="flows per model call")
    parser.add_argument("--queue", type=int, default=4096, help="ready flows queued at most")
    parser.add_argument("--capture-rate", action="store_true")
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plumbing", action="store_true")
    parser.add_argument("--flows", type=int, default=50_000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    if args.capture_rate:
        result = capture_rate(args.packets, args.repeats)
    elif args.plumbing:
        result = plumbing(args.flows)
    else:
        result = replay_benchmark(
            args.capture_dir,
            args.config,
            args.threads,
            args.batch,
            args.check,
            args.profile,
            args.chunk,
            args.queue,
        )
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
