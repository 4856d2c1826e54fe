"""`metrics.json` and a self-contained `report.html` for every fine-tuning and evaluation run.

The page is one file with inline CSS and inline SVG (`netmamba.evaluate.charts`): no script,
no font, image or style sheet fetched from anywhere, so it opens offline and can be mailed.
Sections, each shown only when its data is given:

    headline     accuracy / macro F1 / weighted F1 of the model, and the change vs the baseline
    metrics      every summary metric, model beside the baseline (and any other result)
    per class    F1 bars per class for each result, with the test support
    confusion    the model's confusion matrix as a heat-map (share of each true class)
    learning     loss and validation metrics per epoch (or step), the kept checkpoint marked
    calibration  reliability diagram before / after temperature scaling, ECE and NLL
    unknown      AUROC and FPR at 95% TPR per score, score histograms with the threshold
    throughput   flows/s and peak memory per batch size
    data         classes and flows per split
    settings     the configuration that produced the figures
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from netmamba.evaluate import charts
from netmamba.evaluate.metrics import SUMMARY_KEYS

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "macro_precision": "Precision (macro)",
    "macro_recall": "Recall (macro)",
    "macro_f1": "F1 (macro)",
    "weighted_precision": "Precision (weighted)",
    "weighted_recall": "Recall (weighted)",
    "weighted_f1": "F1 (weighted)",
}


# ---------------------------------------------------------------------------- metrics.json


def to_jsonable(value: Any) -> Any:
    """NumPy / torch scalars and arrays to plain JSON values; NaN and infinities to null."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Write `metrics` as JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    _atomic_write(path, json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n")
    return path


def read_metrics_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no metrics.json here (was the run finished?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def data_summary(
    class_names: Sequence[str], splits: Mapping[str, Any], notes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Flows per class and split from label arrays (-1 = unlabelled, counted apart)."""
    counts, unlabelled = {}, {}
    for split, labels in splits.items():
        y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64)
        counts[split] = np.bincount(y[y >= 0], minlength=len(class_names)).tolist()
        unlabelled[split] = int((y < 0).sum())
    return {
        "classes": list(class_names),
        "counts": counts,
        "unlabelled": unlabelled,
        "notes": dict(notes or {}),
    }


# ---------------------------------------------------------------------------- HTML

CSS = """
:root { --ink:#1f2933; --muted:#6b7785; --line:#e4e8ee; --bg:#f6f8fb; --card:#fff;
        --accent:#0072B2; --good:#1a7f37; --bad:#b42318; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 60px; }
header h1 { font-size: 24px; margin: 0 0 4px; }
header .sub { color: var(--muted); margin: 0; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
          padding: 18px 22px; margin-top: 18px; }
section h2 { font-size: 17px; margin: 0 0 4px; }
section p.note { color: var(--muted); margin: 0 0 12px; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 14px;
         margin-top: 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 14px 18px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 30px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .d { font-size: 12.5px; color: var(--muted); }
.up { color: var(--good); } .down { color: var(--bad); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.best { font-weight: 700; }
td.l, th.l { text-align: left; }
h3 { font-size: 14px; margin: 4px 0 8px; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.side > div:first-child { flex: 0 1 auto; }
.side > div:last-child { flex: 1 1 320px; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 18px; }
.scroll { overflow-x: auto; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg .lbl { font-size: 11px; fill: var(--ink); }
svg .tick { font-size: 10px; fill: var(--muted); }
svg .axis { font-size: 11px; fill: var(--muted); }
svg .val { font-size: 9.5px; fill: var(--muted); }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .frame { fill: none; stroke: #c9d1db; }
svg .marker { stroke: #7b8794; stroke-dasharray: 4 3; stroke-width: 1.2; }
svg rect.cell { stroke: #fff; stroke-width: 1; }
svg rect.diag { stroke: #1f2933; stroke-width: 1.2; }
pre { background: #f3f5f8; border-radius: 8px; padding: 12px 14px; overflow-x: auto;
      font-size: 12.5px; margin: 0; }
.bar { display: inline-block; height: 9px; background: var(--accent); border-radius: 2px;
       vertical-align: middle; opacity: .75; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 22px; }
"""


def _t(value: object) -> str:
    return escape(str(value), quote=True)


def _f(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def _section(title: str, note: str, body: str, anchor: str) -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{_t(title)}</h2>{note_html}{body}</section>'


def _headline(results: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(results)
    main = results[names[0]]
    other = results[names[1]] if len(names) > 1 else None
    cards = []
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        value = main.get(key)
        delta = ""
        if other is not None and value is not None and other.get(key) is not None:
            diff = float(value) - float(other[key])
            cls = "up" if diff > 0 else "down" if diff < 0 else ""
            delta = (
                f'<div class="d"><span class="{cls}">{diff:+.4f}</span> vs {_t(names[1])} '
                f"({_f(other[key])})</div>"
            )
        cards.append(
            f'<div class="card"><div class="k">{_t(METRIC_LABELS[key])} · {_t(names[0])}</div>'
            f'<div class="v">{_f(value)}</div>{delta}</div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>'


def _metrics_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(results)
    head = "".join(f"<th>{_t(n)}</th>" for n in names)
    rows = []
    for key in SUMMARY_KEYS:
        values = [results[n].get(key) for n in names]
        finite = [float(v) for v in values if v is not None]
        best = max(finite) if len(finite) > 1 else None
        cells = "".join(
            f'<td class="best">{_f(v)}</td>'
            if best is not None and v == best
            else f"<td>{_f(v)}</td>"
            for v in values
        )
        rows.append(f"<tr><td>{_t(METRIC_LABELS[key])}</td>{cells}</tr>")
    n_row = "".join(f"<td>{_t(results[n].get('n', '–'))}</td>" for n in names)
    rows.append(f"<tr><td>Test flows scored</td>{n_row}</tr>")
    body = "".join(rows)
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics(results: Mapping[str, Mapping[str, Any]]) -> str:
    keys = [k for k in SUMMARY_KEYS if k != "accuracy"]
    series = {n: [float(results[n].get(k) or 0.0) for k in keys] for n in results}
    chart = charts.grouped_bars([METRIC_LABELS[k] for k in keys], series, None, 1.0, "metrics")
    return f'<div class="grid2"><div>{_metrics_table(results)}</div><div>{chart}</div></div>'


def _confusions(main: Mapping[str, Any], limit: int = 8) -> str:
    """The largest off-diagonal cells: which class is taken for which, and how often."""
    cm = np.asarray(main["confusion_matrix"], dtype=np.int64)
    names = main["classes"]
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:limit]
    rows = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        share = off[i, j] / max(1, cm[i].sum())
        rows.append(
            f'<tr><td>{_t(names[i])}</td><td class="l">{_t(names[j])}</td><td>{off[i, j]:,}</td>'
            f"<td>{share:.1%}</td></tr>"
        )
    if not rows:
        return '<p class="note">No flow was misclassified.</p>'
    return (
        '<table><thead><tr><th>true class</th><th class="l">taken for</th><th>flows</th>'
        f"<th>of the class</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _per_class(results: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(results)
    main = results[names[0]]
    classes = [c["name"] for c in main["per_class"]]
    series = {}
    for name in names:
        by_class = {c["name"]: c["f1"] for c in results[name].get("per_class", [])}
        series[name] = [by_class.get(c, 0.0) for c in classes]
    support = [f"n={c['support']}" for c in main["per_class"]]
    chart = charts.grouped_bars(classes, series, support, 1.0, "F1 per class")
    head = "".join(f"<th>{_t(n)} P</th><th>{_t(n)} R</th><th>{_t(n)} F1</th>" for n in names)
    rows = []
    for i, cls in enumerate(classes):
        cells = ""
        for name in names:
            by_class = {c["name"]: c for c in results[name].get("per_class", [])}
            c = by_class.get(cls, {})
            cells += "".join(f"<td>{_f(c.get(k))}</td>" for k in ("precision", "recall", "f1"))
        support = main["per_class"][i]["support"]
        rows.append(f"<tr><td>{_t(cls)}</td>{cells}<td>{support}</td></tr>")
    table = (
        f'<details><summary>per-class table</summary><div class="scroll"><table><thead><tr>'
        f"<th>class</th>{head}<th>support</th></tr></thead><tbody>{''.join(rows)}</tbody>"
        f"</table></div></details>"
    )
    return f'<div class="scroll">{chart}</div>{table}'


def _history_series(
    history: Sequence[Mapping[str, Any]],
) -> tuple[str, dict[str, list], dict[str, list]]:
    x_key = "epoch" if any("epoch" in row for row in history) else "step"
    losses: dict[str, list] = {}
    scores: dict[str, list] = {}
    for row in history:
        if x_key not in row:
            continue
        x = float(row[x_key])
        for key, value in row.items():
            if key in ("epoch", "step", "lr", "time", "seconds") or not isinstance(
                value, int | float
            ):
                continue
            if isinstance(value, bool) or value is None or not math.isfinite(float(value)):
                continue
            target = losses if "loss" in key else scores
            target.setdefault(key, []).append((x, float(value)))
    return x_key, losses, scores


def _learning(history: Sequence[Mapping[str, Any]], best_epoch: float | None) -> str:
    x_key, losses, scores = _history_series(history)
    marker = "kept checkpoint" if best_epoch is not None else ""
    parts = []
    if losses:
        parts.append(charts.line_chart(losses, x_key, "loss", best_epoch, marker, title="loss"))
    if scores:
        parts.append(
            charts.line_chart(
                scores,
                x_key,
                "validation metric",
                best_epoch,
                marker,
                y_range=(0.0, 1.0),
                title="validation metrics",
            )
        )
    return f'<div class="grid2">{"".join(f"<div>{p}</div>" for p in parts)}</div>'


def _calibration(calibration: Mapping[str, Any]) -> str:
    table = (
        "<table><thead><tr><th></th><th>before</th><th>after</th></tr></thead><tbody>"
        f"<tr><td>ECE ({calibration.get('n_bins', '')} bins)</td>"
        f"<td>{_f(calibration.get('ece_before'))}</td><td>{_f(calibration.get('ece_after'))}</td></tr>"
        f"<tr><td>NLL</td><td>{_f(calibration.get('nll_before'))}</td>"
        f"<td>{_f(calibration.get('nll_after'))}</td></tr>"
        f"<tr><td>temperature T</td><td>1</td><td>{_f(calibration.get('temperature'), 3)}</td></tr>"
        "</tbody></table>"
    )
    bins = {}
    if calibration.get("reliability_before"):
        bins["before (T = 1)"] = calibration["reliability_before"]
    if calibration.get("reliability_after"):
        bins[f"after (T = {_f(calibration.get('temperature'), 2)})"] = calibration[
            "reliability_after"
        ]
    chart = charts.reliability_chart(bins, "reliability diagram") if bins else ""
    return f'<div class="grid2"><div>{chart}</div><div>{table}</div></div>'


def _unknown(unknown: Mapping[str, Any]) -> str:
    scores = unknown.get("scores", {})
    rows = "".join(
        f"<tr><td>{_t(kind)}</td><td>{_f(s.get('auroc'))}</td><td>{_f(s.get('fpr_at_95_tpr'))}</td>"
        f"<td>{_f(s.get('threshold'))}</td><td>{_f(s.get('known_accepted'))}</td>"
        f"<td>{_f(s.get('unknown_flagged'))}</td></tr>"
        for kind, s in scores.items()
    )
    table = (
        "<table><thead><tr><th>score</th><th>AUROC</th><th>FPR at 95% TPR</th><th>threshold</th>"
        "<th>known accepted</th><th>unknown flagged</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    chart = ""
    kind = "entropy" if "entropy" in scores else next(iter(scores), None)
    if kind and scores[kind].get("histogram"):
        h = scores[kind]["histogram"]
        both = {"known classes (test)": h["known"], "unknown classes": h["unknown"]}
        chart = charts.histogram_chart(
            h["edges"],
            both,
            scores[kind].get("threshold"),
            f"{kind} of the temperature-scaled softmax",
        )
    return f'<div class="grid2"><div>{chart}</div><div>{table}</div></div>'


def _throughput(throughput: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{r['batch_size']}</td><td>{r['flows_per_s']:,.0f}</td>"
        f"<td>{r['batch_ms']:.2f}</td><td>{r['peak_memory_mb']:.1f}</td>"
        f"<td>{r.get('peak_total_mb', float('nan')):.1f}</td></tr>"
        for r in throughput.get("results", [])
    )
    params = throughput.get("parameters", {})
    device = throughput.get("device_name", throughput.get("device", ""))
    memory = throughput.get("memory_method", "")
    results = throughput.get("results", [])
    chart = ""
    if results:
        top = max(r["flows_per_s"] for r in results)
        chart = charts.grouped_bars(
            [f"batch {r['batch_size']}" for r in results],
            {"flows/s": [r["flows_per_s"] for r in results]},
            max_value=charts.nice_ticks(0.0, top, 4)[-1],
            title="flows per second",
            value_format="{:,.0f}",
        )
    return (
        f'<div class="grid2"><div>{chart}</div><div>'
        "<table><thead><tr><th>batch size</th><th>flows/s</th><th>ms per batch</th>"
        "<th>peak memory rise (MB)</th><th>peak total (MB)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<p class="note">device {_t(device)}, {_t(throughput.get("threads", ""))} threads, '
        f"autocast {_t(throughput.get('autocast_dtype') or 'off')}, "
        f"{params.get('total', 0):,} parameters; memory: {_t(memory)}</p>"
        "</div></div>"
    )


def _data(summary: Mapping[str, Any]) -> str:
    classes = summary.get("classes", [])
    counts = summary.get("counts", {})
    splits = list(counts)
    totals = [sum(counts[s][i] for s in splits) for i in range(len(classes))]
    top = max([*totals, 1])
    head = "".join(f"<th>{_t(s)}</th>" for s in splits)
    rows = []
    for i, name in enumerate(classes):
        cells = "".join(f"<td>{counts[s][i]:,}</td>" for s in splits)
        bar = f'<span class="bar" style="width:{120 * totals[i] / top:.1f}px"></span>'
        rows.append(
            f'<tr><td>{_t(name)}</td>{cells}<td>{totals[i]:,}</td><td class="l">{bar}</td></tr>'
        )
    split_totals = "".join(f"<td><b>{sum(counts[s]):,}</b></td>" for s in splits)
    everything = f"<td><b>{sum(totals):,}</b></td><td></td>"
    rows.append(f"<tr><td><b>all classes</b></td>{split_totals}{everything}</tr>")
    unlabelled = summary.get("unlabelled", {})
    notes = dict(summary.get("notes", {}))
    if any(unlabelled.values()):
        notes["unlabelled flows"] = ", ".join(f"{k} {v:,}" for k, v in unlabelled.items())
    note_rows = "".join(
        f'<tr><td>{_t(k)}</td><td class="l">{_t(v)}</td></tr>' for k, v in notes.items()
    )
    notes_html = f"<table><tbody>{note_rows}</tbody></table>" if note_rows else ""
    return (
        f'<div class="scroll"><table><thead><tr><th>class</th>{head}<th>total</th><th></th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>{notes_html}"
    )


def render_report(
    results: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "NetMamba+ evaluation",
    subtitle: str = "",
    history: Sequence[Mapping[str, Any]] | None = None,
    best_epoch: float | None = None,
    calibration: Mapping[str, Any] | None = None,
    unknown: Mapping[str, Any] | None = None,
    throughput: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> str:
    """The report page as a string (see the module docstring).

    `results` maps a name to a `classification_metrics` dict; the first is the model (its
    confusion matrix is drawn), the others (the baseline) stand beside it. `history` is a list
    of logged rows with "epoch" or "step" and numeric values: keys with "loss" are drawn as
    losses, the others as validation metrics. `calibration`, `unknown`, `throughput` are the
    dicts of `calibration_report`, `unknown_class_report` and `measure_throughput`; `data` is a
    `data_summary`; `config` any JSON-ready settings.
    """
    if not results:
        raise ValueError("the report needs at least one result (the model's test metrics)")
    names = list(results)
    main = results[names[0]]
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [_headline(results)]
    note = "Test split; the best value of each row in bold."
    if len(names) > 1:
        note += (
            f" Beside the model, the classical baseline ({_t(names[1])}): gradient-boosted trees"
            " on packet sizes, directions, timings and header fields of the same flows and split."
        )
    sections.append(_section("Metrics", note, _metrics(results), "metrics"))
    if main.get("per_class"):
        sections.append(
            _section(
                "F1 per class",
                "Bars per class; n = test flows of the class.",
                _per_class(results),
                "per-class",
            )
        )
    if main.get("confusion_matrix"):
        sections.append(
            _section(
                f"Confusion matrix · {names[0]}",
                "Rows are the true class, columns the prediction; colour is the share of the "
                "true class, the number the flows. Hover a cell for details.",
                f'<div class="side"><div class="scroll">'
                f"{charts.heatmap(main['confusion_matrix'], main['classes'])}</div>"
                f"<div><h3>Most frequent confusions</h3>{_confusions(main)}</div></div>",
                "confusion",
            )
        )
    if history:
        sections.append(
            _section(
                "Learning curves",
                "Per epoch (or step); the dashed line marks the checkpoint kept for testing.",
                _learning(history, best_epoch),
                "learning",
            )
        )
    if calibration:
        sections.append(
            _section(
                "Calibration",
                "Temperature T fitted on the validation split (NLL), applied to the test split. "
                "Bars on the diagonal are perfectly calibrated.",
                _calibration(calibration),
                "calibration",
            )
        )
    if unknown:
        sections.append(
            _section(
                "Unknown-class detection",
                f"{unknown.get('n_known', '')} test flows of known classes against "
                f"{unknown.get('n_unknown', '')} flows of classes not seen in training. A flow is "
                "flagged unknown when its score exceeds the threshold chosen to accept "
                f"{float(unknown.get('accept_rate', 0.95)):.0%} of known validation flows.",
                _unknown(unknown),
                "unknown",
            )
        )
    if throughput:
        sections.append(_section("Inference throughput", "", _throughput(throughput), "throughput"))
    if data:
        sections.append(_section("Data", "Flows per class and split.", _data(data), "data"))
    if config:
        body = f"<pre>{_t(json.dumps(to_jsonable(config), indent=2))}</pre>"
        sections.append(
            _section("Settings", "Every setting that produced these figures.", body, "settings")
        )
    sub = f'<p class="sub">{_t(subtitle)}</p>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_t(title)}</title><style>{CSS}</style></head><body><main>"
        f"<header><h1>{_t(title)}</h1>{sub}</header>"
        + "".join(sections)
        + f"<footer>Made by netmamba on {_t(created)}. Self-contained: opens offline.</footer>"
        "</main></body></html>\n"
    )


def write_report(
    path: str | Path, results: Mapping[str, Mapping[str, Any]], **sections: Any
) -> Path:
    """Render the report and write it (atomically); `path` may be the run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.html"
    _atomic_write(path, render_report(results, **sections))
    return path
