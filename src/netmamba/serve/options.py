"""Command-line options of `netmamba serve`, and the configurations and source they describe.

`netmamba.cli.serve` adds these options, builds the model and flow table, and calls
`Service`; everything about packet sources, queues, the store and HTTP lives here, so the verb
stays a few lines. Errors are `OptionError`s whose message says what to change.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from netmamba.serve.service import ServeConfig

EXAMPLES = """\
netmamba serve --interface eth0                      live, dashboard on http://127.0.0.1:8000/
  netmamba serve -i any --filter 'tcp or udp' --model runs/iot --port 9000
  tcpdump -i eth0 -w - | netmamba serve --read -       a capture stream on standard input
  netmamba serve --read trace.pcapng --speed 1         replayed at its recorded pace
  netmamba serve --read captures/ --exit-when-done     every capture of a folder, at full speed
  netmamba serve -i eth0 --redis redis://localhost:6379/0 --retention 12h --classify-within 3s"""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class OptionError(ValueError):
    """Options that do not go together or cannot be used; the message says what to change."""


def duration_s(text: str) -> float:
    """Seconds from "90", "90s", "15m", "12h" or "7d"."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h or 7d")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("packets (one of)")
    what = source.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "-i", "--interface", metavar="IFACE", help="capture live from IFACE ('any': all)"
    )
    what.add_argument(
        "-r",
        "--read",
        metavar="CAPTURE",
        help="replay a pcap/pcapng(.gz) file, every capture in a folder, or '-' (stdin)",
    )
    source.add_argument(
        "--speed",
        type=float,
        metavar="N",
        help="replay at N times the recorded pace (1 = as recorded); default: as fast as possible",
    )
    source.add_argument(
        "-f",
        "--filter",
        dest="bpf",
        default="",
        metavar="EXPR",
        help="live capture filter, tcpdump syntax (e.g. 'tcp port 443')",
    )
    source.add_argument(
        "--capture-method",
        choices=("ring", "recvmsg"),
        default="ring",
        help="AF_PACKET mmap ring (default, faster) or one recvmsg per packet",
    )
    source.add_argument("--promiscuous", action="store_true", help="capture frames for others too")

    model = parser.add_argument_group("model and inference")
    model.add_argument(
        "-m",
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="a built-in model name (default: %(default)s) or a fine-tuned checkpoint or run "
        "folder; flows are assembled with the settings it was trained with",
    )
    model.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads of the model (default: one per core)",
    )
    model.add_argument(
        "--include-short",
        action="store_true",
        help="also classify flows shorter than any the model was trained on (else counted)",
    )
    model.add_argument("--batch", type=int, default=256, metavar="N", help="flows per batch, max")
    model.add_argument(
        "--max-wait-ms",
        type=float,
        default=50.0,
        metavar="MS",
        help="how long a flow waits for a batch to fill (default 50)",
    )
    model.add_argument(
        "--queue",
        type=int,
        default=4096,
        metavar="N",
        help="ready flows waiting for inference, at most (default 4096)",
    )
    model.add_argument(
        "--overload",
        choices=("auto", "drop", "block"),
        default="auto",
        help="when the queue is full: drop and count (auto: live) or wait (auto: replays)",
    )

    table = parser.add_argument_group("flow table")
    table.add_argument(
        "--classify-within",
        type=duration_s,
        metavar="AGE",
        help="classify a flow this old (e.g. 3s) with the packets it has, like the paper's "
        "fixed window (default: when it has every packet the model reads, or when it ends)",
    )
    table.add_argument(
        "--max-active-flows",
        type=int,
        metavar="N",
        help="flows held at most; the least recently active is classified and dropped "
        "(default: the model's flow settings, 1000000)",
    )

    results = parser.add_argument_group("results")
    results.add_argument(
        "--store",
        default="netmamba-results.sqlite",
        metavar="FILE",
        help="SQLite file for the results (default netmamba-results.sqlite)",
    )
    results.add_argument(
        "--redis",
        metavar="URL",
        help="store results in Redis instead, e.g. redis://localhost:6379/0",
    )
    results.add_argument(
        "--retention",
        type=duration_s,
        default=7 * 86400.0,
        metavar="AGE",
        help="delete results older than AGE (e.g. 12h, 7d; 0 = keep; default 7d)",
    )
    results.add_argument(
        "--max-flows",
        type=int,
        default=1_000_000,
        metavar="N",
        help="keep at most N results (0 = no limit; default 1000000)",
    )

    http = parser.add_argument_group("HTTP API and dashboard")
    http.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)",
    )
    http.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    http.add_argument("--no-http", action="store_true", help="no API or dashboard")
    http.add_argument(
        "--exit-when-done",
        action="store_true",
        help="after a replay ends, exit instead of serving its results",
    )


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig the options describe (OptionError for bad combinations)."""
    if args.interface is not None and args.speed is not None:
        raise OptionError("--speed paces a replay (--read); a live capture runs at the link's pace")
    if args.read is not None and args.bpf:
        raise OptionError(
            "--filter applies to live capture; filter a file with tcpdump first: "
            f"tcpdump -r {args.read} -w - '{args.bpf}' | netmamba serve --read -"
        )
    if args.speed is not None and args.speed < 0:
        raise OptionError("--speed must be positive (0 = as fast as possible)")
    for name in ("batch", "queue"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name} must be at least 1")
    if args.max_flows < 0:
        raise OptionError("--max-flows must be >= 0 (0 = no limit)")
    if not 0 <= args.port <= 65535:
        raise OptionError(f"--port must be 0-65535, not {args.port}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise OptionError("--threads must be at least 1")
    max_active = getattr(args, "max_active_flows", None)
    if max_active is not None and max_active < 1:
        raise OptionError("--max-active-flows must be at least 1")
    within = getattr(args, "classify_within", None)
    if within is not None and within <= 0:
        raise OptionError("--classify-within must be a positive duration, e.g. 3s")
    return ServeConfig(
        max_batch=args.batch,
        max_wait_ms=args.max_wait_ms,
        queue_flows=args.queue,
        overload=args.overload,
        store=args.redis or args.store,
        max_age_s=args.retention or None,
        max_flows=args.max_flows or None,
        host=args.host,
        port=args.port,
        http=not args.no_http,
        keep_serving=not args.exit_when_done,
    )


def capture_config(args: argparse.Namespace) -> Any:
    """The LiveCaptureConfig of a live capture, or None for a replay."""
    if args.interface is None:
        return None
    from netmamba.capture.live import LiveCaptureConfig

    return LiveCaptureConfig(
        interface=args.interface,
        bpf=args.bpf,
        method=args.capture_method,
        promiscuous=args.promiscuous,
    )


def flow_table_config(args: argparse.Namespace, info: Any) -> Any:
    """The FlowTableConfig of the options, for the model `info` (a CheckpointInfo)."""
    from netmamba.serve.flowtable import table_config_for

    return table_config_for(
        info,
        include_short=bool(getattr(args, "include_short", False)),
        classify_within_s=getattr(args, "classify_within", None),
        max_flows=getattr(args, "max_active_flows", None),
    )


def open_source(args: argparse.Namespace, max_batch: int = 256) -> Any:
    """The packet source the options name: a LiveSource, or a ReplaySource over the reader.

    Raises the capture's own errors (CaptureError, CapturePermissionError, FilterError), whose
    messages say what to do."""
    from netmamba.serve.service import LiveSource, ReplaySource

    live = capture_config(args)
    if live is not None:
        from netmamba.capture.live import LiveCapture

        return LiveSource(LiveCapture(live))
    from netmamba.serve.replay import CaptureFiles, Replay

    name = "stdin" if args.read == "-" else args.read
    return ReplaySource(Replay(CaptureFiles(args.read), args.speed, max_batch=max_batch), name)
