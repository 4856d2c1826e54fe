"""`netmamba export MODEL -o FILE`: a fine-tuned model for deployment without netmamba's models."""

from __future__ import annotations

import argparse
import sys

HELP = "export a fine-tuned model to ONNX or torch.export (probabilities, unknown flag built in)"
EXAMPLE = """netmamba export runs/iot -o iot.onnx          # + iot.json: labels, inputs, settings
  netmamba export default -o default.pt2          # a torch.export program
  netmamba export runs/iot -o iot.onnx --check data/iot   # compare with netmamba on a dataset"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="built-in model name or checkpoint/run folder"
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    parser.add_argument(
        "--format",
        choices=("onnx", "pt2"),
        help="default: onnx for a .onnx file, else pt2 (torch.export)",
    )
    parser.add_argument(
        "--check",
        metavar="DATASET",
        help="afterwards, compare the exported model's predictions with netmamba's on the test "
        "split of a prepared dataset",
    )


def run(args: argparse.Namespace) -> int:
    from netmamba.classify import ModelNotFoundError, load_predictor
    from netmamba.cli import CommandError
    from netmamba.export import ExportError, export_model, verify_export
    from netmamba.models.weights import CheckpointError

    try:
        predictor = load_predictor(args.model, device="cpu")
        path = export_model(predictor, args.output, args.format)
    except (ModelNotFoundError, CheckpointError, ExportError) as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {path} and {path.with_suffix('.json')}", file=sys.stderr)
    if args.check:
        from netmamba.dataset import load_dataset

        try:
            dataset = load_dataset(args.check, "test")
        except (OSError, ValueError) as exc:
            raise CommandError(f"--check {args.check}: {exc}") from None
        report = verify_export(path, predictor, dataset.arrays)
        print(
            f"checked on {report['flows']} flows: labels differ on {report['label_mismatch']:.2%},"
            f" unknown flags on {report['unknown_mismatch']:.2%}, largest probability "
            f"difference {report['max_prob_diff']:.2g}",
            file=sys.stderr,
        )
        if report["label_mismatch"] > 0:
            return 1
    return 0
