"""Classify every flow of packet captures: captures -> flows -> arrays -> model -> one row per flow.

    from netmamba.classify import classify_captures
    result = classify_captures(["examples/example.pcap"])         # the built-in default model
    result.flows                      # pandas DataFrame, one row per flow (RESULT_COLUMNS)
    result.reports                    # per capture: packets read, skipped, errors

Flows are assembled, de-biased and turned into arrays with the settings the model was trained
with (stored in its checkpoint), so a model always sees flows made the way it learned them; the
service (`netmamba serve`) does the same. Captures are read one chunk of flows at a time, so
memory does not grow with the capture, only with the result table.

Flows with fewer packets than the shortest flows the model was trained on are listed with
status `too_short`, and flows of protocols its training data left out (its protocol filter:
ICMP, say, for a model of TCP/UDP sessions) with status `other_protocol`, both with no label
(unless `include_short`): a prediction the model was never trained to make is not one to
trust, but nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from netmamba.capture import CaptureStats
from netmamba.dataset.config import PrepareConfig, protocol_excluded
from netmamba.dataset.extract import FileReport, find_captures, iter_file_chunks
from netmamba.inference import Predictor
from netmamba.registry import (  # noqa: F401 - re-exported: the names classify users know
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelNotFoundError,
    min_packets_of,
    protocol_filter_of,
    resolve_model,
)

log = logging.getLogger(__name__)

# The result table, one row per flow, in this order (stable names: scripts rely on them).
RESULT_COLUMNS = (
    "capture",  # the capture file
    "src_ip",  # first sender (the client of a session)
    "src_port",
    "dst_ip",
    "dst_port",
    "protocol",  # IP protocol number (6 TCP, 17 UDP, ...)
    "first_seen",  # time of the first packet (UTC)
    "duration_s",  # last packet - first packet, seconds
    "packets",  # all packets of the flow
    "bytes",  # sum of their IP lengths
    "label",  # predicted class (empty when not classified)
    "confidence",  # its calibrated probability
    "label_2",  # second and third most likely classes
    "confidence_2",
    "label_3",
    "confidence_3",
    "unknown",  # looks unlike every class the model knows
    "unknown_score",  # the detector's score (higher = less like the known classes)
    "status",  # ok | too_short | other_protocol
)


def load_predictor(
    model: str | Path | Predictor = DEFAULT_MODEL,
    *,
    threads: int | None = None,
    device: str | None = None,
) -> Predictor:
    """A Predictor for a built-in model name, a checkpoint / run folder, or one already loaded."""
    if isinstance(model, Predictor):
        return model
    return Predictor.load(resolve_model(model), device=device, threads=threads)


@dataclass
class ClassifyResult:
    """The flows of the captures with their predictions, and what reading each capture gave."""

    flows: pd.DataFrame  # RESULT_COLUMNS
    reports: list[FileReport]
    model: Predictor

    @property
    def unreadable(self) -> list[FileReport]:
        """Captures from which nothing could be used."""
        return [r for r in self.reports if not r.stats.usable]

    @property
    def damaged(self) -> list[FileReport]:
        """Captures read in part: some packets used, then an error (corrupt or truncated)."""
        return [r for r in self.reports if r.stats.usable and r.stats.error]


def classify_captures(
    captures: Sequence[str | Path],
    model: str | Path | Predictor = DEFAULT_MODEL,
    *,
    batch_size: int = 256,
    include_short: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClassifyResult:
    """Every flow of the captures (files or folders, searched at any depth), classified.

    `progress(packets_read, flows_done)` is called after each chunk of flows. Unreadable
    captures are reported in `ClassifyResult.reports`, never raised; a missing path raises
    FileNotFoundError."""
    predictor = load_predictor(model, threads=threads)
    config = prepare_config_of(predictor)
    found, _ = find_captures(captures)
    shortest = 1 if include_short else min_packets_of(predictor.metadata)
    protocols = "none" if include_short else protocol_filter_of(predictor.metadata)
    tables: list[pd.DataFrame] = []
    reports: list[FileReport] = []
    packets_before = flows_done = 0
    for capture in found:
        report = FileReport(capture, CaptureStats(capture.path))
        for arrays, meta in iter_file_chunks(capture, config, None, report, clean=False):
            frame = meta.to_pandas()
            tables.append(_predict_chunk(predictor, arrays, frame, shortest, protocols, batch_size))
            flows_done += len(frame)
            if progress:
                progress(packets_before + report.stats.packets, flows_done)
        packets_before += report.stats.packets
        reports.append(report)
        if progress:
            progress(packets_before, flows_done)
    flows = pd.concat(tables, ignore_index=True) if tables else _empty_result()
    return ClassifyResult(flows, reports, predictor)


def prepare_config_of(predictor: Predictor) -> PrepareConfig:
    """Flow assembly, features and de-biasing as the model's training data had them."""
    return PrepareConfig(
        flow=predictor.flow or PrepareConfig().flow,
        features=predictor.data_features or predictor.features,
        debias=predictor.debias or PrepareConfig().debias,
        keep_raw_bytes=False,
    )


def _predict_chunk(
    predictor: Predictor,
    arrays: dict[str, np.ndarray],
    meta: pd.DataFrame,
    shortest: int,
    protocol_filter: str,
    batch_size: int,
) -> pd.DataFrame:
    n = len(meta)
    packets = meta["packets"].to_numpy()
    other_protocol = np.array(
        [
            protocol_excluded(protocol_filter, int(p), int(s), int(d))
            for p, s, d in zip(meta["protocol"], meta["src_port"], meta["dst_port"], strict=True)
        ],
        dtype=bool,
    )
    classified = (packets >= shortest) & ~other_protocol
    rows = pd.DataFrame(
        {
            "capture": meta["capture"].astype(str),
            "src_ip": meta["src_ip"],
            "src_port": meta["src_port"].astype("int32"),
            "dst_ip": meta["dst_ip"],
            "dst_port": meta["dst_port"].astype("int32"),
            "protocol": meta["protocol"].astype("int16"),
            "first_seen": pd.to_datetime(meta["first_ns"], unit="ns", utc=True),
            "duration_s": (meta["last_ns"] - meta["first_ns"]).to_numpy() / 1e9,
            "packets": packets.astype("int64"),
            "bytes": meta["byte_count"].astype("int64"),
        }
    )
    names = np.asarray(predictor.label_names, dtype=object)
    labels = np.full((n, 3), None, dtype=object)
    confidence = np.full((n, 3), np.nan, dtype=np.float32)
    unknown = np.zeros(n, dtype=bool)
    score = np.full(n, np.nan, dtype=np.float32)
    if classified.any():
        subset = {k: v[classified] for k, v in arrays.items()}
        out = predictor.predict(subset, batch_size=batch_size)
        k = out["top_ids"].shape[1]
        labels[classified, :k] = names[out["top_ids"]]
        confidence[classified, :k] = out["top_probs"]
        unknown[classified] = out["unknown"]
        score[classified] = out["unknown_score"]
    for i, suffix in enumerate(("", "_2", "_3")):
        rows["label" + suffix] = pd.array(labels[:, i], dtype="string")
        rows["confidence" + suffix] = confidence[:, i]
    rows["unknown"] = unknown
    rows["unknown_score"] = score
    rows["status"] = np.where(
        classified, "ok", np.where(other_protocol, "other_protocol", "too_short")
    )
    return rows[list(RESULT_COLUMNS)]


def _empty_result() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RESULT_COLUMNS})


# ---- output ----------------------------------------------------------------------------------

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


def write_result(flows: pd.DataFrame, path: str | Path) -> str:
    """Write the table in the format its extension names (.csv, .jsonl/.json, .parquet),
    atomically; returns the format. Unknown extensions raise ValueError."""
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown output format {path.suffix!r}; use one of "
            + ", ".join(sorted(OUTPUT_FORMATS))
        )
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "csv":
        flows.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    elif fmt == "jsonl":
        flows.to_json(tmp, orient="records", lines=True, date_format="iso", date_unit="us")
    else:
        flows.to_parquet(tmp, index=False)
    tmp.replace(path)
    return fmt


def format_table(flows: pd.DataFrame, max_rows: int | None = None) -> str:
    """A table for the terminal: one line per flow, the columns a person reads first."""
    if flows.empty:
        return "(no flows)"
    view = flows if max_rows is None else flows.head(max_rows)
    protocols = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP"}
    table = pd.DataFrame(
        {
            "capture": view["capture"].map(lambda p: Path(p).name),
            "proto": view["protocol"].map(lambda p: protocols.get(int(p), str(p))),
            "source": [
                _endpoint(a, p) for a, p in zip(view["src_ip"], view["src_port"], strict=True)
            ],
            "destination": [
                _endpoint(a, p) for a, p in zip(view["dst_ip"], view["dst_port"], strict=True)
            ],
            "first seen (UTC)": view["first_seen"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "pkts": view["packets"],
            "bytes": view["bytes"],
            "label": [
                _label_cell(lbl, status, unk)
                for lbl, status, unk in zip(
                    view["label"], view["status"], view["unknown"], strict=True
                )
            ],
            "conf": view["confidence"].map(lambda c: "" if pd.isna(c) else f"{c:.2f}"),
            "next best": [_runner_up(view, i) for i in range(len(view))],
        }
    )
    text = table.to_string(index=False)
    if max_rows is not None and len(flows) > max_rows:
        text += f"\n... {len(flows) - max_rows} more flows (write them all with -o FILE.csv)"
    return text


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"


def _label_cell(label: object, status: str, unknown: bool) -> str:
    if status != "ok" or label is None or pd.isna(label):
        return f"({status.replace('_', ' ')})"
    return f"{label} (unknown?)" if unknown else str(label)


def _runner_up(view: pd.DataFrame, i: int) -> str:
    parts = []
    for suffix in ("_2", "_3"):
        label, conf = view["label" + suffix].iloc[i], view["confidence" + suffix].iloc[i]
        if label is not None and not pd.isna(label):
            parts.append(f"{label} {conf:.2f}")
    return ", ".join(parts)


def summarize(flows: pd.DataFrame) -> str:
    """Flows and bytes per predicted label, largest first."""
    if flows.empty:
        return ""
    labelled = flows.assign(label=flows["label"].fillna("(not classified)"))
    table = (
        labelled.groupby("label", dropna=False)
        .agg(flows=("label", "size"), packets=("packets", "sum"), bytes=("bytes", "sum"))
        .sort_values(["flows", "bytes"], ascending=False)
    )
    table["share"] = (table["flows"] / table["flows"].sum()).map(lambda s: f"{s:.0%}")
    return table.to_string()
