"""The real-data check of issue 4: from the captures of ../shared/data to reports, on a CPU.

    python scripts/real_data_check.py -o /tmp/real --budget short      # minutes: proves it runs
    python scripts/real_data_check.py -o /tmp/real --budget full       # the figures to quote

Stages (each a `netmamba` command run as a user would type it, timed):
  1. prepare   pre-training corpus: every capture of both folders, no labels
               nDPI categories: confirmed labels (application_is_guessed=0), flows of 3+ packets,
               classes of at least --min-per-class flows, split grouped by capture file
               IoT Sentinel device types: labels by device MAC (scripts/iot_sentinel_labels.py),
               split grouped by capture file (one setup run never on both sides)
  2. pretrain  the `fast` configuration on the unlabelled corpus
  3. finetune  nDPI and IoT Sentinel from the pre-trained model (LDA loss on a cosine head, the
               GBDT baseline on the same flows and split beside it; --also-ce: plain CE too)
  4. evaluate  each fine-tuned model on its test split (calibration, throughput)
  5. audit     each fine-tuned model: de-biasing switches flipped, inputs blanked
All flows are bi-directional sessions (the nDPI labels are per session). Writes OUT/summary.md
with the tables, the wall-clock time of every stage and the exact commands.

Note: pre-training reads every flow of both folders, the test flows of the fine-tuning
datasets included (without their labels), as the issue asks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The recipe of the built-in default model (scripts/build_default_model.py), from the model
# quality study: Mamba's own initialisation and IATs embedded x 1000 (pre-training), a cosine
# head, base lr 1e-2 without layer decay (fine-tuning). Split 6:2:2 by capture file, so that
# valid (which picks the checkpoint) and test are not a handful of flows.
PRETRAIN_SETTINGS = ["--set", "model.init=mamba", "--set", "model.iat_scale=1000"]
COSINE_HEAD = ["--set", "model.head=cosine"]
FINETUNE_LR = ["--lr", "0.01", "--layer-decay", "1.0"]
FINETUNE_SETTINGS = [*COSINE_HEAD, *FINETUNE_LR]
RATIOS = "6:2:2"
BUDGETS = {
    # pretrain steps, batch, fine-tuning epochs, fine-tuning step cap (0 = none), pretrain batch
    "short": {"pretrain_steps": 40, "epochs": 1.0, "max_steps": 30, "batch": 64},
    "full": {"pretrain_steps": 2000, "epochs": 30.0, "max_steps": 0, "batch": 128},
}


class Stages:
    def __init__(self, out: Path, threads: int | None, quiet: bool) -> None:
        self.out = out
        self.threads = threads
        self.quiet = quiet
        self.rows: list[dict] = []

    def run(self, name: str, args: list[str], *, netmamba: bool = True) -> float:
        command = [sys.executable, "-m", "netmamba", *args] if netmamba else args
        if netmamba and self.quiet:
            command.append("-q")
        if netmamba and self.threads and args[0] in ("pretrain", "finetune", "evaluate", "audit"):
            command += ["--threads", str(self.threads)]
        shown = " ".join(shlex.quote(c) for c in command).replace(sys.executable, "python")
        print(f"== {name}: {shown}", flush=True)
        started = time.perf_counter()
        log = self.out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        seconds = time.perf_counter() - started
        self.rows.append({"stage": name, "seconds": seconds, "command": shown, "log": str(log)})
        print(f"   {seconds:.1f} s (log {log})", flush=True)
        if done.returncode != 0:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise SystemExit(f"stage {name} failed with status {done.returncode}")
        return seconds

    def timed(self, name: str, seconds: float, what: str) -> None:
        """Records a stage done in this process (not a command)."""
        self.rows.append({"stage": name, "seconds": seconds, "command": what, "log": ""})


def prepare_pretrain(stages: Stages, shared: Path, out: Path, options: list[str]) -> float:
    """The pre-training corpus: every capture of both folders of ../shared/data, no labels."""
    captures = [str(shared / "ndpi-4.2" / "pcap"), str(shared / "iot-sentinel" / "captures")]
    return stages.run(
        "prepare-pretrain", ["prepare", *captures, "-o", str(out), "--no-labels", *options]
    )


def pretrain(stages: Stages, dataset: Path, run: Path, steps: int, batch: int) -> float:
    """Pre-trains the `fast` model with the recipe's settings."""
    options = ["--steps", str(steps), "--batch-size", str(batch), "--checkpoint-every", "500"]
    return stages.run(
        "pretrain",
        ["pretrain", str(dataset), "-o", str(run), "--config", "fast", "--overwrite", *options,
         *PRETRAIN_SETTINGS],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="working folder")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="short")
    parser.add_argument("--pretrain-steps", type=int, help="override the budget's")
    parser.add_argument("--epochs", type=float, help="fine-tuning epochs (override)")
    parser.add_argument("--max-steps", type=int, help="cap on fine-tuning steps, 0 = none")
    parser.add_argument("--batch-size", type=int, help="pre-training and fine-tuning batch")
    parser.add_argument("--min-per-class", type=int, default=50, help="nDPI/IoT classes (50)")
    parser.add_argument("--workers", type=int, default=2, help="prepare processes (2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per stage")
    parser.add_argument("--no-audit", action="store_true")
    parser.add_argument("--also-ce", action="store_true", help="also fine-tune with plain CE")
    parser.add_argument("--reuse-data", action="store_true", help="keep prepared datasets")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars in logs")
    args = parser.parse_args(argv)
    budget = dict(BUDGETS[args.budget])
    for key in ("pretrain_steps", "epochs", "max_steps"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    if args.batch_size:
        budget["batch"] = args.batch_size
    ndpi, iot = args.data / "ndpi-4.2", args.data / "iot-sentinel" / "captures"
    if not ndpi.is_dir() or not iot.is_dir():
        parser.error(f"{args.data}: the real captures are not there (ndpi-4.2/, iot-sentinel/)")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, args.threads, args.quiet)
    data, runs = out / "data", out / "runs"
    started = time.perf_counter()

    # 1. prepare
    common = ["--mode", "bidirectional", "--workers", str(args.workers), "--overwrite"]
    labelled = ["--split", "file", "--ratios", RATIOS, "--min-per-class", str(args.min_per_class)]
    if not (args.reuse_data and (data / "pretrain" / "manifest.json").exists()):
        prepare_pretrain(stages, args.data, data / "pretrain", common)
    if not (args.reuse_data and (data / "ndpi" / "manifest.json").exists()):
        stages.run(
            "prepare-ndpi",
            [
                "prepare",
                str(ndpi / "pcap"),
                "-o",
                str(data / "ndpi"),
                "--labels",
                str(ndpi / "labels-nfstream.tsv"),
                "--label-column",
                "application_category_name",
                "--label-filter",
                "application_is_guessed=0",
                "--min-packets",
                "3",
                *labelled,
                *common,
            ],
        )
    if not (args.reuse_data and (data / "iot" / "manifest.json").exists()):
        macs = out / "iot-macs.csv"
        stages.run(
            "iot-labels",
            [
                sys.executable,
                str(REPO / "scripts" / "iot_sentinel_labels.py"),
                str(iot),
                "-o",
                str(macs),
            ],
            netmamba=False,
        )
        stages.run(
            "prepare-iot",
            [
                "prepare",
                str(iot),
                "-o",
                str(data / "iot"),
                "--labels",
                str(macs),
                *labelled,
                *common,
            ],
        )

    # 2. pretrain
    pre = runs / "pretrain"
    pretrain(stages, data / "pretrain", pre, budget["pretrain_steps"], budget["batch"])

    # 3-5. finetune, evaluate, audit
    for name in ("ndpi", "iot"):
        run = runs / name
        tune = [
            "finetune",
            str(data / name),
            "-o",
            str(run),
            "--from",
            str(pre),
            "--overwrite",
            "--epochs",
            str(budget["epochs"]),
            "--batch-size",
            str(min(budget["batch"], 64)),
            *FINETUNE_SETTINGS,
        ]
        batch = min(budget["batch"], 64)
        per_epoch = _steps_for(data / name, 1.0, batch)
        epochs = budget["epochs"]
        if budget["max_steps"] and epochs * per_epoch > budget["max_steps"]:
            tune += ["--steps", str(budget["max_steps"])]
            epochs = budget["max_steps"] / per_epoch
        # warm-up: a tenth of the run, at most the recipe's 5 epochs (a step cap would
        # otherwise leave most of a short run in warm-up)
        tune += ["--warmup-epochs", f"{min(5.0, 0.1 * epochs):.3g}"]
        stages.run(f"finetune-{name}", tune)
        if args.also_ce:  # the same run with plain cross-entropy (what LDA is worth here)
            ce = [str(runs / f"{name}-ce") if a == str(run) else a for a in tune]
            stages.run(f"finetune-{name}-ce", [*ce, "--loss", "ce", "--no-baseline"])
        stages.run(
            f"evaluate-{name}",
            ["evaluate", str(run), str(data / name), "-o", str(out / "eval" / name)],
        )
        if not args.no_audit:
            stages.run(
                f"audit-{name}",
                ["audit", str(run), str(data / name), "-o", str(out / "audit" / name)],
            )
    total = time.perf_counter() - started
    summary = write_summary(out, stages.rows, budget, args, total)
    print(summary)
    return 0


def _steps_for(dataset: Path, epochs: float, batch: int) -> int:
    import math

    manifest = json.loads((dataset / "manifest.json").read_text())
    flows = manifest["splits"]["train"]["flows"]
    return math.ceil(epochs * math.ceil(flows / batch))


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_summary(out: Path, rows: list[dict], budget: dict, args, total: float) -> str:
    lines = [
        "# Real-data check (issue 4)",
        "",
        f"Budget `{args.budget}`: {json.dumps(budget)}; threads {args.threads or 'default'}; "
        f"captures from `{args.data}`. Total wall-clock {total / 60:.1f} min.",
        "",
        "## Test-split results (model | GBDT baseline on the same flows and split)",
        "",
        "| dataset | classes | train / valid / test flows | model accuracy | model macro F1 | "
        "model weighted F1 | GBDT accuracy | GBDT macro F1 | GBDT weighted F1 | kept epoch |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("ndpi", "iot"):
        metrics_path = out / "runs" / name / "metrics.json"
        if not metrics_path.exists():
            continue
        m = json.loads(metrics_path.read_text())
        manifest = json.loads((out / "data" / name / "manifest.json").read_text())
        flows = " / ".join(str(manifest["splits"][s]["flows"]) for s in ("train", "valid", "test"))
        b = m.get("baseline") or {}
        lines.append(
            f"| {name} | {len(manifest['label_names'])} | {flows} | {_fmt(m['accuracy'])} | "
            f"{_fmt(m['macro_f1'])} | {_fmt(m['weighted_f1'])} | {_fmt(b.get('accuracy'))} | "
            f"{_fmt(b.get('macro_f1'))} | {_fmt(b.get('weighted_f1'))} | "
            f"{m['best'].get('epoch')} of {m['epochs']} |"
        )
    ce_rows = []
    for name in ("ndpi", "iot"):
        path = out / "runs" / f"{name}-ce" / "metrics.json"
        if path.exists():
            m = json.loads(path.read_text())
            ce_rows.append(
                f"| {name}, cross-entropy | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} | "
                f"{_fmt(m['weighted_f1'])} | {m['best'].get('epoch')} of {m['epochs']} |"
            )
    if ce_rows:
        lines += [
            "",
            "The same fine-tuning with plain cross-entropy instead of the LDA loss:",
            "",
            "| run | accuracy | macro F1 | weighted F1 | kept epoch |",
            "|---|---:|---:|---:|---:|",
            *ce_rows,
        ]
    lines += ["", "## Evaluation extras", ""]
    for name in ("ndpi", "iot"):
        path = out / "eval" / name / "metrics.json"
        if not path.exists():
            continue
        e = json.loads(path.read_text())
        c = e.get("calibration") or {}
        speed = ", ".join(
            f"batch {r['batch_size']}: {r['flows_per_s']:,.0f} flows/s"
            for r in (e.get("throughput") or {}).get("results", [])
        )
        lines.append(
            f"- {name}: ECE {_fmt(c.get('ece_before'))} -> {_fmt(c.get('ece_after'))} "
            f"(T = {_fmt(c.get('temperature'))}); throughput {speed}"
        )
    for name in ("ndpi", "iot"):
        path = out / "audit" / name / "metrics.json"
        if not path.exists():
            continue
        audit = json.loads(path.read_text())["audit"]
        worst = sorted(audit["rows"][1:], key=lambda r: -r["accuracy_drop"])[:4]
        lines.append(
            f"- audit {name} (accuracy as trained {audit['rows'][0]['accuracy']:.4f}); "
            "largest drops: "
            + ", ".join(f"{r['condition']} {0.0 - r['accuracy_drop'] + 0.0:+.4f}" for r in worst)
        )
    pre = out / "runs" / "pretrain" / "metrics.json"
    if pre.exists():
        p = json.loads(pre.read_text())
        lines.append(
            f"- pre-training: {p['steps']} steps ({p['epochs']:.2f} epochs of "
            f"{p['flows']} flows), final loss {_fmt(p['final_loss'])}"
        )
    lines += ["", "## Stages", "", "| stage | wall-clock (s) | command |", "|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | `{r['command']}` |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
