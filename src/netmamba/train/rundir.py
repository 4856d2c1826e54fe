"""Run folders: what a training run writes, and the rules for starting, replacing, resuming.

    RUN/run.json          what the run is: kind, settings, data, model, processes, version
    RUN/metrics.jsonl     one row per `log_every` steps and one per epoch (train/loop.py)
    RUN/last/             the latest resume state (train/checkpoint.py)
    RUN/checkpoint/       pre-training: the final model (what `finetune --from RUN` loads)
    RUN/best/             fine-tuning: the best model by the validation metric, calibrated
    RUN/metrics.json      fine-tuning: test metrics, baseline, calibration, history
    RUN/report.html       fine-tuning: the report

A folder that exists is never reused silently: `resume` continues it (with the settings it was
started with; other settings are an error naming them), `overwrite` replaces it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from netmamba import __version__

RUN_FILE = "run.json"


class TrainError(Exception):
    """A problem the user can fix (data, settings, folders); the message says how."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Fail early (before loading data) when the folder cannot be used as asked."""
    run_dir = Path(run_dir)
    if resume and not (run_dir / RUN_FILE).is_file():
        raise TrainError(
            f"{run_dir}: nothing to resume (no {RUN_FILE}); start the run without --resume"
        )
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainError(
                f"{run_dir} already exists: add --resume to continue that run, --overwrite to "
                "replace it, or choose another folder"
            )
        if not (run_dir / RUN_FILE).is_file():
            raise TrainError(
                f"{run_dir} exists and is not a run folder (no {RUN_FILE}): refusing to "
                "delete it; choose another folder"
            )


def open_run_dir(
    run_dir: str | Path,
    record: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    is_main: bool = True,
) -> Path:
    """Make `run_dir` ready for a run described by `record` (written to run.json)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if resume:
        if not path.is_file():
            raise TrainError(
                f"{run_dir}: nothing to resume (no {RUN_FILE}); start the run without --resume"
            )
        old = json.loads(path.read_text())
        if old.get("kind") != record.get("kind"):
            raise TrainError(f"{run_dir}: a {old.get('kind')} run, not a {record.get('kind')} run")
        theirs = _flatten(old.get("compare", {}))
        ours = _flatten(json.loads(json.dumps(record.get("compare", {}))))  # tuples -> lists
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if changed:
            details = "; ".join(f"{k}: {theirs.get(k)!r} -> {ours.get(k)!r}" for k in changed[:6])
            raise TrainError(
                f"{run_dir}: cannot resume with other settings ({details}); run the command the "
                "run was started with, plus --resume"
            )
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TrainError(
                f"{run_dir} already exists: add --resume to continue that run, --overwrite to "
                "replace it, or choose another folder"
            )
        if is_main:
            if not path.is_file():
                raise TrainError(
                    f"{run_dir} exists and is not a run folder (no {RUN_FILE}): refusing to "
                    "delete it; choose another folder"
                )
            shutil.rmtree(run_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        full = {
            **record,
            "netmamba_version": __version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path.write_text(json.dumps(full, indent=2) + "\n")
    return run_dir


def read_run(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainError(f"{run_dir}: not a run folder (no {RUN_FILE})") from None
