"""Experiments as files: one YAML file names datasets, variants and settings and produces one
results table (Markdown and CSV), e.g. a whole table of the paper.

    name: LDA ablation
    vars:                        # ${NAME} anywhere below; set with --var NAME=VALUE or the
      DATASET: null              # environment; null = required, "" = optional (left out)
      EPOCHS: 120
    datasets:                    # name -> prepared dataset, or {path: ..., unknown: ...}
      main: ${DATASET}
    pretrain:                    # optional: pre-train each variant's model first
      data: [${DATASET}]         # default: every dataset of the experiment
      settings: {train: {steps: 150000}}          # a PretrainConfig (partial)
    defaults: {preset: paper, train: {epochs: ${EPOCHS}}}   # a FinetuneConfig (partial)
    variants:
      - name: cross-entropy
        settings: {loss: {kind: ce}}              # merged over the defaults
      - name: LDA
        init: pretrain           # pretrain (default with a pretrain section) | scratch | PATH
    columns: [accuracy, macro_f1, weighted_f1]
    baseline: true               # a GBDT row per dataset (and training fraction)

Every variant is fine-tuned on every dataset (or those it lists under `datasets:`). A variant
with `init: pretrain` starts from a pre-training run of its own model configuration; variants
with the same model share it. Runs live under OUT/: pretrain/<model>-<hash>/ and
runs/<variant>/<dataset>/; a run that finished is reused, one that was interrupted is resumed,
so running the same experiment again continues where it stopped. Results: OUT/results.md,
results.csv, results.json; each row points to its run folder (settings, report).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netmamba.config import ConfigError

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_KEYS = {
    "name",
    "description",
    "vars",
    "datasets",
    "pretrain",
    "defaults",
    "variants",
    "columns",
    "baseline",
    "evaluate",
}
VARIANT_KEYS = {"name", "settings", "init", "datasets", "description"}
DEFAULT_COLUMNS = ("accuracy", "macro_f1", "weighted_f1")
UNKNOWN_COLUMNS = ("unknown_auroc", "unknown_fpr_at_95_tpr")


class ExperimentError(ValueError):
    """The experiment file is not valid or cannot run; the message names the file and key."""


@dataclass
class Dataset:
    name: str
    path: str
    unknown: str | None = None


@dataclass
class Variant:
    name: str
    settings: dict[str, Any]  # FinetuneConfig fields (defaults merged in)
    init: str  # "pretrain" | "scratch" | a path
    datasets: list[str]


@dataclass
class Experiment:
    name: str
    source: Path
    datasets: dict[str, Dataset]
    variants: list[Variant]
    pretrain_data: list[str]
    pretrain_settings: dict[str, Any]
    columns: list[str]
    baseline: bool
    variables: dict[str, str]
    skipped: list[str] = field(default_factory=list)  # datasets left out (empty paths)


@dataclass
class Job:
    kind: str  # pretrain | finetune
    key: str
    folder: Path
    settings: dict[str, Any]
    dataset: Dataset | None = None
    variant: Variant | None = None
    data: list[str] = field(default_factory=list)
    init: str | None = None  # finetune: the checkpoint folder or file, or None (scratch)
    baseline: bool = False


# ---------------------------------------------------------------------------------------------
# reading


def _substitute(value: Any, variables: Mapping[str, str], where: str, missing: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}.{k}", missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, f"{where}[{i}]", missing) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    names = VAR.findall(value)
    for name in names:
        if name not in variables:
            missing.add(name)
    if not names or any(n not in variables for n in names):
        return value
    whole = VAR.fullmatch(value.strip())
    if whole:  # "${EPOCHS}" alone: keep the value's type (a number, a list, ...)
        import yaml

        text = variables[whole.group(1)]
        try:
            parsed = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            parsed = text
        return parsed if parsed is not None else ""
    return VAR.sub(lambda m: str(variables[m.group(1)]), value)


def load_experiment(
    path: str | Path, variables: Mapping[str, str] | None = None, *, use_environment: bool = True
) -> Experiment:
    """Read and check an experiment file; variables: given > environment > the file's `vars`."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except yaml.YAMLError as exc:
        raise ExperimentError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: expected a mapping at the top")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ExperimentError(
            f"{path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(TOP_KEYS))}"
        )
    declared = raw.get("vars") or {}
    values: dict[str, str] = {}
    for name, default in declared.items():
        if use_environment and name in os.environ:
            values[name] = os.environ[name]
        elif default is not None:
            values[name] = default if isinstance(default, str) else json.dumps(default)
    for name, value in (variables or {}).items():
        if name not in declared:
            raise ExperimentError(
                f"{path}: --var {name}: the file declares no such variable (it has "
                f"{', '.join(declared) or 'none'})"
            )
        values[name] = value
    missing: set[str] = set()
    body = _substitute({k: v for k, v in raw.items() if k != "vars"}, values, "", missing)
    if missing:
        names = sorted(missing)
        raise ExperimentError(
            f"{path}: set the variable(s) {', '.join(names)}: --var {names[0]}=VALUE (or the "
            f"environment variable {names[0]})"
        )
    return _build(path, body, values)


def _build(path: Path, body: dict[str, Any], values: dict[str, str]) -> Experiment:
    from netmamba.train.finetune import FinetuneConfig

    def bad(message: str) -> ExperimentError:
        return ExperimentError(f"{path}: {message}")

    datasets: dict[str, Dataset] = {}
    skipped = []
    for name, spec in (body.get("datasets") or {}).items():
        if isinstance(spec, str) or spec is None:
            spec = {"path": spec or ""}
        if not isinstance(spec, dict) or set(spec) - {"path", "unknown"}:
            raise bad(f"datasets.{name}: a path or {{path: ..., unknown: ...}}")
        if not spec.get("path"):
            skipped.append(name)
            continue
        datasets[str(name)] = Dataset(str(name), str(spec["path"]), spec.get("unknown") or None)
    if not datasets:
        raise bad("no dataset to run on (every dataset path is empty); set their variables")
    defaults = body.get("defaults") or {}
    pretrain = body.get("pretrain")
    variants = []
    for i, spec in enumerate(body.get("variants") or []):
        if not isinstance(spec, dict) or "name" not in spec:
            raise bad(f"variants[{i}]: a mapping with at least a name")
        extra = sorted(set(spec) - VARIANT_KEYS)
        if extra:
            raise bad(f"variants[{i}] ({spec['name']}): unknown key(s) {', '.join(extra)}")
        settings = _merge(defaults, spec.get("settings") or {})
        try:
            FinetuneConfig.from_dict(settings)
        except (ConfigError, TypeError, ValueError) as exc:
            raise bad(f"variants[{i}] ({spec['name']}): settings: {exc}") from None
        init = str(spec.get("init") or ("pretrain" if pretrain else "scratch"))
        if init == "pretrain" and not pretrain:
            raise bad(f"variant {spec['name']}: init pretrain, but there is no pretrain section")
        names = [d for d in (spec.get("datasets") or list(datasets)) if d not in skipped]
        for d in names:
            if d not in datasets:
                raise bad(f"variant {spec['name']}: unknown dataset {d!r}")
        variants.append(Variant(str(spec["name"]), settings, init, names))
    if not variants:
        raise bad("no variants")
    if len({v.name for v in variants}) != len(variants):
        raise bad("variant names must be unique")
    pretrain = pretrain or {}
    if set(pretrain) - {"data", "settings"}:
        raise bad("pretrain: accepted keys are data and settings")
    data = [str(d) for d in (pretrain.get("data") or []) if d]
    data = data or [ds.path for ds in datasets.values()]  # default: the experiment's datasets
    columns = list(body.get("columns") or DEFAULT_COLUMNS)
    return Experiment(
        str(body.get("name") or path.stem),
        path,
        datasets,
        variants,
        data,
        dict(pretrain.get("settings") or {}),
        columns,
        bool(body.get("baseline", True)),
        values,
        skipped,
    )


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------
# planning


def slug(text: str) -> str:
    """A folder name for a variant or dataset name ("NetMamba+" -> "netmamba-plus")."""
    text = text.replace("+", " plus ").replace("%", " pct ")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def plan(exp: Experiment, out: str | Path) -> list[Job]:
    """The runs, in order: each pre-training once, then every (variant, dataset) fine-tuning."""
    from netmamba.models import ModelConfig
    from netmamba.train.finetune import TUNABLE, FinetuneConfig
    from netmamba.train.pretrain import PretrainConfig

    out = Path(out)
    jobs: list[Job] = []
    pretrains: dict[str, Job] = {}
    baselines: set[tuple[str, float]] = set()
    folders: dict[str, str] = {}  # variant folder -> variant name (kept unique)
    for variant in exp.variants:
        folder = slug(variant.name)
        while folders.get(folder, variant.name) != variant.name:
            folder += "-2"
        folders[folder] = variant.name
        config = FinetuneConfig.from_dict(variant.settings)
        init: str | None = None
        if variant.init == "pretrain":
            model = {k: v for k, v in config.model.items() if k not in TUNABLE}
            settings = _merge(exp.pretrain_settings, {})
            settings["preset"] = settings.get("preset", config.preset)
            settings["model"] = {**model, **settings.get("model", {})}
            try:
                PretrainConfig.from_dict(settings)
            except (ConfigError, TypeError, ValueError) as exc:
                raise ExperimentError(f"{exp.source}: pretrain settings: {exc}") from None
            try:
                resolved = ModelConfig.preset(settings["preset"], **settings["model"])
            except (ConfigError, TypeError) as exc:
                raise ExperimentError(f"{exp.source}: variant {variant.name}: {exc}") from None
            rest = {k: v for k, v in settings.items() if k not in ("preset", "model")}
            key = _digest({"model": resolved.to_dict(), "rest": rest, "data": exp.pretrain_data})
            if key not in pretrains:
                name = f"{settings['preset']}-{resolved.backbone}-{resolved.variant}-{key}"
                job = Job(
                    "pretrain", key, out / "pretrain" / name, settings, data=list(exp.pretrain_data)
                )
                pretrains[key] = job
                jobs.append(job)
            init = str(pretrains[key].folder)
        elif variant.init != "scratch":
            init = variant.init
        for name in variant.datasets:
            dataset = exp.datasets[name]
            pair = (name, config.fraction)
            baseline = exp.baseline and pair not in baselines
            baselines.add(pair)
            settings = dict(variant.settings)
            if not baseline:
                settings["baseline"] = None
            jobs.append(
                Job(
                    "finetune",
                    f"{variant.name}/{name}",
                    out / "runs" / folder / slug(name),
                    settings,
                    dataset=dataset,
                    variant=variant,
                    init=init,
                    baseline=baseline,
                )
            )
    return jobs


def describe_plan(exp: Experiment, jobs: list[Job]) -> str:
    lines = [f"experiment {exp.name!r} ({exp.source}): {len(jobs)} runs"]
    for name in exp.skipped:
        lines.append(f"  dataset {name}: no path given, left out")
    for job in jobs:
        if job.kind == "pretrain":
            lines.append(f"  pretrain  {job.folder}  on {', '.join(job.data)}")
        else:
            assert job.dataset is not None
            start = job.init or "scratch"
            extra = " + baseline" if job.baseline else ""
            extra += f" + unknown ({job.dataset.unknown})" if job.dataset.unknown else ""
            lines.append(
                f"  finetune  {job.folder}  {job.key} on {job.dataset.path} from {start}{extra}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running


def _done(folder: Path, kind: str) -> bool:
    if kind == "pretrain":
        return (folder / "checkpoint" / "checkpoint.json").is_file()
    return (folder / "metrics.json").is_file()


def run_experiment(
    exp: Experiment,
    out: str | Path,
    *,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or continue) every job of the plan and write the results table; returns its rows."""
    from netmamba.evaluate.report import read_metrics_json
    from netmamba.evaluate.run import evaluate
    from netmamba.train.finetune import FinetuneConfig, finetune
    from netmamba.train.pretrain import PretrainConfig, pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(exp, out)
    (out / "experiment.json").write_text(
        json.dumps(
            {"name": exp.name, "source": str(exp.source), "variables": exp.variables}, indent=2
        )
        + "\n"
    )
    for i, job in enumerate(jobs, 1):
        started = time.perf_counter()
        if _done(job.folder, job.kind):
            log(f"[{i}/{len(jobs)}] {job.kind} {job.key}: done before, reused ({job.folder})")
            continue
        resume = (job.folder / "run.json").is_file()
        log(f"[{i}/{len(jobs)}] {job.kind} {job.key}{' (resumed)' if resume else ''}")
        if job.kind == "pretrain":
            pretrain(
                job.data,
                job.folder,
                PretrainConfig.from_dict(job.settings),
                resume=resume,
                device=device,
                threads=threads,
                progress=progress,
            )
        else:
            assert job.dataset is not None
            finetune(
                job.dataset.path,
                job.folder,
                FinetuneConfig.from_dict(job.settings),
                init=job.init,
                resume=resume,
                device=device,
                threads=threads,
                progress=progress,
            )
            if job.dataset.unknown:
                evaluate(
                    job.folder,
                    job.dataset.path,
                    job.folder / "unknown",
                    unknown=job.dataset.unknown,
                    baseline=None,
                    batch_sizes=None,
                    device=device,
                    threads=threads,
                )
        log(f"    {time.perf_counter() - started:.1f} s")
    rows = []
    for job in jobs:
        if job.kind != "finetune":
            continue
        assert job.dataset is not None and job.variant is not None
        metrics = read_metrics_json(job.folder)
        config = FinetuneConfig.from_dict(job.settings)
        row: dict[str, Any] = {
            "variant": job.variant.name,
            "dataset": job.dataset.name,
            "model": metrics.get("model_name"),
            "init": (metrics.get("init") or {}).get("kind"),
            "fraction": config.fraction,
        }
        row.update({c: metrics.get(c) for c in exp.columns})
        if job.dataset.unknown:
            unknown = read_metrics_json(job.folder / "unknown")
            row.update({c: unknown.get(c) for c in UNKNOWN_COLUMNS})
        row["run"] = str(job.folder)
        rows.append(row)
        if job.baseline and metrics.get("baseline"):
            base = {
                "variant": "GBDT baseline",
                "dataset": job.dataset.name,
                "model": "GBDT",
                "init": "-",
                "fraction": config.fraction,
            }
            base.update({c: metrics["baseline"].get(c) for c in exp.columns})
            base["run"] = str(job.folder)
            rows.append(base)
    write_results(out, exp, rows)
    return rows


def _cell(value: Any, key: str = "") -> str:
    if key == "fraction" and isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def write_results(out: Path, exp: Experiment, rows: list[dict[str, Any]]) -> None:
    """results.md (a Markdown table), results.csv and results.json in `out`."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    shown = [k for k in keys if k != "run"]
    lines = [
        f"# {exp.name}",
        "",
        f"From `{exp.source}`"
        + (
            f" with {', '.join(f'{k}={v}' for k, v in exp.variables.items())}"
            if exp.variables
            else ""
        )
        + ". Test split of each dataset; every run's settings and report are in its"
        " folder (`run` column of results.csv).",
        "",
        "| " + " | ".join(shown) + " |",
        "|"
        + "|".join("---" if k in ("variant", "dataset", "model", "init") else "---:" for k in shown)
        + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), k) for k in shown) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in keys})
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
