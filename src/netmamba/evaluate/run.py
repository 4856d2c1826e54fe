"""The evaluation pipeline: a fine-tuned model on a prepared dataset -> metrics.json + report.html.

    result = evaluate("runs/iot", "data/iot", "eval/iot", unknown="data/iot-unseen")

1. fit the dataset to the checkpoint (`dataset_for_model`): the same flow mode, the same
   de-biasing (re-applied from the raw bytes when they differ and the dataset kept them), a
   geometry at least the model's (cropped to it), labels the model knows (mapped by name);
   anything else is refused with a message that says what differs and what to do;
2. logits of the validation and test splits through `netmamba.inference.Predictor`;
3. `assess`: accuracy, precision / recall / F1 (weighted and macro), per class, confusion
   matrix; the classical baseline fitted on the same dataset's train split and scored on the
   same test flows; temperature calibration (fitted on valid) and ECE; unknown-class detection
   against a dataset of unseen classes; throughput and peak memory over batch sizes;
4. metrics.json (the model's summary metrics at the top level) and report.html.

The fine-tuning run uses `assess` and `write_outputs` for its own final test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netmamba.dataset import DatasetError, FlowDataset, load_dataset
from netmamba.evaluate.baseline import BaselineConfig, run_baseline
from netmamba.evaluate.calibration import calibration_report, nll, reliability, softmax
from netmamba.evaluate.metrics import SUMMARY_KEYS, classification_metrics
from netmamba.evaluate.ood import unknown_class_report
from netmamba.evaluate.report import data_summary, write_metrics_json, write_report
from netmamba.models import GeometryError, ModelConfig

log = logging.getLogger(__name__)

BASELINE_NAME = "GBDT baseline"
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
DEFAULT_BASELINE = BaselineConfig()  # never modified


class EvaluationError(Exception):
    """The checkpoint and the dataset do not fit together, or the dataset cannot be scored."""


def model_name(config: ModelConfig) -> str:
    """A short display name: NetMamba+, NetMamba (bytes only), NetTrans, or an ablation."""
    base = "NetMamba" if config.backbone == "mamba" else "NetTrans"
    if config.variant == "all":
        return base + "+"
    if config.variant == "bytes":
        return base
    return f"{base}+ ({config.variant})"


@dataclass
class Split:
    """One split fitted to the model: arrays of its geometry, labels in its class ids."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray  # int64; -1 = unlabelled or a class the model does not know

    def __len__(self) -> int:
        return len(self.labels)

    def with_labels(self) -> dict[str, np.ndarray]:
        return {**self.arrays, "labels": self.labels}


@dataclass
class FittedData:
    splits: dict[str, Split]
    notes: dict[str, str] = field(default_factory=dict)
    raw_geometry: Any = None  # the dataset's own FeatureConfig


def dataset_for_model(
    predictor: Any,
    path: str | Path,
    splits: Sequence[str] = ("train", "valid", "test"),
    *,
    unknown_classes: bool = False,
    raw: bool = False,
) -> tuple[FittedData, FlowDataset | None]:
    """The splits of a prepared dataset fitted to `predictor`'s model (module docstring, 1).

    With `unknown_classes`, the flows are of classes the model never saw: every split is read
    together (as "all"), labels are not needed and are not mapped."""
    from netmamba.inference import fit_arrays

    names = ["all"] if unknown_classes else list(splits)
    fitted = FittedData({})
    last: FlowDataset | None = None
    for name in names:
        try:
            ds = load_dataset(path, name, raw=raw or not _same_debias(predictor, path))
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from None
        last = ds
        _check_flow_mode(predictor, ds)
        arrays = dict(ds.arrays)
        if not _same_debias(predictor, path):
            if not ds.raw:
                raise EvaluationError(
                    f"{path}: the dataset was de-biased differently from the model's training "
                    f"data ({_debias_difference(predictor, ds)}) and keeps no raw bytes to redo "
                    "it; prepare it again with the model's de-biasing switches"
                )
            arrays = ds.redebias(predictor.debias)
            fitted.notes["de-biasing"] = (
                "re-applied with the model's switches: " + _debias_difference(predictor, ds)
            )
        try:
            arrays = fit_arrays(arrays, predictor.config, ds.feature_config)
        except GeometryError as exc:
            raise EvaluationError(f"{path}: {exc}") from None
        if ds.feature_config != predictor.features:
            fitted.notes["geometry"] = (
                f"cropped from the dataset's {_geometry_text(ds.feature_config)} to the model's "
                f"{_geometry_text(predictor.features)}"
            )
        labels = (
            np.full(len(ds), -1, np.int64)
            if unknown_classes
            else _map_labels(predictor, ds, path, name)
        )
        fitted.splits[name] = Split(arrays, labels)
        fitted.raw_geometry = ds.feature_config
    return fitted, last


def _geometry_text(f: Any) -> str:
    return f"M_b={f.n_packets}, N_h={f.header_bytes}, N_p={f.payload_bytes}, M_seq={f.seq_len}"


def _same_debias(predictor: Any, path: str | Path) -> bool:
    from netmamba.dataset import read_manifest
    from netmamba.debias import DebiasConfig

    if predictor.debias is None:
        return True
    ours = DebiasConfig.from_dict(read_manifest(path)["config"]["debias"])
    return ours == predictor.debias


def _debias_difference(predictor: Any, ds: FlowDataset) -> str:
    model, data = predictor.debias.to_dict(), ds.config.debias.to_dict()
    diffs = [
        f"{k} {data[k]!r} in the data, {model[k]!r} in training"
        for k in model
        if model[k] != data.get(k)
    ]
    return "; ".join(diffs)


def _check_flow_mode(predictor: Any, ds: FlowDataset) -> None:
    if predictor.flow is None:
        return
    ours, theirs = predictor.flow.mode, ds.config.flow.mode
    if ours != theirs:
        raise EvaluationError(
            f"{ds.path}: the dataset holds {theirs} flows but the model was trained on {ours} "
            f"flows; prepare the captures again with --mode {ours}"
        )


def _map_labels(predictor: Any, ds: FlowDataset, path: str | Path, split: str) -> np.ndarray:
    if not ds.manifest.get("labelled"):
        raise EvaluationError(
            f"{path}: the dataset has no labels, so there is nothing to score against; prepare "
            "it with labels (or pass it as --unknown to test unknown-class detection)"
        )
    known = {name: i for i, name in enumerate(predictor.label_names)}
    present = np.unique(ds.labels[ds.labels >= 0])
    strangers = [ds.label_names[i] for i in present if ds.label_names[i] not in known]
    if strangers and split != "train":
        raise EvaluationError(
            f"{path}: the {split} split has classes the model was not trained on: "
            f"{', '.join(strangers[:8])}{' ...' if len(strangers) > 8 else ''} (the model knows "
            f"{', '.join(predictor.label_names[:8])}{' ...' if len(known) > 8 else ''}); "
            "evaluate on a dataset with the model's classes, and pass flows of unseen classes "
            "with --unknown DATASET"
        )
    lookup = np.array([known.get(name, -1) for name in ds.label_names] + [-1], np.int64)
    return lookup[np.where(ds.labels >= 0, ds.labels, len(ds.label_names))]


# ---------------------------------------------------------------------------------------------
# scoring


def assess(
    predictor: Any,
    data: FittedData,
    *,
    baseline: BaselineConfig | None = DEFAULT_BASELINE,
    unknown: Split | None = None,
    batch_sizes: Sequence[int] | None = DEFAULT_BATCH_SIZES,
    throughput_seconds: float = 1.0,
    batch_size: int = 256,
    test_split: str = "test",
    logits: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Everything of the module docstring, step 3, as one JSON-ready dict (see `evaluate`)."""
    names = predictor.label_names
    test = data.splits.get(test_split)
    if test is None or not (test.labels >= 0).any():
        raise EvaluationError(f"the {test_split} split has no labelled flow to score")
    keep = test.labels >= 0
    logits = dict(logits or {})
    if test_split not in logits:
        logits[test_split] = predictor.logits(test.arrays, batch_size)
    test_logits = logits[test_split][keep]
    test_labels = test.labels[keep]
    valid = data.splits.get("valid")
    valid_logits = valid_labels = None
    if valid is not None and (valid.labels >= 0).any():
        if "valid" not in logits:
            logits["valid"] = predictor.logits(valid.arrays, batch_size)
        vk = valid.labels >= 0
        valid_logits, valid_labels = logits["valid"][vk], valid.labels[vk]
    pred = predictor.predict_logits(test_logits)
    metrics = classification_metrics(test_labels, pred["label"], names)
    results: dict[str, Any] = {k: metrics[k] for k in SUMMARY_KEYS}
    results["n"] = metrics["n"]
    results["model_name"] = model_name(predictor.config)
    results["model"] = metrics
    results["unknown_flagged_share"] = float(pred["unknown"].mean()) if len(test_labels) else 0.0
    notes = dict(data.notes)

    # calibration: T fitted on this dataset's valid split (else the checkpoint's own T)
    if len(names) >= 2:
        if valid_logits is not None:
            results["calibration"] = calibration_report(
                valid_logits, valid_labels, test_logits, test_labels
            )
        else:
            t = predictor.temperature
            before = reliability(softmax(test_logits), test_labels)
            after = reliability(softmax(test_logits, t), test_labels)
            results["calibration"] = {
                "temperature": t,
                "n_bins": 15,
                "nll_before": nll(test_logits, test_labels),
                "nll_after": nll(test_logits, test_labels, t),
                "ece_before": before["ece"],
                "ece_after": after["ece"],
                "reliability_before": before,
                "reliability_after": after,
            }
            notes["calibration"] = "no validation split: the checkpoint's temperature is used"
        results["calibration"]["checkpoint_temperature"] = predictor.temperature
        results["ece"] = results["calibration"]["ece_after"]

    # baseline: same flows, same split, what the model reads
    results["baseline"] = None
    train = data.splits.get("train")
    if baseline is not None:
        if train is None or len(np.unique(train.labels[train.labels >= 0])) < 2:
            notes["baseline"] = "not fitted: the train split has fewer than 2 labelled classes"
        else:
            test_part = {**test.arrays, "labels": test.labels}
            test_part = {k: v[keep] for k, v in test_part.items()}
            results["baseline"] = run_baseline(
                train.with_labels(),
                valid.with_labels() if valid is not None else None,
                test_part,
                names,
                predictor.features,
                baseline,
            )

    # unknown-class detection
    results["unknown"] = None
    if unknown is not None and len(unknown):
        unknown_logits = predictor.logits(unknown.arrays, batch_size)
        reference = valid_logits if valid_logits is not None else test_logits
        if valid_logits is None:
            notes["unknown"] = "no validation split: thresholds fitted on the test flows"
        results["unknown"] = unknown_class_report(
            reference, test_logits, unknown_logits, predictor.temperature
        )
        entropy = results["unknown"]["scores"]["entropy"]
        results["unknown_auroc"] = entropy["auroc"]
        results["unknown_fpr_at_95_tpr"] = entropy["fpr_at_95_tpr"]

    # throughput
    results["throughput"] = None
    if batch_sizes:
        from netmamba.evaluate.throughput import measure_throughput

        sample = {k: v[: max(batch_sizes)] for k, v in test.arrays.items()}
        results["throughput"] = measure_throughput(
            predictor.model,
            sample,
            batch_sizes,
            min_seconds=throughput_seconds,
            autocast_dtype=predictor.dtype,
        )
    results["notes"] = notes
    return results


def results_table(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{display name: metrics} of the model and its baseline, for the report and printing."""
    table = {results["model_name"]: results["model"]}
    if results.get("baseline"):
        table[BASELINE_NAME] = results["baseline"]
    return table


def write_outputs(
    out_dir: str | Path,
    results: dict[str, Any],
    *,
    title: str,
    subtitle: str = "",
    history: Sequence[Mapping[str, Any]] | None = None,
    best_epoch: float | None = None,
    config: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """metrics.json and report.html in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = dict(results)
    if history is not None:
        record["history"] = list(history)
    if config is not None:
        record["config"] = dict(config)
    if data is not None:
        record["data"] = dict(data)
    metrics_path = write_metrics_json(out_dir / "metrics.json", record)
    notes = dict(results.get("notes") or {})
    data_block = dict(data) if data else None
    if data_block is not None:
        data_block["notes"] = {**data_block.get("notes", {}), **notes}
    report = write_report(
        out_dir / "report.html",
        results_table(results),
        title=title,
        subtitle=subtitle,
        history=history,
        best_epoch=best_epoch,
        calibration=results.get("calibration"),
        unknown=results.get("unknown"),
        throughput=results.get("throughput"),
        config=config,
        data=data_block,
    )
    return metrics_path, report


def evaluate(
    checkpoint: str | Path,
    dataset: str | Path,
    out_dir: str | Path,
    *,
    unknown: str | Path | None = None,
    split: str = "test",
    baseline: BaselineConfig | None = DEFAULT_BASELINE,
    batch_sizes: Sequence[int] | None = DEFAULT_BATCH_SIZES,
    throughput_seconds: float = 1.0,
    batch_size: int = 256,
    device: str | None = None,
    threads: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a fine-tuning run's best model) on a prepared dataset's
    `split`; writes metrics.json and report.html to `out_dir` and returns the results."""
    from netmamba.inference import Predictor

    predictor = Predictor.load(checkpoint, device=device, threads=threads, dtype=dtype)
    wanted = ["train", "valid", split] if baseline is not None else ["valid", split]
    wanted = list(dict.fromkeys(wanted))
    data, ds = dataset_for_model(predictor, dataset, wanted)
    unknown_split = None
    if unknown is not None:
        unknown_data, _ = dataset_for_model(predictor, unknown, unknown_classes=True)
        unknown_split = unknown_data.splits["all"]
    results = assess(
        predictor,
        data,
        baseline=baseline,
        unknown=unknown_split,
        batch_sizes=batch_sizes,
        throughput_seconds=throughput_seconds,
        batch_size=batch_size,
        test_split=split,
    )
    results["checkpoint"] = str(predictor.path)
    results["dataset"] = str(dataset)
    results["split"] = split
    if unknown is not None:
        results["unknown_dataset"] = str(unknown)
    summary = data_summary(
        predictor.label_names,
        {name: s.labels for name, s in data.splits.items()},
        {"dataset": str(dataset), "checkpoint": str(predictor.path)},
    )
    config = {
        "checkpoint": str(predictor.path),
        "model": predictor.config.to_dict(),
        "logit_scale": predictor.logit_scale,
        "unknown_detector": predictor.detector.to_dict(),
        "dataset": str(dataset),
        "dataset_config": ds.manifest["config"] if ds is not None else None,
        "split": split,
        "baseline": baseline.to_dict() if baseline is not None else None,
        "training": predictor.metadata.get("finetune"),
    }
    write_outputs(
        out_dir,
        results,
        title=f"{results['model_name']} on {Path(dataset).name}",
        subtitle=f"checkpoint {predictor.path} · {split} split of {dataset}",
        config=config,
        data=summary,
    )
    return results
