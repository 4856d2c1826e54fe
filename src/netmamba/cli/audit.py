"""`netmamba audit`: the test score with each de-biasing switch flipped and each input blanked."""

from __future__ import annotations

import argparse
import sys

HELP = "shortcut audit: test score with each de-biasing switch flipped and each input blanked"
EXAMPLE = """netmamba audit runs/iot data/iot -o audit/iot

  prints a table of scores and drops from the as-trained score; with -o also writes
  metrics.json and report.html. Flipping switches needs a dataset prepared with raw bytes
  (the default; not --no-raw-bytes)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="fine-tuning run or checkpoint folder")
    p.add_argument("dataset", metavar="DATASET", help="a prepared, labelled dataset folder")
    p.add_argument("-o", "--output", metavar="DIR", help="write metrics.json and report.html")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="(test)")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: a GPU if any)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads")


def run(args: argparse.Namespace) -> int:
    from netmamba.cli import CommandError
    from netmamba.evaluate.audit import audit, format_audit_table, write_audit
    from netmamba.evaluate.baseline import BaselineConfig
    from netmamba.evaluate.run import EvaluationError
    from netmamba.models.weights import CheckpointError

    def progress(condition: str) -> None:
        if not args.quiet:
            print(f"scored: {condition}", file=sys.stderr)

    try:
        result = audit(
            args.checkpoint,
            args.dataset,
            split=args.split,
            baseline=None if args.no_baseline else BaselineConfig(),
            device=args.device,
            threads=args.threads,
            progress=progress,
        )
    except (EvaluationError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None
    print(format_audit_table(result))
    for key, note in result["notes"].items():
        print(f"note: {key}: {note}")
    if args.output:
        metrics, report = write_audit(args.output, result)
        print(f"wrote {metrics} and {report}")
    return 0
