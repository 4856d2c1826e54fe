"""From capture files to flows, sample arrays and metadata (the per-file stage of prepare).

`find_captures(inputs)` lists the capture files under the inputs (files, or folders searched
at any depth), in sorted order, recognised by their first bytes (not their names).
`extract_file(...)` reads one capture, assembles its flows, cleans and labels them and turns
them into arrays; `prepare` runs it for every file (in worker processes) and writes each
result as a Parquet part. `extract_captures(...)` does the same in memory, without cleaning
or labels, for `netmamba classify`: captures -> arrays + one metadata row per flow.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netmamba.capture import CaptureError, CaptureStats, open_capture, sniff
from netmamba.dataset.config import PrepareConfig, protocol_excluded
from netmamba.dataset.store import META_COLUMNS, meta_table, sample_hashes
from netmamba.debias import DebiasConfig
from netmamba.features import ARRAY_NAMES, FeatureConfig, empty_arrays, flow_arrays
from netmamba.flows import Flow, FlowConfig, FlowMeter
from netmamba.labels import AMBIGUOUS, CaptureLabeller, mac_text

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

FLOW_CHUNK = 4096
CAPTURE_SUFFIXES = (
    ".pcap",
    ".pcapng",
    ".cap",
    ".dmp",
    ".pcap.gz",
    ".pcapng.gz",
    ".cap.gz",
)  # flows turned into arrays at a time (bounds memory per file)


@dataclass(frozen=True)
class CaptureInput:
    """A capture file to read: its path, its path under the INPUT folder it was found in
    (None for a file given directly), and its position in the sorted list of all captures."""

    path: str
    relative: str | None
    index: int


@dataclass
class FileReport:
    """What one capture gave: reader statistics, flows assembled, kept, dropped by reason."""

    capture: CaptureInput
    stats: CaptureStats
    flows: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    end_reasons: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": self.capture.path,
            "relative": self.capture.relative,
            "index": self.capture.index,
            "stats": self.stats.to_dict(),
            "flows": self.flows,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "end_reasons": self.end_reasons,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FileReport:
        return cls(
            CaptureInput(d["path"], d["relative"], d["index"]),
            CaptureStats.from_dict(d["stats"]),
            d["flows"],
            d["kept"],
            d["dropped"],
            d.get("end_reasons", {}),
        )


def find_captures(inputs: Sequence[str | Path]) -> tuple[list[CaptureInput], list[str]]:
    """(captures, ignored): captures under the inputs, sorted by path so that results never
    depend on the order the file system lists them. In folders, a file is a capture when its
    first bytes say so or its name ends like one (.pcap, .pcapng, .cap, ... : then a broken one
    is reported, not skipped); `ignored` are the other files (README, MAC lists, ...). A file
    named directly is always returned. Missing inputs raise FileNotFoundError."""
    found: dict[str, str | None] = {}
    ignored: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for name in filenames:
                    if name.startswith("."):
                        continue
                    full = Path(dirpath) / name
                    if sniff(full) is None and not name.lower().endswith(CAPTURE_SUFFIXES):
                        ignored.append(str(full))
                        continue
                    found.setdefault(str(full), full.relative_to(path).as_posix())
        elif path.exists():
            found.setdefault(str(path), None)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    ordered = sorted(found)
    return [CaptureInput(p, found[p], i) for i, p in enumerate(ordered)], sorted(ignored)


def _drop_reason(flow: Flow, config: PrepareConfig) -> str | None:
    cleaning = config.cleaning
    if flow.packets < cleaning.min_packets:
        return "min_packets"
    if protocol_excluded(cleaning.protocol_filter, flow.proto, flow.sport, flow.dport):
        return "protocol_filter"
    return None


def flow_meta_rows(
    flows: Sequence[Flow], labels: Sequence[str | None], hashes: Sequence[str]
) -> list[tuple]:
    """Metadata rows (META_COLUMNS order) of flows."""
    rows = []
    for flow, label, digest in zip(flows, labels, hashes, strict=True):
        rows.append(
            (
                flow.source,
                flow.src,
                flow.sport,
                flow.dst,
                flow.dport,
                flow.proto,
                flow.version,
                flow.first_ns,
                flow.last_ns,
                flow.packets,
                flow.bytes,
                mac_text(flow.src_mac),
                mac_text(flow.dst_mac),
                flow.session,
                flow.end_reason,
                label,
                digest,
            )
        )
    return rows


def iter_file_chunks(
    capture: CaptureInput,
    config: PrepareConfig,
    labeller: CaptureLabeller | None,
    report: FileReport,
    *,
    clean: bool = True,
) -> Iterator[tuple[dict[str, np.ndarray], pa.Table]]:
    """Read one capture and yield (arrays, metadata) for chunks of its kept flows."""
    try:
        reader = open_capture(capture.path)
    except CaptureError as exc:
        report.stats.error = str(exc).removeprefix(f"{capture.path}: ")
        return
    labelled = clean and labeller is not None and config.labels.labelled
    dropped: Counter[str] = Counter()
    with reader:
        report.stats = reader.stats
        meter = FlowMeter(config.flow, config.features, source=capture.path)
        kept: list[Flow] = []
        kept_labels: list[str | None] = []
        for flow in meter.run(reader.batches()):
            report.flows += 1
            label = None
            if clean:
                reason = _drop_reason(flow, config)
                if reason is None and labeller is not None:
                    label = labeller.label(flow)
                    if label == AMBIGUOUS:
                        reason = "ambiguous_label"
                    elif label is None and labelled:
                        reason = "no_label"
                if reason is not None:
                    dropped[reason] += 1
                    continue
            kept.append(flow)
            kept_labels.append(label)
            if len(kept) >= FLOW_CHUNK:
                yield _chunk(kept, kept_labels, config)
                report.kept += len(kept)
                kept, kept_labels = [], []
        if kept:
            yield _chunk(kept, kept_labels, config)
            report.kept += len(kept)
        report.end_reasons = {k: v for k, v in meter.counts.items() if k != "flows" and v}
    report.dropped = dict(dropped)


def _chunk(
    flows: list[Flow], labels: list[str | None], config: PrepareConfig
) -> tuple[dict[str, np.ndarray], pa.Table]:
    arrays = flow_arrays(flows, config.features, config.debias, keep_raw=config.keep_raw_bytes)
    return arrays, meta_table(flow_meta_rows(flows, labels, sample_hashes(arrays)))


@dataclass
class Extraction:
    """Flows of captures in memory: the sample arrays, one metadata row per flow (the columns
    of `netmamba.dataset.store.META_COLUMNS`; `label` empty), and each file's statistics."""

    arrays: dict[str, np.ndarray]
    meta: pd.DataFrame
    reports: list[FileReport]

    def __len__(self) -> int:
        return len(self.meta)


def _extract_one(capture: CaptureInput, config: PrepareConfig) -> tuple[list, FileReport]:
    report = FileReport(capture, CaptureStats(capture.path))
    chunks = list(iter_file_chunks(capture, config, None, report, clean=False))
    return chunks, report


def extract_captures(
    captures: Sequence[str | Path],
    flow: FlowConfig | None = None,
    features: FeatureConfig | None = None,
    debias: DebiasConfig | None = None,
    *,
    keep_raw: bool = False,
    workers: int = 1,
    progress: Callable[[FileReport], None] | None = None,
) -> Extraction:
    """Every flow of the captures (files or folders), no cleaning and no labels, as arrays and
    metadata in memory, in a deterministic order (sorted files, then flow end order).

    `debias=None` applies the default de-biasing (`DebiasConfig()`); pass
    `DebiasConfig.none()` for the bytes as captured. Files that cannot be read have an error in
    their report and no flows; nothing raises for bad capture content."""
    config = PrepareConfig(
        flow=flow or FlowConfig(),
        features=features or FeatureConfig(),
        debias=debias or DebiasConfig(),
        keep_raw_bytes=keep_raw,
    )
    found, _ = find_captures(captures)
    results: list[tuple[list, FileReport]] = []
    if workers > 1 and len(found) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_extract_one, c, config) for c in found]
            for fut in futures:
                results.append(fut.result())
                if progress:
                    progress(results[-1][1])
    else:
        for c in found:
            results.append(_extract_one(c, config))
            if progress:
                progress(results[-1][1])
    chunks = [chunk for file_chunks, _ in results for chunk in file_chunks]
    reports = [r for _, r in results]
    return Extraction(*concat_chunks(chunks, config.features, keep_raw), reports)


def concat_chunks(
    chunks: list[tuple[dict[str, np.ndarray], pa.Table]], features: FeatureConfig, raw: bool
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    import pyarrow as pa

    if not chunks:
        return empty_arrays(features, raw=raw), meta_table([]).to_pandas()
    names = ARRAY_NAMES + (("raw_bytes", "packet_dirs") if raw else ())
    arrays = {k: np.concatenate([c[0][k] for c in chunks]) for k in names}
    meta = pa.concat_tables([c[1] for c in chunks]).to_pandas()
    return arrays, meta[list(META_COLUMNS)]
