"""`netmamba evaluate`: a fine-tuned model on a prepared dataset -> metrics.json + report.html."""

from __future__ import annotations

import argparse
import time

HELP = "evaluate a fine-tuned model on a dataset: metrics, baseline, calibration, unknown, speed"
EXAMPLE = """netmamba evaluate runs/iot data/iot-2 -o eval/iot-2 --unknown data/iot-unseen

  RUN_OR_CHECKPOINT: a fine-tuning run folder (its best model) or a checkpoint folder.
  The dataset must fit the model: the same flow mode and labels it knows (by name); a larger
  geometry is cropped, other de-biasing is redone from the raw bytes when the dataset kept them.
  --unknown: a dataset of classes the model never saw (AUROC, FPR at 95% TPR).
  writes EVAL_DIR/metrics.json (accuracy, macro_f1, weighted_f1, ... at the top) and report.html"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint")
    p.add_argument("dataset", metavar="DATASET", help="a prepared, labelled dataset folder")
    p.add_argument("-o", "--output", required=True, metavar="EVAL_DIR", help="output folder")
    p.add_argument("--unknown", metavar="DATASET", help="flows of classes the model never saw")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="(test)")
    p.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")
    p.add_argument(
        "--batch-sizes",
        default="1,8,64,256",
        metavar="LIST",
        help="throughput batch sizes (1,8,64,256); 'none' to skip the measurement",
    )
    p.add_argument("--seconds", type=float, default=1.0, help="time per throughput point (1)")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: a GPU if any)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), help="autocast (default float32)")


def batch_sizes(text: str) -> tuple[int, ...] | None:
    from netmamba.cli import CommandError

    if text.strip().lower() in ("none", "0", ""):
        return None
    try:
        sizes = tuple(int(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise CommandError(f"--batch-sizes {text!r}: expected numbers like 1,8,64") from None
    if min(sizes) < 1:
        raise CommandError("--batch-sizes: every size must be at least 1")
    return sizes


def run(args: argparse.Namespace) -> int:
    from netmamba.cli import CommandError
    from netmamba.evaluate.baseline import BaselineConfig
    from netmamba.evaluate.metrics import format_metrics_table
    from netmamba.evaluate.run import EvaluationError, evaluate, results_table
    from netmamba.models.weights import CheckpointError

    started = time.perf_counter()
    try:
        results = evaluate(
            args.checkpoint,
            args.dataset,
            args.output,
            unknown=args.unknown,
            split=args.split,
            baseline=None if args.no_baseline else BaselineConfig(),
            batch_sizes=batch_sizes(args.batch_sizes),
            throughput_seconds=args.seconds,
            device=args.device,
            threads=args.threads,
            dtype=args.dtype,
        )
    except (EvaluationError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None
    print(format_metrics_table(results_table(results)))
    if results.get("calibration"):
        c = results["calibration"]
        print(
            f"calibration: T = {c['temperature']:.3f}, ECE {c['ece_before']:.4f} -> "
            f"{c['ece_after']:.4f}"
        )
    if results.get("unknown"):
        for kind, s in results["unknown"]["scores"].items():
            print(
                f"unknown classes, {kind}: AUROC {s['auroc']:.4f}, "
                f"FPR at 95% TPR {s['fpr_at_95_tpr']:.4f}"
            )
    if results.get("throughput"):
        rows = results["throughput"]["results"]
        print(
            "throughput: "
            + ", ".join(f"batch {r['batch_size']}: {r['flows_per_s']:,.0f} flows/s" for r in rows)
        )
    print(
        f"wrote {args.output}/metrics.json and report.html in {time.perf_counter() - started:.1f} s"
    )
    return 0
