"""`netmamba classify CAPTURE...`: label every flow of packet captures with a fine-tuned model."""

from __future__ import annotations

import argparse
import sys

HELP = "label every flow of packet captures (pcap, pcapng, .gz) with a fine-tuned model"
EXAMPLE = """netmamba classify examples/example.pcap
  netmamba classify captures/ --model runs/iot -o flows.csv       # .csv .jsonl .parquet
  netmamba classify big.pcapng --threads 2 --batch-size 512 -o flows.parquet"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or folders")
    parser.add_argument(
        "-m",
        "--model",
        default="default",
        help="a built-in model name (default: %(default)s) or the path of a fine-tuned "
        "checkpoint or run folder",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write every flow to FILE; the format follows the extension: .csv, .jsonl, "
        ".parquet (default: a table on the terminal)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="flows per model call")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument(
        "--include-short",
        action="store_true",
        help="also classify flows shorter than any the model was trained on, or of protocols "
        "its training data left out (listed as too_short / other_protocol without a label "
        "otherwise)",
    )
    parser.add_argument(
        "--max-rows",
        type=int,
        default=200,
        help="flows shown on the terminal without -o (default %(default)s; 0 = all)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from netmamba.classify import (
        OUTPUT_FORMATS,
        ModelNotFoundError,
        classify_captures,
        format_table,
        load_predictor,
        summarize,
        write_result,
    )
    from netmamba.cli import CommandError
    from netmamba.models.weights import CheckpointError

    if args.output and not any(args.output.lower().endswith(ext) for ext in OUTPUT_FORMATS):
        raise CommandError(
            f"{args.output}: unknown output format; end the name with one of "
            + ", ".join(sorted(OUTPUT_FORMATS))
        )
    if args.batch_size <= 0:
        raise CommandError("--batch-size must be positive")
    try:
        predictor = load_predictor(args.model, threads=args.threads)
    except (ModelNotFoundError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None

    bar = tqdm(  # disable=None: a bar on a terminal only, never in a pipe or a log
        desc="classifying",
        unit=" packets",
        disable=True if args.quiet else None,
        file=sys.stderr,
        leave=False,
    )

    def progress(packets: int, flows: int) -> None:
        bar.update(packets - bar.n)
        bar.set_postfix(flows=flows, refresh=False)

    try:
        result = classify_captures(
            args.captures,
            predictor,
            batch_size=args.batch_size,
            include_short=args.include_short,
            progress=progress,
        )
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    finally:
        bar.close()

    for report in result.unreadable:
        reason = report.stats.error or "no IP packets in it"
        print(f"netmamba classify: error: {report.capture.path}: {reason}", file=sys.stderr)
    for report in result.damaged:
        print(
            f"netmamba classify: warning: {report.capture.path}: read in part "
            f"({report.stats.describe()}); the flows before the damage are classified",
            file=sys.stderr,
        )
    if not result.reports:
        raise CommandError("no capture files found in " + ", ".join(args.captures))

    flows = result.flows
    if args.output:
        write_result(flows, args.output)
        if not args.quiet:
            print(f"{len(flows)} flows written to {args.output}", file=sys.stderr)
    else:
        print(format_table(flows, max_rows=args.max_rows or None))
    if not args.quiet and len(flows):
        model_name = predictor.metadata.get("name") or str(predictor.path)
        print(f"\n{len(flows)} flows, model {model_name}:", file=sys.stderr)
        print(summarize(flows), file=sys.stderr)
    return 1 if result.unreadable else 0
