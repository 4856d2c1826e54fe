"""Shortcut audit (SPEC section 6): how much of a model's score rests on fields it should not use.

The test split is scored again under changed conditions, and each score compared with the
score under the conditions the model was trained with ("as trained"):

    debias:<switch>   one de-biasing switch flipped at test time, from the raw bytes the dataset
                      keeps: a field the model saw removed (keep -> zero), or a field removed in
                      training shown as captured (zero / relative -> keep, on -> off). A model
                      that leans on a shortcut loses score when it is taken away; a model that
                      never saw a field should not care when it comes back.
    blank:<modality>  one input the model reads replaced by a constant, lengths and masks kept:
                      sizes -> 0, inter-arrival times -> 0, all bytes -> 0, header bytes -> 0,
                      payload bytes -> 0. The drop is what the model takes from that input.

The classical baseline (fitted once on the train split, as trained) is scored under the same
conditions, so the table shows whether the pre-trained model is more or less fragile than it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from netmamba.dataset import DatasetError, FlowDataset, load_dataset
from netmamba.debias import DebiasConfig
from netmamba.evaluate import charts
from netmamba.evaluate.baseline import BaselineConfig, ClassicalBaseline
from netmamba.evaluate.metrics import classification_metrics
from netmamba.evaluate.report import CSS, write_metrics_json
from netmamba.evaluate.run import (
    BASELINE_NAME,
    DEFAULT_BASELINE,
    EvaluationError,
    _check_flow_mode,
    _map_labels,
    model_name,
)
from netmamba.models import GeometryError

SCORES = ("accuracy", "macro_f1", "weighted_f1")


def flipped(config: DebiasConfig, name: str) -> DebiasConfig:
    """`config` with switch `name` flipped: keep -> zero, zero / relative -> keep, on <-> off."""
    value = getattr(config, name)
    if isinstance(value, bool):
        return config.replace(**{name: not value})
    return config.replace(**{name: "zero" if value == "keep" else "keep"})


def _blank(arrays: dict[str, np.ndarray], what: str, features: Any) -> dict[str, np.ndarray]:
    out = dict(arrays)
    if what in ("sizes", "iats"):
        out[what] = np.zeros_like(arrays[what])
        return out
    data = arrays["bytes"].reshape(len(arrays["bytes"]), features.n_packets, -1).copy()
    if what == "header bytes":
        data[:, :, : features.header_bytes] = 0
    elif what == "payload bytes":
        data[:, :, features.header_bytes :] = 0
    else:
        data[:] = 0
    out["bytes"] = data.reshape(arrays["bytes"].shape)
    return out


def _modalities(config: Any) -> list[str]:
    names = [m for m in ("sizes", "iats") if m in config.modalities]
    if "bytes" in config.modalities:
        names.append("bytes")
        if len(config.byte_fields) == 2:
            names += ["header bytes", "payload bytes"]
    return names


def audit(
    checkpoint: str | Path,
    dataset: str | Path,
    *,
    split: str = "test",
    baseline: BaselineConfig | None = DEFAULT_BASELINE,
    batch_size: int = 256,
    device: str | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The audit table (module docstring) as a JSON-ready dict: `rows` of condition, what
    changed, the model's (and baseline's) scores and their drops from "as trained"."""
    from netmamba.inference import Predictor, fit_arrays

    predictor = Predictor.load(checkpoint, device=device, threads=threads)
    try:
        test = load_dataset(dataset, split, raw=True)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    _check_flow_mode(predictor, test)
    labels = _map_labels(predictor, test, dataset, split)
    keep = labels >= 0
    if not keep.any():
        raise EvaluationError(f"{dataset}: the {split} split has no labelled flow to audit")
    reference = predictor.debias or test.config.debias
    notes: dict[str, str] = {}

    def model_input(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            fitted = fit_arrays(arrays, predictor.config, test.feature_config)
        except GeometryError as exc:
            raise EvaluationError(f"{dataset}: {exc}") from None
        return {k: v[keep] for k, v in fitted.items()}

    y = labels[keep]
    trained = model_input(_with_debias(test, reference, notes))
    base = None
    if baseline is not None:
        base = _fit_baseline(predictor, dataset, reference, baseline, model_input, notes)

    def score(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        pred = predictor.predict(arrays, batch_size)["label"]
        m = classification_metrics(y, pred, predictor.label_names)
        row = {k: m[k] for k in SCORES}
        if base is not None:
            b = classification_metrics(y, base.predict(arrays), predictor.label_names)
            row["baseline"] = {k: b[k] for k in SCORES}
        return row

    rows = [{"condition": "as trained", "change": "none", **score(trained)}]
    if progress:
        progress("as trained")
    if test.raw:
        for f in fields(DebiasConfig):
            other = flipped(reference, f.name)
            change = f"{f.name}: {getattr(reference, f.name)} -> {getattr(other, f.name)}"
            arrays = model_input(test.redebias(other))
            rows.append({"condition": f"debias:{f.name}", "change": change, **score(arrays)})
            if progress:
                progress(rows[-1]["condition"])
    else:
        notes["debias"] = (
            "switches not audited: the dataset keeps no raw bytes (prepared with "
            "--no-raw-bytes); prepare it again to audit them"
        )
    for what in _modalities(predictor.config):
        arrays = _blank(trained, what, predictor.features)
        rows.append({"condition": f"blank:{what}", "change": f"{what} -> 0", **score(arrays)})
        if progress:
            progress(rows[-1]["condition"])
    first = rows[0]
    for row in rows:
        for k in SCORES:
            row[f"{k}_drop"] = first[k] - row[k]
            if base is not None:
                row["baseline"][f"{k}_drop"] = first["baseline"][k] - row["baseline"][k]
    return {
        "checkpoint": str(predictor.path),
        "dataset": str(dataset),
        "split": split,
        "flows": int(keep.sum()),
        "model_name": model_name(predictor.config),
        "trained_debias": reference.to_dict(),
        "rows": rows,
        "notes": notes,
        "baseline": base.describe() if base is not None else None,
    }


def _with_debias(ds: FlowDataset, debias: DebiasConfig, notes: dict[str, str]) -> dict:
    if ds.config.debias == debias:
        return dict(ds.arrays)
    if not ds.raw:
        raise EvaluationError(
            f"{ds.path}: the dataset was de-biased differently from the model's training data "
            "and keeps no raw bytes; prepare it again with the model's switches"
        )
    notes["as trained"] = "the dataset's bytes were de-biased again with the model's switches"
    return ds.redebias(debias)


def _fit_baseline(
    predictor: Any,
    dataset: str | Path,
    debias: DebiasConfig,
    config: BaselineConfig,
    model_input: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    notes: dict[str, str],
) -> ClassicalBaseline | None:
    from netmamba.inference import fit_arrays

    parts = []
    for split in ("train", "valid"):
        ds = load_dataset(dataset, split, raw=True)
        labels = _map_labels(predictor, ds, dataset, "train")
        arrays = fit_arrays(_with_debias(ds, debias, notes), predictor.config, ds.feature_config)
        parts.append({**arrays, "labels": labels})
    if len(np.unique(parts[0]["labels"][parts[0]["labels"] >= 0])) < 2:
        notes["baseline"] = "not fitted: the train split has fewer than 2 labelled classes"
        return None
    valid = parts[1] if (parts[1]["labels"] >= 0).any() else None
    return ClassicalBaseline(config, predictor.features).fit(
        parts[0], valid, len(predictor.label_names)
    )


def _change(row: dict[str, Any], key: str) -> float:
    """Score minus the as-trained score (0.0, never -0.0)."""
    return 0.0 - row[f"{key}_drop"] + 0.0


def format_audit_table(result: dict[str, Any]) -> str:
    """A plain-text table: condition, model accuracy / macro F1 and drops (and the baseline's)."""
    base = result.get("baseline") is not None
    width = max(len(r["condition"]) for r in result["rows"])
    head = (
        f"{'condition'.ljust(width)}  {'accuracy':>9} {'change':>8}  {'macro F1':>9} {'change':>8}"
    )
    if base:
        head += f"  {'GBDT acc':>9} {'change':>8}"
    lines = [head]
    for r in result["rows"]:
        line = (
            f"{r['condition'].ljust(width)}  {r['accuracy']:>9.4f} {_change(r, 'accuracy'):>+8.4f}"
            f"  {r['macro_f1']:>9.4f} {_change(r, 'macro_f1'):>+8.4f}"
        )
        if base:
            b = r["baseline"]
            line += f"  {b['accuracy']:>9.4f} {_change(b, 'accuracy'):>+8.4f}"
        lines.append(line)
    return "\n".join(lines)


def render_audit(result: dict[str, Any]) -> str:
    """A self-contained page: the table of drops and the scores as bars."""
    base = result.get("baseline") is not None
    rows_html = []
    for r in result["rows"]:
        cells = (
            f"<td>{escape(r['condition'])}</td><td class='l'>{escape(r['change'])}</td>"
            f"<td>{r['accuracy']:.4f}</td><td>{_change(r, 'accuracy'):+.4f}</td>"
            f"<td>{r['macro_f1']:.4f}</td><td>{_change(r, 'macro_f1'):+.4f}</td>"
        )
        if base:
            b = r["baseline"]
            cells += f"<td>{b['accuracy']:.4f}</td><td>{_change(b, 'accuracy'):+.4f}</td>"
        rows_html.append(f"<tr>{cells}</tr>")
    head = (
        "<th>condition</th><th class='l'>change</th><th>accuracy</th><th>change</th>"
        "<th>macro F1</th><th>change</th>"
        + ("<th>baseline accuracy</th><th>change</th>" if base else "")
    )
    series = {f"{result['model_name']} accuracy": [r["accuracy"] for r in result["rows"]]}
    if base:
        series[f"{BASELINE_NAME} accuracy"] = [r["baseline"]["accuracy"] for r in result["rows"]]
    chart = charts.grouped_bars(
        [r["condition"] for r in result["rows"]], series, None, 1.0, "accuracy per condition"
    )
    notes = "".join(f"<li>{escape(k)}: {escape(v)}</li>" for k, v in result["notes"].items())
    title = f"Shortcut audit · {result['model_name']} on {Path(result['dataset']).name}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{escape(title)}</h1><p class='sub'>checkpoint {escape(result['checkpoint'])}"
        f" · {escape(result['split'])} split, {result['flows']} flows</p></header>"
        "<section><h2>Scores under changed conditions</h2><p class='note'>Each row changes one "
        "thing at test time; the change column is the difference from the first row (as "
        "trained). A large loss when a de-biasing switch removes a field means the model leans "
        "on it.</p><div class='scroll'><table><thead><tr>"
        f"{head}</tr></thead><tbody>{''.join(rows_html)}</tbody></table></div>"
        f"{f'<ul>{notes}</ul>' if notes else ''}</section>"
        f"<section><h2>Accuracy per condition</h2>{chart}</section>"
        "<footer>Made by netmamba audit. Self-contained: opens offline.</footer>"
        "</main></body></html>\n"
    )


def write_audit(out_dir: str | Path, result: dict[str, Any]) -> tuple[Path, Path]:
    from netmamba.evaluate.report import _atomic_write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_metrics_json(out / "metrics.json", {"audit": result})
    report = out / "report.html"
    _atomic_write(report, render_audit(result))
    return metrics, report
