"""Rebuild the built-in default model (src/netmamba/default_model/) from ../shared/data.

    python scripts/build_default_model.py                      # --work /tmp/netmamba-default
    python scripts/build_default_model.py --no-install         # build and score, change nothing

Stages (each a `netmamba` command as a user would type it, timed; seeds fixed, so a rerun on
the same machine gives the same model):
  1. prepare-pretrain  every capture of both folders (nDPI and IoT Sentinel), no labels,
                       bi-directional sessions, TCP and UDP, the default model's geometry
  2. pretrain          the `fast` model (RECIPE below) on that corpus
  3. categories        nDPI flows with a confirmed nfstream label (application_is_guessed=0),
                       2+ packets, TCP/UDP; "Unspecified" dropped; a category is kept when it
                       has >= MIN_FLOWS flows in >= MIN_FILES capture files with >= MIN_OUTSIDE
                       of them outside its largest file (so that a split by capture file can
                       put some in valid and test). Writes WORK/labels-default.tsv.
  4. prepare-ndpi      those categories, split grouped by capture file, 6:2:2
  5. finetune          from the pre-trained model, a few candidate recipes (CANDIDATES); each
                       run calibrates, sets the unknown-class threshold, scores test and
                       fits the classical baseline (gradient-boosted trees, same flows/split)
  6. select            the candidate with the best VALIDATION macro F1 (test is read once,
                       for the report; it never chooses)
  7. install           RUN/best -> src/netmamba/default_model/ (model.safetensors,
                       checkpoint.json with "name": "default"), SHA256SUMS, MODEL_CARD.md
Everything is written under --work; nothing is written under ../shared.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from real_data_check import (  # the same timed, logged stages and the recipe
    COSINE_HEAD,
    FINETUNE_LR,
    PRETRAIN_SETTINGS,
    Stages,
    prepare_pretrain,
    pretrain,
)

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "src" / "netmamba" / "default_model"
PRESET = "fast"

# The recipe (shared with scripts/real_data_check.py), from the model quality study: Mamba's
# own initialisation and IATs embedded x 1000 (PRETRAIN_SETTINGS), a cosine head, a short
# warm-up, and a few candidates for the loss and learning rate.
PRETRAIN_STEPS, PRETRAIN_BATCH = 2000, 128
FINETUNE = ["--epochs", "30", "--batch-size", "64", "--warmup-epochs", "3", *COSINE_HEAD]
CANDIDATES = {  # name -> extra finetune options; chosen by validation macro F1
    "ce-lr1e-2": ["--loss", "ce", *FINETUNE_LR],
    "lda-lr1e-2": ["--loss", "lda", *FINETUNE_LR],
    "ce-lr2e-3": ["--loss", "ce"],
    # not a candidate: the chosen recipe's loss without pre-training, to show what it is worth
    "scratch-lda-lr1e-2": ["--config", PRESET, *PRETRAIN_SETTINGS, "--loss", "lda", *FINETUNE_LR],
}
SCRATCH = "scratch-"  # candidates named so start from random weights and are never chosen
# category selection (stage 3) and split (stage 4)
MIN_PACKETS = 2  # DNS and NTP exchanges (query + answer) are 2-packet sessions: keep them
MIN_FLOWS = 40
MIN_FILES = 6
MIN_OUTSIDE = 20
RATIOS = "6:2:2"
SEED = 0
DESCRIPTION = (
    "NetMamba+ fast model pre-trained on the captures of nDPI 4.2 and IoT Sentinel, "
    "fine-tuned to classify bi-directional TCP/UDP sessions into nDPI traffic categories"
)


# ---- stage 3: the label set ----------------------------------------------------------------


def choose_categories(candidates: Path) -> tuple[list[str], list[dict]]:
    """Categories of the candidate dataset (every confirmed category but Unspecified) that
    pass the flow / file thresholds; returns (kept names, one row per category)."""
    from netmamba.dataset import load_dataset

    ds = load_dataset(candidates, "all", raw=False)
    files: dict[str, Counter] = defaultdict(Counter)
    for label, capture in zip(ds.labels.tolist(), ds.meta["capture"].tolist(), strict=True):
        files[ds.label_names[label]][capture] += 1
    rows = []
    for name, per_file in files.items():
        flows = sum(per_file.values())
        outside = flows - max(per_file.values())
        kept = flows >= MIN_FLOWS and len(per_file) >= MIN_FILES and outside >= MIN_OUTSIDE
        rows.append(
            {
                "category": name,
                "flows": flows,
                "files": len(per_file),
                "outside": outside,
                "kept": kept,
            }
        )
    rows.sort(key=lambda r: (-r["flows"], r["category"]))
    return sorted(r["category"] for r in rows if r["kept"]), rows


def write_labels(source: Path, target: Path, categories: list[str]) -> int:
    """The rows of the nfstream labels TSV whose category is kept (the other rows are left
    out, so their flows are unlabelled and dropped); returns the rows written."""
    keep = set(categories)
    written = 0
    with open(source, newline="") as f_in, open(target, "w", newline="") as f_out:
        reader = csv.DictReader(f_in, delimiter="\t")
        writer = csv.DictWriter(f_out, reader.fieldnames or [], delimiter="\t")
        writer.writeheader()
        for row in reader:
            if row["application_category_name"] in keep:
                writer.writerow(row)
                written += 1
    return written


# ---- stage 7: install -----------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install(best: Path, target: Path) -> list[str]:
    """RUN/best -> target: the weights, checkpoint.json named "default", SHA256SUMS."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best / "model.safetensors", target / "model.safetensors")
    meta = json.loads((best / "checkpoint.json").read_text())
    meta["name"] = "default"
    meta["description"] = DESCRIPTION
    # nothing of the build machine or the build's time: a rebuild gives the same file
    meta["dataset"]["path"] = "ndpi-categories (scripts/build_default_model.py)"
    meta["dataset"].pop("created", None)
    if meta.get("init", {}).get("source"):
        meta["init"]["source"] = "pre-training run of scripts/build_default_model.py"
    (target / "checkpoint.json").write_text(json.dumps(meta, indent=1) + "\n")
    files = ["checkpoint.json", "model.safetensors"]
    sums = "".join(f"{sha256(target / name)}  {name}\n" for name in files)
    (target / "SHA256SUMS").write_text(sums)
    return files


# ---- the model card ---------------------------------------------------------------------------


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def model_card(
    work: Path, chosen: str, candidates: dict, category_rows: list[dict], stages: Stages
) -> str:
    metrics = candidates[chosen]
    model, base = metrics["model"], metrics.get("baseline") or {}
    manifest = json.loads((work / "data" / "ndpi" / "manifest.json").read_text())
    pre = json.loads((work / "data" / "pretrain" / "manifest.json").read_text())
    counts = manifest["counts"]
    names = model["classes"]
    base_f1 = {r["name"]: r["f1"] for r in base.get("per_class", [])}
    cal = metrics["calibration"]
    tp = metrics.get("throughput") or {}
    lines = [
        "# Model card: the built-in default model (`netmamba classify` without `--model`)",
        "",
        f"{DESCRIPTION}. Built by `python scripts/build_default_model.py` on "
        f"{time.strftime('%Y-%m-%d')}; every figure below was measured by that run "
        "(seeds fixed; rerun it to rebuild these files).",
        "",
        "## Model",
        "",
        "- NetMamba+ (`fast` preset: 5 packets x (64 header + 64 payload) bytes in strides of "
        "16, sizes and inter-arrival times of the first 20 packets; D = 64, 3 Mamba blocks, "
        "state 16), Mamba's own initialisation, IATs embedded x 1000, cosine head "
        f"(logit scale {_meta()['logit_scale']:g}). "
        f"{_params()} parameters; weights `model.safetensors` "
        f"({(TARGET / 'model.safetensors').stat().st_size / 1e3:.0f} kB).",
        "- Input: bi-directional TCP/UDP sessions (client = first sender, signed sizes), "
        "de-biased with the default switches (addresses and ports replaced by relative "
        "values, TCP sequence numbers and timestamps relative, checksums, TTL, IPv4 ID, "
        "IPv6 flow label and TLS SNI zeroed): the model does not read who talks to whom.",
        f"- Flows with fewer than {MIN_PACKETS} packets are listed by `classify` as too short, "
        "not guessed.",
        "",
        "## Data and licence",
        "",
        f"- Pre-training (no labels): every capture of `../shared/data` — the nDPI 4.2 test "
        f"captures (`ndpi-4.2/pcap`, LGPL-3.0, from the nDPI project) and the IoT Sentinel "
        f"captures (`iot-sentinel/captures`, the dataset of Miettinen et al., ICDCS 2017): "
        f"{pre['flows']:,} sessions, {PRETRAIN_STEPS} steps of batch {PRETRAIN_BATCH}.",
        "- Fine-tuning: the nDPI 4.2 captures only. Labels are nDPI traffic categories from "
        "`ndpi-4.2/labels-nfstream.tsv` (nfstream 6.6.0 with nDPI 5.0), kept only where the "
        "detection was confirmed (`application_is_guessed=0`); `Unspecified` is dropped. A "
        f"category is kept with >= {MIN_FLOWS} flows in >= {MIN_FILES} capture files, "
        f">= {MIN_OUTSIDE} of them outside its largest file (so that validation and test hold "
        "some).",
        f"- Split grouped by capture file ({RATIOS}, seed {SEED}): no capture file gives "
        "flows to two splits, so the model is scored on traffic from recordings it never saw.",
        "",
        "| category | train | valid | test |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        row = [counts.get(split, {}).get(name, 0) for split in ("train", "valid", "test")]
        lines.append(f"| {name} | {row[0]} | {row[1]} | {row[2]} |")
    dropped = [r["category"] for r in category_rows if not r["kept"]]
    lines += [
        "",
        f"Categories left out (too few flows or capture files): {', '.join(dropped)}.",
        "",
        "## Scores on the test split (flows of capture files never seen in training)",
        "",
        "| model | accuracy | macro F1 | weighted F1 |",
        "|---|---:|---:|---:|",
        f"| this model | {_f(model['accuracy'])} | {_f(model['macro_f1'])} | "
        f"{_f(model['weighted_f1'])} |",
    ]
    if base:
        lines.append(
            f"| gradient-boosted trees (sizes, directions, timings, header fields; same "
            f"flows and split) | {_f(base['accuracy'])} | {_f(base['macro_f1'])} | "
            f"{_f(base['weighted_f1'])} |"
        )
    lines += ["", "| category | F1 (this model) | F1 (trees) | support |", "|---|---:|---:|---:|"]
    for r in model["per_class"]:
        lines.append(
            f"| {r['name']} | {_f(r['f1'])} | {_f(base_f1.get(r['name']))} | {r['support']} |"
        )
    lines += [
        "",
        "Candidates fine-tuned by the build (chosen by validation macro F1; test read once; "
        "`scratch-` starts from random weights, to show what pre-training is worth):",
        "",
        "| candidate | options | valid macro F1 | test accuracy | test macro F1 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, m in candidates.items():
        mark = " (chosen)" if name == chosen else ""
        lines.append(
            f"| {name}{mark} | `{' '.join(CANDIDATES[name])}` | {_f(m['best']['value'])} | "
            f"{_f(m['accuracy'])} | {_f(m['macro_f1'])} |"
        )
    lines += [
        "",
        "## Calibration and unknown flows",
        "",
        f"- Temperature {cal['temperature']:.3f} fitted on validation: expected calibration "
        f"error on test {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, NLL "
        f"{cal['nll_before']:.3f} -> {cal['nll_after']:.3f}.",
        "- Unknown flag: entropy of the calibrated softmax above "
        f"{metrics['unknown_threshold']:.3f} "
        f"(95% of validation flows accepted); {100 * metrics['unknown_flagged_share']:.1f}% of "
        "test flows are flagged.",
    ]
    if tp:
        lines.append(f"- Throughput measured by the run: {json.dumps(tp)[:300]}")
    lines += [
        "",
        "## Limits",
        "",
        f"- Small data: {sum(sum(c.values()) for c in counts.values()):,} labelled sessions from "
        "the nDPI project's test captures, "
        "which are protocol samples, not a network's real mix. Scores move by several points "
        "with the split seed; treat them as a rough guide.",
        "- Labels are what nDPI detects, not ground truth; the model learns nDPI's categories, "
        "including its mistakes, and only the categories above.",
        "- It is not on par with the classical baseline on every category (table above): "
        "when the trees beat it, prefer them or fine-tune on your own traffic.",
        "- De-biasing hides addresses, ports and the TLS server name, but not everything: "
        "QUIC's and HTTP's host names in the payload are still visible to the model.",
        "- Any traffic of other kinds is forced into one of these categories; the unknown flag "
        "catches only part of it.",
        "",
        "## Build",
        "",
        "| stage | seconds | command |",
        "|---|---:|---|",
    ]
    for row in stages.rows:
        lines.append(f"| {row['stage']} | {row['seconds']:.1f} | `{row['command']}` |")
    return "\n".join(lines) + "\n"


def _meta() -> dict:
    return json.loads((TARGET / "checkpoint.json").read_text())


def _params() -> str:
    """Parameters of the installed weights, counted from the safetensors header."""
    from safetensors import safe_open

    with safe_open(TARGET / "model.safetensors", "np") as f:
        total = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    return f"{total:,}"


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/netmamba-default"))
    parser.add_argument("--workers", type=int, default=2, help="prepare processes (2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads per stage")
    parser.add_argument("--no-install", action="store_true", help="do not touch the package")
    parser.add_argument("--reuse-pretrain", action="store_true", help="keep WORK/runs/pretrain")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars in logs")
    args = parser.parse_args(argv)
    ndpi, iot = args.data / "ndpi-4.2", args.data / "iot-sentinel" / "captures"
    if not ndpi.is_dir() or not iot.is_dir():
        parser.error(f"{args.data}: the real captures are not there (ndpi-4.2/, iot-sentinel/)")
    work = args.work.resolve()
    if work.is_relative_to(args.data.resolve()):
        parser.error("--work must be outside the shared data")
    work.mkdir(parents=True, exist_ok=True)
    stages = Stages(work, args.threads, args.quiet)  # logs in WORK/logs
    data, runs = work / "data", work / "runs"
    geometry = [
        "--mode",
        "bidirectional",
        "--protocol-filter",
        "tcp_udp",
        "--min-packets",
        str(MIN_PACKETS),
        "--header-bytes",
        "64",
        "--payload-bytes",
        "64",
        "--workers",
        str(args.workers),
        "--overwrite",
    ]
    pre = runs / "pretrain"
    if not (args.reuse_pretrain and (pre / "checkpoint").is_dir()):
        prepare_pretrain(stages, args.data, data / "pretrain", geometry)
        pretrain(stages, data / "pretrain", pre, PRETRAIN_STEPS, PRETRAIN_BATCH)
    labels = ndpi / "labels-nfstream.tsv"
    confirmed = [
        "--label-column",
        "application_category_name",
        "--label-filter",
        "application_is_guessed=0",
    ]
    split = ["--split", "file", "--ratios", RATIOS, "--seed", str(SEED)]
    stages.run(
        "prepare-candidates",
        [
            "prepare",
            str(ndpi / "pcap"),
            "-o",
            str(data / "candidates"),
            "--labels",
            str(labels),
            *confirmed,
            "--label-filter",
            "application_category_name!=Unspecified",
            "--min-per-class",
            "1",
            *split,
            *geometry,
        ],
    )
    started = time.perf_counter()
    categories, category_rows = choose_categories(data / "candidates")
    chosen_labels = work / "labels-default.tsv"
    written = write_labels(labels, chosen_labels, categories)
    stages.timed(
        "categories",
        time.perf_counter() - started,
        f"{len(categories)} categories, {written} label rows -> {chosen_labels}",
    )
    print(f"   categories: {', '.join(categories)}", flush=True)
    ndpi_options = ["--labels", str(chosen_labels), *confirmed, "--min-per-class", str(MIN_FLOWS)]
    prepare_ndpi = ["prepare", str(ndpi / "pcap"), "-o", str(data / "ndpi"), *ndpi_options]
    stages.run("prepare-ndpi", [*prepare_ndpi, *split, *geometry])
    results = {}
    for i, (name, options) in enumerate(CANDIDATES.items()):
        run = runs / f"ndpi-{name}"
        init = [] if name.startswith(SCRATCH) else ["--from", str(pre)]
        extra = [] if i == 0 else ["--no-baseline"]
        tune = ["finetune", str(data / "ndpi"), "-o", str(run), *init, *FINETUNE, *options]
        stages.run(f"finetune-{name}", [*tune, *extra, "--overwrite"])
        results[name] = json.loads((run / "metrics.json").read_text())
    baseline = results[next(iter(CANDIDATES))]["baseline"]
    for m in results.values():
        m["baseline"] = m.get("baseline") or baseline
    pretrained = [n for n in results if not n.startswith(SCRATCH)]  # the model is pre-trained
    chosen = max(pretrained, key=lambda n: results[n]["best"]["value"])
    for name, m in results.items():
        print(
            f"   {name}: valid macro F1 {m['best']['value']:.3f}, test accuracy "
            f"{m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}"
            + ("  <- chosen" if name == chosen else "")
        )
    if baseline:
        print(
            f"   gradient-boosted trees: test accuracy {baseline['accuracy']:.3f}, "
            f"macro F1 {baseline['macro_f1']:.3f}"
        )
    summary = work / "summary.json"
    keys = ("accuracy", "macro_f1", "weighted_f1")
    record = {
        "chosen": chosen,
        "categories": category_rows,
        "stages": stages.rows,
        "results": {n: {k: m[k] for k in (*keys, "best")} for n, m in results.items()},
        "baseline": baseline and {k: baseline[k] for k in keys},
    }
    summary.write_text(json.dumps(record, indent=1))
    if args.no_install:
        print(f"not installed (--no-install); summary {summary}")
        return 0
    install(runs / f"ndpi-{chosen}" / "best", TARGET)
    (TARGET / "MODEL_CARD.md").write_text(model_card(work, chosen, results, category_rows, stages))
    print(f"installed {TARGET} (model card, SHA256SUMS); summary {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
