"""`netmamba experiment`: run an experiment file (datasets x variants) into one results table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run an experiment file (datasets, variants, settings) into one results table"
EXAMPLE = """netmamba experiment experiments/lda.yaml -o results/lda --var DATASET=data/ndpi

  experiments/ holds the paper's tables: main.yaml, modality.yaml, bytes.yaml, lda.yaml,
  fewshot.yaml, unknown.yaml, timesplit.yaml (each names the variables to set), and tiny.yaml.
  --dry-run prints the runs without starting them. Running again reuses finished runs and
  resumes interrupted ones. Results: OUT/results.md, results.csv, results.json."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.yaml", help="experiment file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable of the file (repeatable); else the environment, else its default",
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs, start nothing")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: a GPU if any)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads")


def run(args: argparse.Namespace) -> int:
    from netmamba.cli import CommandError
    from netmamba.evaluate.run import EvaluationError
    from netmamba.experiment import (
        ExperimentError,
        describe_plan,
        load_experiment,
        plan,
        run_experiment,
    )
    from netmamba.models.weights import CheckpointError
    from netmamba.train.rundir import TrainError

    variables = {}
    for assignment in args.var:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise CommandError(f"--var {assignment!r}: expected NAME=VALUE")
        variables[name.strip()] = value
    try:
        exp = load_experiment(args.file, variables)
        jobs = plan(exp, args.output)
    except ExperimentError as exc:
        raise CommandError(str(exc)) from None
    print(describe_plan(exp, jobs))
    if args.dry_run:
        return 0
    try:
        run_experiment(
            exp,
            args.output,
            device=args.device,
            threads=args.threads,
            progress=not args.quiet,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (ExperimentError, TrainError, EvaluationError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None
    print(Path(args.output, "results.md").read_text().rstrip())
    print(f"wrote {args.output}/results.md, results.csv and results.json")
    return 0
