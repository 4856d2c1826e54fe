"""`netmamba finetune`: train a classifier on a labelled dataset, test it, write the report."""

from __future__ import annotations

import argparse
import time

from netmamba.cli.pretrain import add_training_options, is_main_process, settings

HELP = "fine-tune a classifier on a labelled dataset; best checkpoint, report, baseline beside"
EXAMPLE = """netmamba finetune data/iot -o runs/iot --from runs/pre --epochs 30

  --from: a pre-training run (runs/pre), any checkpoint folder, the authors' fuse3_mamba.pth,
  or nothing (from scratch, --config paper|fast). Defaults are SPEC section 5: LDA loss,
  label smoothing 0.1, drop path 0.1, AdamW with layer-wise decay 0.75, blr 2e-3, warm-up 5
  epochs then cosine, 120 epochs, best checkpoint by validation macro F1.
  few-shot: --fraction 0.1     linear probe: --linear-probe     plain CE: --loss ce
  writes RUN_DIR/best/ (calibrated, with labels and data settings), metrics.json, report.html;
  then: netmamba evaluate RUN_DIR other-data -o eval/  ·  netmamba classify ... -m RUN_DIR"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="a prepared, labelled dataset folder")
    p.add_argument(
        "--from",
        dest="init",
        metavar="CHECKPOINT",
        help="start from: a pre-training run or checkpoint folder, the authors' .pth, or "
        "(default) nothing: train from scratch",
    )
    add_training_options(p, "finetune")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--epochs", type=float, metavar="N", help="epochs (120); --steps overrides")
    g.add_argument("--loss", choices=("lda", "ce"), help="LDA (default) or cross-entropy")
    g.add_argument(
        "--defer-reweight",
        type=int,
        metavar="EPOCH",
        help="LDA: class weights switched on from this (0-based) epoch",
    )
    g.add_argument("--label-smoothing", type=float, metavar="EPS", help="(0.1)")
    g.add_argument("--drop-path", type=float, metavar="P", help="stochastic depth (0.1)")
    g.add_argument("--layer-decay", type=float, metavar="D", help="layer-wise lr decay (0.75)")
    g.add_argument("--warmup-epochs", type=float, metavar="N", help="(5)")
    g.add_argument("--linear-probe", action="store_true", help="freeze the encoder")
    g.add_argument("--fraction", type=float, metavar="F", help="few-shot: train on this share")
    g.add_argument(
        "--metric",
        choices=("macro_f1", "accuracy", "weighted_f1", "loss"),
        help="validation metric that picks the kept checkpoint (macro_f1)",
    )
    g.add_argument("--no-baseline", action="store_true", help="skip the classical baseline")


def run(args: argparse.Namespace) -> int:
    from netmamba.cli import CommandError
    from netmamba.evaluate.metrics import format_metrics_table
    from netmamba.evaluate.run import results_table
    from netmamba.models import PRESETS
    from netmamba.models.weights import CheckpointError
    from netmamba.train.finetune import FinetuneConfig, finetune
    from netmamba.train.rundir import TrainError

    for option, key in (
        ("epochs", "train.epochs"),
        ("loss", "loss.kind"),
        ("defer_reweight", "loss.reweight_from_epoch"),
        ("label_smoothing", "loss.label_smoothing"),
        ("drop_path", "model.drop_path"),
        ("layer_decay", "optim.layer_decay"),
        ("warmup_epochs", "warmup_epochs"),
        ("fraction", "fraction"),
        ("metric", "select_metric"),
    ):
        value = getattr(args, option)
        if value is not None:
            args.set.append(f"{key}={value}")
    if args.linear_probe:
        args.set.append("linear_probe=true")
    if args.no_baseline:
        args.set.append("baseline=null")
    if args.epochs is not None and args.steps is None:
        args.set.append("train.steps=0")
    config = settings(args, FinetuneConfig, tuple(PRESETS))
    started = time.perf_counter()
    try:
        result = finetune(
            args.dataset,
            args.output,
            config,
            init=args.init,
            resume=args.resume,
            overwrite=args.overwrite,
            device=args.device,
            threads=args.threads,
            progress=not args.quiet,
        )
    except (TrainError, CheckpointError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    if result is None or not is_main_process():
        return 0
    metrics = result.metrics
    if metrics.get("model"):
        print(format_metrics_table(results_table(metrics)))
    best = metrics.get("best", {})
    print(
        f"fine-tuned {metrics['steps']} steps in {time.perf_counter() - started:.1f} s; kept "
        f"epoch {best.get('epoch')} ({best.get('metric')} {best.get('value', float('nan')):.4f}); "
        f"model: {result.checkpoint}; report: {result.run_dir / 'report.html'}"
    )
    return 0
