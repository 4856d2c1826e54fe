"""`netmamba prepare`: capture files -> a dataset folder for training and evaluation."""

from __future__ import annotations

import argparse
import sys
import time

HELP = "turn packet captures into a dataset (flows -> arrays, labels, splits)"
EXAMPLE = """netmamba prepare captures/ -o data/iot --labels macs.csv --workers 2

labels: folder per class (default: captures/<class>/**/*.pcap), --labels FILE (CSV/TSV mapping a
capture file, a flow 5-tuple or a MAC address to a label), or --no-labels (pre-training).
  netmamba prepare ndpi/pcap -o data/ndpi --labels ndpi/labels-nfstream.tsv \\
      --label-column application_category_name --label-filter application_is_guessed=0 \\
      --min-packets 3 --mode bidirectional --split file
big corpora, one job per shard, then merge:
  netmamba prepare corpus/ -o part0 --shard 0/2 ; netmamba prepare corpus/ -o part1 --shard 1/2
  netmamba prepare --merge part0 part1 -o data/corpus"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="capture files or folders")
    p.add_argument("-o", "--output", required=True, metavar="DATASET", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--config",
        metavar="JSON",
        help="settings file (a PrepareConfig as JSON, "
        "e.g. the 'config' of a manifest); options given here override it",
    )

    g = p.add_argument_group("labels")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--labels", metavar="FILE", help="CSV/TSV: file, flow 5-tuple or MAC -> label")
    x.add_argument("--no-labels", action="store_true", help="unlabelled (pre-training) data")
    g.add_argument(
        "--label-column",
        metavar="NAME",
        help="column of --labels holding the label (default: label)",
    )
    g.add_argument(
        "--label-filter",
        action="append",
        metavar="COL=VALUE",
        help="keep only label rows with COL=VALUE (or COL!=VALUE); repeatable",
    )

    g = p.add_argument_group("flows")
    g.add_argument(
        "--mode",
        choices=("unidirectional", "bidirectional"),
        help="flows per direction (default, the paper's) or sessions",
    )
    g.add_argument("--idle-timeout", type=float, metavar="S", help="default 120")
    g.add_argument("--max-duration", type=float, metavar="S", help="default 1800")
    g.add_argument("--max-flows", type=int, metavar="N", help="open flows at most (1000000)")

    g = p.add_argument_group("sample geometry")
    g.add_argument("--packets", type=int, metavar="M_B", help="packets with bytes (5)")
    g.add_argument("--header-bytes", type=int, metavar="N_H", help="header bytes per packet (80)")
    g.add_argument("--payload-bytes", type=int, metavar="N_P", help="payload bytes (240)")
    g.add_argument("--seq-len", type=int, metavar="M_SEQ", help="packets with size and time (20)")
    g.add_argument("--mtu", type=int, help="sizes clipped at (1500)")

    g = p.add_argument_group("de-biasing")
    x = g.add_mutually_exclusive_group()
    x.add_argument(
        "--debias",
        action="append",
        metavar="NAME=VALUE",
        help="set one switch, e.g. ports=zero, tcp_window=on; repeatable (see "
        "netmamba.debias for the switches and the default set)",
    )
    x.add_argument("--no-debias", action="store_true", help="keep the bytes as captured")
    g.add_argument(
        "--no-raw-bytes",
        action="store_true",
        help="do not keep the bytes before de-biasing (smaller; no audit)",
    )

    g = p.add_argument_group("cleaning and sampling")
    g.add_argument(
        "--protocol-filter",
        choices=("paper", "tcp_udp", "none"),
        help="paper (default): TCP/UDP without DNS, mDNS, LLMNR, NBNS, DHCP, NTP",
    )
    g.add_argument("--min-packets", type=int, metavar="N", help="drop shorter flows (1)")
    g.add_argument("--max-per-class", type=int, metavar="N", help="cap per class, 0 = none (2000)")
    g.add_argument("--min-per-class", type=int, metavar="N", help="drop smaller classes (50)")
    g.add_argument(
        "--duplicates",
        choices=("group", "drop"),
        help="identical samples: same split side (default) or kept once",
    )

    g = p.add_argument_group("split")
    g.add_argument(
        "--split",
        choices=("session", "flow", "file", "time"),
        help="grouping: session (default), flow (paper), capture file, chronological",
    )
    g.add_argument("--ratios", metavar="T:V:T", help="train:valid:test (default 8:1:1)")
    g.add_argument("--seed", type=int, help="sampling and split seed (0)")

    g = p.add_argument_group("running")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="processes (1)")
    g.add_argument(
        "--shard",
        metavar="I/N",
        help="only the I-th of N parts of the captures: writes a partial folder to --merge later",
    )
    g.add_argument(
        "--merge",
        action="store_true",
        help="INPUTs are partial folders of --shard runs: merge them into a dataset",
    )


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from netmamba.config import ConfigError
    from netmamba.dataset import PrepareConfig
    from netmamba.debias import DebiasConfig

    if args.config:
        try:
            config = PrepareConfig.load(args.config)
        except (OSError, ValueError) as exc:
            raise _error(f"{args.config}: cannot read the settings: {exc}") from None
    else:
        config = PrepareConfig()

    def set_(section: str, **values: object) -> None:
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            setattr(config, section, getattr(config, section).replace(**given))

    try:
        if args.labels:
            set_("labels", source="file", path=args.labels)
        elif args.no_labels:
            set_("labels", source="none", path=None)
        set_("labels", column=args.label_column, filters=args.label_filter)
        set_(
            "flow",
            mode=args.mode,
            idle_timeout=args.idle_timeout,
            max_duration=args.max_duration,
            max_flows=args.max_flows,
        )
        set_(
            "features",
            n_packets=args.packets,
            header_bytes=args.header_bytes,
            payload_bytes=args.payload_bytes,
            seq_len=args.seq_len,
            mtu=args.mtu,
        )
        if args.no_debias:
            config.debias = DebiasConfig.none()
        for assignment in args.debias or ():
            config.debias = config.debias.set(assignment)
        set_(
            "cleaning",
            protocol_filter=args.protocol_filter,
            min_packets=args.min_packets,
            min_per_class=args.min_per_class,
            duplicates=args.duplicates,
        )
        if args.max_per_class is not None:
            config.cleaning = config.cleaning.replace(max_per_class=args.max_per_class or None)
        ratios = None
        if args.ratios:
            try:
                ratios = tuple(float(r) for r in args.ratios.replace(",", ":").split(":"))
            except ValueError:
                raise _error(
                    f"--ratios {args.ratios!r}: expected three numbers like 8:1:1"
                ) from None
            if len(ratios) != 3:
                raise _error(f"--ratios {args.ratios!r}: expected three numbers like 8:1:1")
        set_("split", strategy=args.split, ratios=ratios, seed=args.seed)
        if args.no_raw_bytes:
            config.keep_raw_bytes = False
        # re-validate the sections (replace() runs __post_init__ checks)
        config = PrepareConfig.from_dict(config.to_dict())
    except ConfigError as exc:
        raise _error(str(exc)) from None
    return config


def _error(message: str, status: int = 2):  # type: ignore[no-untyped-def]
    from netmamba.cli import CommandError

    return CommandError(message, status)


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise _error(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise _error(f"--shard {text}: expected I/N with 0 <= I < N")
    return i, n


def run(args: argparse.Namespace) -> int:
    from netmamba.dataset import PrepareError, merge_partials, prepare
    from netmamba.labels import LabelError

    started = time.perf_counter()
    try:
        if args.merge:
            result = merge_partials(args.inputs, args.output, overwrite=args.overwrite)
        else:
            config = _config(args)
            if args.workers < 1:
                raise _error("--workers must be at least 1")
            result = prepare(
                args.inputs,
                args.output,
                config,
                workers=args.workers,
                shard=_shard(args.shard),
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
    except LabelError as exc:
        raise _error(str(exc)) from None
    except PrepareError as exc:
        if exc.usage:
            raise _error(str(exc)) from None
        raise _error(f"nothing usable: {exc}", status=1) from None
    elapsed = time.perf_counter() - started
    _report_files(result.output)
    print(result.summary())
    kind = "partial result" if result.partial else "dataset"
    print(f"wrote {kind} {result.output} in {elapsed:.1f} s")
    return 0


def _report_files(output) -> None:  # type: ignore[no-untyped-def]
    """Name the captures that could not be read whole (never silent)."""
    import json

    path = output / "captures.json"
    if path.exists():
        reports = json.loads(path.read_text())
    else:
        reports = json.loads((output / "partial.json").read_text())["reports"]
    errors = [r for r in reports if r["stats"]["error"]]
    for r in errors[:10]:
        print(f"warning: {r['path']}: {r['stats']['error']}", file=sys.stderr)
    if len(errors) > 10:
        print(f"warning: {len(errors) - 10} more captures with errors: see {path}", file=sys.stderr)
