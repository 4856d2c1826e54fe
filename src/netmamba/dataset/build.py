"""`prepare`: capture files -> a dataset folder (Parquet shards + manifest.json).

Two stages:
1. per capture file (in a process pool with `workers` > 1): read, assemble flows, clean,
   label, make the sample arrays, write a part (`parts/<index>.arrow`, Arrow IPC, temporary);
2. global: drop duplicates if asked, apply the per-class minimum and cap (seeded), split, and
   write `data/<split>-<k>.parquet` shards in the global order, plus `manifest.json` and
   `captures.json` (what each capture gave).

A dataset is written to a temporary folder beside the output and renamed at the end, so a
crash never leaves a half-written folder that looks whole.

Sharding a big corpus (`--shard i/n`): each job runs stage 1 on the captures whose index in
the sorted list of all captures is i modulo n, and writes a partial folder (`partial.json` +
parts); `merge_partials` (`netmamba prepare --merge PARTIAL... -o DATASET`) checks that the
partials were made with the same settings from the same capture list and cover every shard
once, then runs stage 2 over all their parts: the result is identical to a single run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netmamba import __version__
from netmamba.capture import CaptureStats
from netmamba.dataset.config import SPLIT_NAMES, PrepareConfig
from netmamba.dataset.extract import (
    CaptureInput,
    FileReport,
    find_captures,
    iter_file_chunks,
)
from netmamba.dataset.split import assign_splits, select_flows
from netmamba.dataset.store import META_COLUMNS, meta_table, to_table
from netmamba.features import ARRAY_DTYPES, ARRAY_NAMES, RAW_ARRAY_NAMES, array_shapes
from netmamba.labels import LabelSource

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT = "netmamba-dataset"
FORMAT_VERSION = 1
PARTIAL_FORMAT = "netmamba-partial"
ROW_GROUP = 4096  # rows per Parquet row group (~15 MB with the default geometry)
PART_SUFFIX = ".arrow"  # stage-1 parts: Arrow IPC files (fast to write and map; temporary)


class PrepareError(Exception):
    """Nothing usable came out, or (`usage`) the inputs/outputs are wrong; says why."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass
class PrepareResult:
    output: Path
    manifest: dict
    partial: bool = False

    def summary(self) -> str:
        return format_summary(self.manifest)


# ---------------------------------------------------------------------------------------------
# stage 1: one capture file -> one Parquet part


_WORKER: dict = {}


def _init_worker(config_json: str, labels: LabelSource, parts_dir: str) -> None:
    _WORKER["config"] = PrepareConfig.from_json(config_json)
    _WORKER["labels"] = labels
    _WORKER["parts"] = Path(parts_dir)


def _extract_to_part(capture: CaptureInput) -> dict:
    import pyarrow as pa

    config: PrepareConfig = _WORKER["config"]
    labels: LabelSource = _WORKER["labels"]
    labeller = labels.for_capture(capture.path, capture.relative)
    report = FileReport(capture, CaptureStats(capture.path))
    part = _WORKER["parts"] / f"{capture.index:07d}{PART_SUFFIX}"
    writer = None
    try:
        for arrays, meta in iter_file_chunks(capture, config, labeller, report):
            table = to_table(arrays, meta)
            if writer is None:
                writer = pa.ipc.new_file(part, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return report.to_dict()


def _run_stage1(
    captures: list[CaptureInput],
    config: PrepareConfig,
    labels: LabelSource,
    parts_dir: Path,
    workers: int,
    progress: bool,
) -> list[FileReport]:
    from tqdm import tqdm

    parts_dir.mkdir(parents=True, exist_ok=True)
    init = (config.to_json(), labels, str(parts_dir))
    sizes = {c.path: _size(c.path) for c in captures}
    bar = tqdm(
        total=sum(sizes.values()),
        unit="B",
        unit_scale=True,
        desc="prepare",
        disable=not progress,
        dynamic_ncols=True,
    )
    results: list[dict] = []
    flows = 0

    def done(result: dict) -> None:
        nonlocal flows
        results.append(result)
        flows += result["kept"]
        bar.update(sizes[result["path"]])
        bar.set_postfix(files=len(results), flows=flows, refresh=False)

    try:
        if workers > 1 and len(captures) > 1:
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=init
            ) as pool:
                # biggest files first, so one late big file does not leave the others idle
                order = sorted(captures, key=lambda c: -sizes[c.path])
                for fut in as_completed([pool.submit(_extract_to_part, c) for c in order]):
                    done(fut.result())
        else:
            _init_worker(*init)
            for c in captures:
                done(_extract_to_part(c))
    finally:
        bar.close()
    return sorted((FileReport.from_dict(r) for r in results), key=lambda r: r.capture.index)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# stage 2: parts -> dataset


class _ShardWriter:
    """Rows of one split, written in order to `<split>-<k>.parquet` files of bounded size."""

    def __init__(self, folder: Path, split: str, rows_per_shard: int) -> None:
        self.folder, self.split, self.rows_per_shard = folder, split, rows_per_shard
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer = None
        self.file_rows = 0
        self.files: list[str] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if not len(table):
            return
        self.pending.append(table)
        self.pending_rows += len(table)
        if self.pending_rows >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_rows = [], 0
        start = 0
        while start < len(table):
            if self.writer is None:
                name = f"{self.split}-{len(self.files):05d}.parquet"
                self.writer = pq.ParquetWriter(self.folder / name, table.schema, compression="zstd")
                self.files.append(name)
                self.file_rows = 0
            take = min(len(table) - start, self.rows_per_shard - self.file_rows)
            self.writer.write_table(table.slice(start, take), row_group_size=ROW_GROUP)
            self.file_rows += take
            self.rows += take
            start += take
            if self.file_rows >= self.rows_per_shard:
                self.writer.close()
                self.writer = None

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _build(
    out_dir: Path,
    parts: list[Path],
    reports: list[FileReport],
    ignored: list[str],
    config: PrepareConfig,
    inputs: Sequence[str],
) -> dict:
    import pyarrow as pa

    labelled = config.labels.labelled
    import pyarrow.feather as feather

    meta_tables, lengths = [], []
    for part in parts:  # only the metadata columns, read into memory (no file stays open)
        t = feather.read_table(part, columns=list(META_COLUMNS), memory_map=False)
        meta_tables.append(t)
        lengths.append(len(t))
    meta = (pa.concat_tables(meta_tables) if meta_tables else meta_table([])).to_pandas()
    del meta_tables
    part_of = np.repeat(np.arange(len(parts)), lengths)
    row_of = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0, int)
    dropped: Counter[str] = Counter()
    for r in reports:
        dropped.update(r.dropped)
    flows_read = sum(r.flows for r in reports)
    keep, dropped_here = select_flows(meta, config.cleaning, config.split.seed, labelled)
    dropped.update(dropped_here)
    kept = meta[keep].reset_index(drop=True)
    if not len(kept):
        raise PrepareError(_nothing_usable(reports, dropped, config))
    label_names = sorted(set(kept["label"].tolist())) if labelled else []
    index = {name: i for i, name in enumerate(label_names)}
    label_ids = kept["label"].map(index).to_numpy(np.int64) if labelled else np.full(len(kept), -1)
    splits = assign_splits(kept, label_ids, config.split)
    kept["split"] = [SPLIT_NAMES[s] for s in splits.tolist()]

    data = out_dir / "data"
    data.mkdir()
    writers = {s: _ShardWriter(data, s, config.rows_per_shard) for s in SPLIT_NAMES}
    _write_splits(parts, part_of[keep], row_of[keep], splits, label_ids, writers)
    for w in writers.values():
        w.close()

    counts = {
        s: {
            name: int(c)
            for name, c in sorted(Counter(kept.loc[kept["split"] == s, "label"].tolist()).items())
        }
        if labelled
        else {}
        for s in SPLIT_NAMES
    }
    shapes = array_shapes(config.features)
    names = ARRAY_NAMES + (RAW_ARRAY_NAMES if config.keep_raw_bytes else ())
    stats = [r.stats for r in reports]
    skipped: Counter[str] = Counter()
    for s in stats:
        skipped.update(s.skipped)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "netmamba_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": list(inputs),
        "config": config.to_dict(),
        "labelled": labelled,
        "label_names": label_names,
        "arrays": {
            k: {"dtype": np.dtype(ARRAY_DTYPES[k]).name, "shape": list(shapes[k])} for k in names
        },
        "splits": {
            s: {"flows": writers[s].rows, "files": [f"data/{f}" for f in writers[s].files]}
            for s in SPLIT_NAMES
        },
        "counts": counts,
        "flows_read": flows_read,
        "flows": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "captures": {
            "files": len(reports),
            "usable": sum(1 for s in stats if s.usable),
            "with_errors": sum(1 for s in stats if s.error),
            "packets": sum(s.packets for s in stats),
            "packets_used": sum(s.used for s in stats),
            "packets_skipped": dict(sorted(skipped.items())),
            "ignored_files": len(ignored),
            "ignored_examples": ignored[:20],
        },
    }
    (out_dir / "captures.json").write_text(
        json.dumps([r.to_dict() for r in reports], indent=1) + "\n"
    )
    text = json.dumps(manifest, indent=2)
    (out_dir / "manifest.json").write_text(text + "\n")
    return json.loads(text)  # exactly what a reader of the file gets (lists, not tuples)


PARTS_AT_ONCE = 64  # parts mapped together when writing the shards (bounds open files)
TAKE_ROWS = 4096  # rows gathered at a time (~15 MB with the default geometry)


def _write_splits(
    parts: list[Path],
    part_of: np.ndarray,
    row_of: np.ndarray,
    splits: np.ndarray,
    label_ids: np.ndarray,
    writers: dict[str, _ShardWriter],
) -> None:
    """Copy the kept rows into their split's shards, in the global order (parts in order, rows
    in order), a group of parts at a time."""
    import pyarrow as pa

    for g in range(0, len(parts), PARTS_AT_ONCE):
        lo, hi = np.searchsorted(part_of, [g, g + PARTS_AT_ONCE])
        if lo == hi:
            continue
        tables = [_read_part(p) for p in parts[g : g + PARTS_AT_ONCE]]
        starts = np.cumsum([0, *(len(t) for t in tables)])
        table = pa.concat_tables(tables)
        rows = starts[part_of[lo:hi] - g] + row_of[lo:hi]
        for code, split in enumerate(SPLIT_NAMES):
            mask = splits[lo:hi] == code
            chosen, ids = rows[mask], label_ids[lo:hi][mask]
            for k in range(0, len(chosen), TAKE_ROWS):
                sub = table.take(pa.array(chosen[k : k + TAKE_ROWS]))
                sub = sub.append_column("label_id", pa.array(ids[k : k + TAKE_ROWS]))
                sub = sub.append_column("split", pa.array([split] * len(sub), pa.string()))
                writers[split].add(sub)
        del table, tables  # unmap this group's parts before the next


def _read_part(path: Path) -> pa.Table:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _nothing_usable(reports: list[FileReport], dropped: Counter, config: PrepareConfig) -> str:
    if not reports:
        return "no capture files found in the inputs"
    if not any(r.stats.usable for r in reports):
        errors = [f"{r.capture.path}: {r.stats.error}" for r in reports if r.stats.error][:5]
        detail = ("; ".join(errors)) if errors else "no IP packets in them"
        return f"no packets could be read from the {len(reports)} capture file(s): {detail}"
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(dropped.items())) or "none"
    hint = ""
    if dropped.get("no_label"):
        hint = (
            "; no flow got a label: check --labels (or the folder-per-class layout: "
            "INPUT/<class>/capture.pcap), or use --no-labels for pre-training data"
        )
    elif dropped.get("class_below_min"):
        hint = (
            f"; every class has fewer than {config.cleaning.min_per_class} flows (--min-per-class)"
        )
    return f"every flow was dropped (dropped: {reasons}){hint}"


# ---------------------------------------------------------------------------------------------
# entry points


def _temp_dir(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise PrepareError(
            f"{output}: already exists; choose another -o or pass --overwrite", usage=True
        )


def _publish(tmp: Path, output: Path) -> None:
    """Put the finished folder in place; an existing one is replaced only once it is done."""
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output)


def prepare(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: PrepareConfig | None = None,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_start: Callable[[int, int], None] | None = None,
) -> PrepareResult:
    """Captures (files or folders) -> a dataset folder, or with `shard=(i, n)` a partial
    folder for `merge_partials`. Raises PrepareError when nothing usable came out."""
    config = config or PrepareConfig()
    output = Path(output)
    _check_output(output, overwrite)
    try:
        captures, ignored = find_captures(inputs)
    except FileNotFoundError as exc:
        raise PrepareError(str(exc), usage=True) from None
    total = len(captures)
    list_hash = _list_hash([c.path for c in captures])
    if shard is not None:
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise PrepareError(f"--shard {i}/{n}: expected i/n with 0 <= i < n", usage=True)
        captures = [c for c in captures if c.index % n == i]
    if on_start:
        on_start(len(captures), len(ignored))
    labels = LabelSource(config.labels)
    tmp = _temp_dir(output)
    try:
        reports = _run_stage1(captures, config, labels, tmp / "parts", workers, progress)
        if shard is not None:
            partial = {
                "format": PARTIAL_FORMAT,
                "netmamba_version": __version__,
                "inputs": [str(x) for x in inputs],
                "config": config.to_dict(),
                "shard": list(shard),
                "captures_total": total,
                "capture_list_hash": list_hash,
                "reports": [r.to_dict() for r in reports],
                "ignored": ignored,
            }
            (tmp / "partial.json").write_text(json.dumps(partial, indent=1) + "\n")
            _publish(tmp, output)
            return PrepareResult(output, _partial_manifest(partial, reports), partial=True)
        parts = sorted((tmp / "parts").glob(f"*{PART_SUFFIX}"))
        manifest = _build(tmp, parts, reports, ignored, config, [str(x) for x in inputs])
        shutil.rmtree(tmp / "parts")
        _publish(tmp, output)
        return PrepareResult(output, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _list_hash(paths: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def _partial_manifest(partial: dict, reports: list[FileReport]) -> dict:
    dropped: Counter[str] = Counter()
    for r in reports:
        dropped.update(r.dropped)
    return {
        "partial": True,
        "shard": partial["shard"],
        "flows_read": sum(r.flows for r in reports),
        "flows": sum(r.kept for r in reports),
        "dropped": dict(sorted(dropped.items())),
        "captures": {
            "files": len(reports),
            "usable": sum(1 for r in reports if r.stats.usable),
            "with_errors": sum(1 for r in reports if r.stats.error),
            "packets": sum(r.stats.packets for r in reports),
            "packets_used": sum(r.stats.used for r in reports),
            "ignored_files": len(partial["ignored"]),
        },
        "config": partial["config"],
        "label_names": [],
        "counts": {},
        "splits": {},
    }


def merge_partials(
    partials: Sequence[str | Path], output: str | Path, *, overwrite: bool = False
) -> PrepareResult:
    """Partial folders of `prepare(..., shard=(i, n))` for every i -> one dataset."""
    output = Path(output)
    _check_output(output, overwrite)
    loaded = []
    for p in partials:
        path = Path(p)
        try:
            info = json.loads((path / "partial.json").read_text())
        except (OSError, ValueError) as exc:
            raise PrepareError(
                f"{path}: not a partial dataset of `netmamba prepare --shard` ({exc})", usage=True
            ) from None
        loaded.append((path, info))
    if not loaded:
        raise PrepareError("--merge needs the partial folders written by --shard i/n", usage=True)
    first = loaded[0][1]
    n = first["shard"][1]
    for path, info in loaded[1:]:
        for key in ("config", "captures_total", "capture_list_hash"):
            if info[key] != first[key]:
                raise PrepareError(
                    f"{path}: made with a different {key.replace('_', ' ')} than {loaded[0][0]}; "
                    "every shard must be prepared with the same inputs and settings",
                    usage=True,
                )
    seen = sorted(info["shard"][0] for _, info in loaded)
    if seen != list(range(n)) or any(info["shard"][1] != n for _, info in loaded):
        raise PrepareError(
            f"the partials cover shards {seen} of {n}: every shard 0..{n - 1} is needed once",
            usage=True,
        )
    config = PrepareConfig.from_dict(first["config"])
    reports = sorted(
        (FileReport.from_dict(r) for _, info in loaded for r in info["reports"]),
        key=lambda r: r.capture.index,
    )
    parts = sorted(
        (part for path, _ in loaded for part in (path / "parts").glob(f"*{PART_SUFFIX}")),
        key=lambda p: p.name,
    )
    ignored = sorted({x for _, info in loaded for x in info["ignored"]})
    tmp = _temp_dir(output)
    try:
        manifest = _build(tmp, parts, reports, ignored, config, first["inputs"])
        _publish(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(output, manifest)


# ---------------------------------------------------------------------------------------------
# the summary a person reads


def format_summary(manifest: dict) -> str:
    """Flows per class per split, dropped flows by reason, capture statistics."""
    lines = []
    counts = manifest.get("counts") or {}
    splits = manifest.get("splits") or {}
    if manifest.get("partial"):
        i, n = manifest["shard"]
        lines.append(
            f"partial result for shard {i}/{n}: {manifest['flows']} flows kept; merge all "
            "shards with `netmamba prepare --merge PARTIAL... -o DATASET`"
        )
    elif manifest.get("labelled"):
        names = manifest["label_names"]
        width = max([len("class"), len("total"), *map(len, names)])
        header = f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in (*SPLIT_NAMES, "total"))
        lines += [header, "-" * len(header)]
        for name in names:
            row = [counts.get(s, {}).get(name, 0) for s in SPLIT_NAMES]
            lines.append(f"{name:<{width}}  " + "  ".join(f"{v:>7}" for v in (*row, sum(row))))
        lines.append("-" * len(header))
        totals = [splits.get(s, {}).get("flows", 0) for s in SPLIT_NAMES]
        lines.append(f"{'total':<{width}}  " + "  ".join(f"{v:>7}" for v in (*totals, sum(totals))))
    else:
        totals = [splits.get(s, {}).get("flows", 0) for s in SPLIT_NAMES]
        lines.append(
            "unlabelled flows: "
            + ", ".join(f"{s} {v}" for s, v in zip(SPLIT_NAMES, totals, strict=True))
            + f", total {sum(totals)}"
        )
    dropped = manifest.get("dropped") or {}
    lines.append(
        f"flows: {manifest.get('flows_read', 0)} assembled, {manifest.get('flows', 0)} kept; "
        + (
            "dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items())
            if dropped
            else "none dropped"
        )
    )
    cap = manifest.get("captures") or {}
    line = (
        f"captures: {cap.get('files', 0)} read ({cap.get('usable', 0)} with IP packets, "
        f"{cap.get('with_errors', 0)} with errors); packets: {cap.get('packets', 0)} read, "
        f"{cap.get('packets_used', 0)} used"
    )
    skipped = cap.get("packets_skipped") or {}
    if skipped:
        line += "; skipped: " + ", ".join(f"{v} {k}" for k, v in skipped.items())
    lines.append(line)
    if cap.get("ignored_files"):
        lines.append(f"ignored {cap['ignored_files']} files that are not captures")
    return "\n".join(lines)
