"""Fine-tuning (SPEC section 5): a classifier on a labelled dataset, best checkpoint by a
validation metric, calibrated, tested once, reported beside the classical baseline.

    result = finetune("data/iot", "runs/iot", FinetuneConfig(preset="fast"), init="runs/pre")

init: our pre-training run or checkpoint (its encoder), a fine-tuned checkpoint (its encoder;
      the head is new), the authors' released `.pth` (imported), or None (from scratch).
loss: the LDA loss (class-balanced weights + LDAM margins, optionally deferred re-weighting)
      or cross-entropy, both with label smoothing (train/loss.py). The LDA loss (and any
      cosine head) reads s x logits, so the checkpoint stores s as the model's logit scale.
optimiser: AdamW with layer-wise lr decay 0.75, lr = 2e-3 x batch / 256, warm-up then cosine
      to 1e-6 (train/optim.py); drop path 0.1; optional gradient clipping and bf16 autocast.
linear probe: the encoder is frozen (and kept in eval mode); only the fusion and head learn.
few-shot: a seeded stratified `fraction` of the training split.

After the last epoch the best model (by `select_metric` on the validation split) is reloaded;
the temperature and the unknown-class threshold are fitted on the validation split and stored
in its checkpoint with the label names and the data's flow / feature / de-biasing settings;
the test split is scored once, the baseline beside it: RUN/metrics.json and RUN/report.html.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netmamba.config import Config, ConfigError
from netmamba.dataset import DatasetError, FlowDataset, load_dataset
from netmamba.evaluate.baseline import BaselineConfig
from netmamba.evaluate.calibration import fit_temperature, nll
from netmamba.evaluate.metrics import SUMMARY_KEYS, classification_metrics
from netmamba.evaluate.ood import SCORE_KINDS, UnknownDetector
from netmamba.evaluate.report import data_summary
from netmamba.models import Classifier, ModelConfig, build_classifier
from netmamba.models.weights import (
    CheckpointError,
    import_authors_checkpoint,
    load_checkpoint,
    load_encoder,
    read_metadata,
)
from netmamba.train.checkpoint import write_checkpoint_atomically
from netmamba.train.common import collective, dataset_arrays, model_config
from netmamba.train.data import BatchPlan, slices, stratified_fraction
from netmamba.train.distributed import Distributed
from netmamba.train.distributed import setup as setup_distributed
from netmamba.train.loop import (
    LoopResult,
    StepLoss,
    Task,
    TrainConfig,
    read_metrics_log,
    run_loop,
)
from netmamba.train.loss import LDALoss, LossConfig, build_loss
from netmamba.train.loss import logit_scale as loss_logit_scale
from netmamba.train.optim import OptimConfig, WarmupCosineSchedule, build_optimizer, effective_lr
from netmamba.train.rundir import TrainError, check_run_dir, open_run_dir

log = logging.getLogger(__name__)

SELECT_METRICS = ("macro_f1", "accuracy", "weighted_f1", "loss")
# ModelConfig fields a fine-tuning run may change on a pre-trained model (the rest define the
# encoder's weights and must stay as they were)
TUNABLE = ("dropout", "drop_path", "fusion", "head", "head_bias", "mask_padding")
# fields of the authors' checkpoint its tensors do not fully determine (given in settings.model)
AUTHORS_GEOMETRY = (
    "n_packets",
    "header_bytes",
    "payload_bytes",
    "seq_len",
    "mtu",
    "signed_sizes",
    "size_offset",
    "variant",
    "patch_size",
    "image_width",
)


def _finetune_train() -> TrainConfig:
    return TrainConfig(batch_size=64, epochs=120, checkpoint_every=500, log_every=10)


@dataclass
class FinetuneConfig(Config):
    """Settings of a fine-tuning run (SPEC section 5 by default)."""

    preset: str = "paper"  # ModelConfig preset when training from scratch: paper | fast
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields to override
    train: TrainConfig = field(default_factory=_finetune_train)
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW, layer decay 0.75, blr 2e-3
    warmup_epochs: float = 5.0  # linear warm-up (used when optim.warmup_steps is 0)
    loss: LossConfig = field(default_factory=LossConfig)  # LDA, label smoothing 0.1
    linear_probe: bool = False  # freeze the encoder; train the fusion and head only
    fraction: float = 1.0  # few-shot: this stratified share of the training split
    select_metric: str = "macro_f1"  # validation metric that picks the kept checkpoint
    unknown_score: str = "entropy"  # the unknown-class detector's score
    accept_rate: float = 0.95  # share of known validation flows its threshold accepts
    baseline: BaselineConfig | None = field(default_factory=BaselineConfig)  # None: no baseline
    throughput_batch_sizes: list[int] = field(default_factory=list)  # measured after training

    def __post_init__(self) -> None:
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(
                f"FinetuneConfig.select_metric must be one of {', '.join(SELECT_METRICS)}"
            )
        if self.unknown_score not in SCORE_KINDS:
            raise ConfigError(
                f"FinetuneConfig.unknown_score must be one of {', '.join(SCORE_KINDS)}"
            )
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("FinetuneConfig.fraction must be in (0, 1]")
        if not 0.0 < self.accept_rate <= 1.0:
            raise ConfigError("FinetuneConfig.accept_rate must be in (0, 1]")
        if self.warmup_epochs < 0:
            raise ConfigError("FinetuneConfig.warmup_epochs must be >= 0")


# ---------------------------------------------------------------------------------------------
# the model to start from


@dataclass
class Init:
    model: Classifier
    kind: str  # scratch | pretrained | finetuned | authors
    source: str | None
    report: str  # what was loaded


def resolve_init_path(init: str | Path) -> Path:
    from netmamba.inference import resolve_checkpoint

    path = Path(init)
    if path.is_file():
        return path
    try:
        return resolve_checkpoint(path)
    except CheckpointError as exc:
        raise TrainError(f"--from {init}: {exc}") from None


def _tuned(base: ModelConfig, overrides: dict[str, Any], source: str) -> ModelConfig:
    fixed = sorted(
        k for k in overrides if k not in TUNABLE and overrides[k] != getattr(base, k, None)
    )
    if fixed:
        raise TrainError(
            f"cannot change {', '.join(fixed)} of the pre-trained model {source} (its weights "
            f"depend on them); fine-tuning may only change {', '.join(TUNABLE)}"
        )
    try:
        return base.replace(**{k: v for k, v in overrides.items() if k in TUNABLE})
    except ConfigError as exc:
        raise TrainError(f"model settings: {exc}") from None


def build_initial_model(
    config: FinetuneConfig, init: str | Path | None, num_classes: int, signed_sizes: bool
) -> Init:
    """The classifier to fine-tune (see the module docstring, init)."""
    if init is None:
        mc = model_config(config.preset, config.model, signed_sizes)
        return Init(build_classifier(mc, num_classes), "scratch", None, "trained from scratch")
    path = resolve_init_path(init)
    if path.is_file():
        try:  # the geometry is read from the tensors; settings may name what they cannot say
            geometry = {k: v for k, v in config.model.items() if k in AUTHORS_GEOMETRY}
            imported = import_authors_checkpoint(path, **geometry)
        except CheckpointError as exc:
            raise TrainError(f"--from {init}: {exc}") from None
        mc = _tuned(imported.config, config.model, str(path))
        model = build_classifier(mc, num_classes)
        report = load_encoder(model, imported.model)
        return Init(model, "authors", str(path), f"{imported.summary()}; {report.summary()}")
    try:
        meta = read_metadata(path)
        base = ModelConfig.from_dict(meta["model"])
    except (CheckpointError, ConfigError) as exc:
        raise TrainError(f"--from {init}: {exc}") from None
    mc = _tuned(base, config.model, str(path))
    model = build_classifier(mc, num_classes)
    try:
        report = load_encoder(model, path)
    except CheckpointError as exc:
        raise TrainError(f"--from {init}: {exc}") from None
    kind = "pretrained" if meta.get("kind") == "pretrainer" else "finetuned"
    return Init(model, kind, str(path), report.summary())


# ---------------------------------------------------------------------------------------------
# the task for the loop


class FinetuneTask(Task):
    def __init__(
        self,
        model: Classifier,
        arrays: dict[str, np.ndarray],
        loss: nn.Module,
        valid: tuple[dict[str, np.ndarray], np.ndarray] | None,
        config: FinetuneConfig,
        run_dir: Path,
        extra: dict[str, Any],
        fingerprint: dict[str, Any],
    ) -> None:
        self.model = model
        self.arrays = arrays
        self.loss = loss
        self.valid = valid
        self.config = config
        self.run_dir = run_dir
        self.extra = extra
        self._fingerprint = fingerprint
        self.logit_scale = float(extra["logit_scale"])
        self.best: dict[str, Any] = {}

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def train_mode(self) -> None:
        self.model.train()
        if self.config.linear_probe:
            self.model.encoder.eval()  # frozen: no drop path, no dropout

    def step_loss(
        self, forward: nn.Module, batch: dict[str, np.ndarray], generator: torch.Generator
    ) -> StepLoss:
        labels = torch.as_tensor(batch["labels"], dtype=torch.int64, device=self.model.device)
        logits = forward(batch)  # (B, C)
        loss = self.loss(logits, labels)
        if isinstance(self.loss, LDALoss) and self.loss.weights_active:
            weight = float(self.loss.weights[labels].sum())
        else:
            weight = float(len(labels))
        return StepLoss(loss, weight)

    def valid_logits(self, dist: Distributed) -> np.ndarray | None:
        """Logits (x the logit scale) of the validation split, each process a share."""
        if self.valid is None:
            return None
        arrays, labels = self.valid
        parts = np.array_split(np.arange(len(labels)), dist.world_size)[dist.rank]
        mine = (
            logits_of(
                self.model,
                {k: v[parts] for k, v in arrays.items()},
                self.config.train.eval_batch_size,
            )
            * self.logit_scale
        )
        return np.concatenate(dist.all_gather_object(mine))

    def end_of_epoch(self, epoch: int, step: int, dist: Distributed) -> dict[str, float]:
        logits = self.valid_logits(dist)
        metrics: dict[str, float] = {}
        if logits is not None:
            labels = self.valid[1]  # type: ignore[index]
            m = classification_metrics(labels, logits.argmax(1), num_classes=logits.shape[1])
            metrics = {f"valid_{k}": float(m[k]) for k in ("accuracy", "macro_f1", "weighted_f1")}
            metrics["valid_loss"] = nll(logits, labels) if logits.shape[1] > 1 else 0.0
            key = (
                "valid_loss"
                if self.config.select_metric == "loss"
                else (f"valid_{self.config.select_metric}")
            )
            value = metrics[key]
            better = not self.best or (
                value < self.best["value"] if key == "valid_loss" else value > self.best["value"]
            )
        else:
            key, value, better = "last epoch (no validation split)", float(epoch), True
        if better:
            self.best = {"epoch": epoch + 1, "step": step, "metric": key, "value": value}
            if dist.is_main:
                write_checkpoint_atomically(
                    self.run_dir / "best", self.model, {**self.extra, "best": self.best}
                )
            dist.barrier()
        return metrics

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.extra

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best") or {})


@torch.inference_mode()
def logits_of(model: Classifier, arrays: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """(n, C) float32 raw model outputs, in eval mode (the caller restores train mode)."""
    was = model.training
    model.eval()
    n = len(arrays["bytes"])
    out = np.zeros((n, model.num_classes), np.float32)
    try:
        for part in slices(n, batch_size):
            batch = {k: v[part] for k, v in arrays.items() if k != "labels"}
            out[part] = model(batch).float().cpu().numpy()
    finally:
        model.train(was)
    return out


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class FinetuneResult:
    run_dir: Path
    checkpoint: Path  # RUN/best
    metrics: dict[str, Any]  # what metrics.json holds
    loop: LoopResult


def _load_split(path: str | Path, split: str) -> FlowDataset:
    try:
        return load_dataset(path, split, raw=False)
    except DatasetError as exc:
        raise TrainError(str(exc)) from None


def finetune(
    dataset: str | Path,
    run_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    init: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    dist: Distributed | None = None,
) -> FinetuneResult | None:
    """Fine-tune on `dataset` into `run_dir` (module docstring). Returns the result on rank 0
    (None on the other processes)."""
    config = config or FinetuneConfig()
    run_dir = Path(run_dir)
    own_dist = dist is None
    dist = dist or setup_distributed(device, threads)
    try:
        return _finetune(
            dataset, run_dir, config, init, resume, overwrite, progress, stop_after, dist
        )
    finally:
        if own_dist:
            dist.close()


def _finetune(
    dataset: str | Path,
    run_dir: Path,
    config: FinetuneConfig,
    init: str | Path | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    stop_after: int | None,
    dist: Distributed,
) -> FinetuneResult | None:
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    train_ds = _load_split(dataset, "train")
    if not train_ds.manifest.get("labelled"):
        raise TrainError(
            f"{dataset}: the dataset has no labels; fine-tuning needs labelled flows (prepare "
            "it with labels; unlabelled data serves `netmamba pretrain`)"
        )
    names = list(train_ds.label_names)
    if len(names) < 2:
        raise TrainError(f"{dataset}: fine-tuning needs at least 2 classes (found {names})")
    valid_ds, test_ds = _load_split(dataset, "valid"), _load_split(dataset, "test")
    signed = train_ds.config.flow.bidirectional
    torch.manual_seed(config.train.seed)
    start = build_initial_model(config, init, len(names), signed)
    model = start.model.to(dist.device)
    mc = model.config
    train_arrays = dataset_arrays(train_ds, mc, f"{dataset} (train)")
    labelled = np.flatnonzero(train_ds.labels >= 0)
    subset = labelled[
        stratified_fraction(train_ds.labels[labelled], config.fraction, config.train.seed)
    ]
    if len(subset) == 0:
        raise TrainError(f"{dataset}: the train split has no labelled flow")
    train = {k: v[subset] for k, v in train_arrays.items()}
    train["labels"] = train_ds.labels[subset]
    counts = np.bincount(train["labels"], minlength=len(names))
    valid = None
    if len(valid_ds) and (valid_ds.labels >= 0).any():
        keep = np.flatnonzero(valid_ds.labels >= 0)
        va = dataset_arrays(valid_ds, mc, f"{dataset} (valid)")
        valid = ({k: v[keep] for k, v in va.items()}, valid_ds.labels[keep])
    else:
        log.warning(
            "%s: no validation flows; the last epoch's model is kept, uncalibrated", dataset
        )

    if config.linear_probe:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    loss_fn = build_loss(config.loss, counts, mc.head).to(dist.device)
    logit_scale = loss_logit_scale(config.loss, mc.head)

    tc = config.train
    plan = BatchPlan(len(subset), tc.batch_size, tc.seed, dist.world_size)
    total = tc.steps or plan.steps_for_epochs(tc.epochs)
    optimizer = build_optimizer(model, config.optim, tc.batch_size)
    warmup = (
        config.optim.warmup_for(total)
        if (config.optim.warmup_steps or config.optim.warmup_fraction)
        else min(total, round(config.warmup_epochs * plan.steps_per_epoch))
    )
    schedule = WarmupCosineSchedule(
        optimizer,
        effective_lr(config.optim.base_lr, tc.batch_size),
        total,
        warmup,
        config.optim.min_lr,
    )
    extra = {
        "label_names": names,
        "logit_scale": logit_scale,
        "features": mc.feature_config().to_dict(),
        "data_features": train_ds.feature_config.to_dict(),
        "flow": train_ds.config.flow.to_dict(),
        "debias": train_ds.config.debias.to_dict(),
        "cleaning": train_ds.config.cleaning.to_dict(),  # min_packets: what classify scores
        "finetune": config.to_dict(),
        "init": {"kind": start.kind, "source": start.source, "report": start.report},
        "dataset": {
            "path": str(dataset),
            "created": train_ds.manifest.get("created"),
            "train_flows": len(subset),
            "class_counts": counts.tolist(),
        },
        "loss": loss_fn.describe(),
    }
    fingerprint = {
        "dataset": str(Path(dataset).resolve()),
        "created": train_ds.manifest.get("created"),
        "train_flows": len(subset),
        "class_counts": counts.tolist(),
    }
    record = {
        "kind": "finetune",
        "compare": {"config": config.to_dict(), "dataset": fingerprint, "init": start.source},
        "config": config.to_dict(),
        "model": mc.to_dict(),
        "init": extra["init"],
        "dataset": extra["dataset"],
        "loss": extra["loss"],
        "world_size": dist.world_size,
        "steps": total,
        "steps_per_epoch": plan.steps_per_epoch,
    }
    collective(dist, lambda: open_run_dir(run_dir, record, resume=resume, overwrite=overwrite))
    dist.barrier()
    if dist.is_main:
        log.info("model: %s; init: %s", mc.backbone, start.report)
    task = FinetuneTask(model, train, loss_fn, valid, config, run_dir, extra, fingerprint)
    result = run_loop(
        task,
        tc,
        optimizer,
        schedule,
        plan,
        total,
        run_dir,
        dist,
        resume=resume,
        progress=progress,
        stop_after=stop_after,
    )
    if not dist.is_main:
        dist.barrier()
        return None
    metrics = _finish(
        run_dir, dataset, config, train, valid, test_ds, names, mc, dist, task, result
    )
    dist.barrier()
    return FinetuneResult(run_dir, run_dir / "best", metrics, result)


def _finish(
    run_dir: Path,
    dataset: str | Path,
    config: FinetuneConfig,
    train: dict[str, np.ndarray],
    valid: tuple[dict[str, np.ndarray], np.ndarray] | None,
    test_ds: FlowDataset,
    names: list[str],
    mc: ModelConfig,
    dist: Distributed,
    task: FinetuneTask,
    loop: LoopResult,
) -> dict[str, Any]:
    """Rank 0: calibrate the best model, store its detector, test once, write the report."""
    from netmamba.evaluate.run import FittedData, Split, assess, write_outputs
    from netmamba.inference import Predictor

    best_dir = run_dir / "best"
    checkpoint = load_checkpoint(best_dir, dist.device)
    model: Classifier = checkpoint.model  # type: ignore[assignment]
    extra = dict(checkpoint.extra)
    scale = float(extra["logit_scale"])
    detector = UnknownDetector(config.unknown_score, 1.0, None, config.accept_rate)
    valid_logits = None
    if valid is not None:
        valid_logits = logits_of(model, valid[0], config.train.eval_batch_size) * scale
        temperature = fit_temperature(valid_logits, valid[1])
        detector = UnknownDetector.fit(
            valid_logits, config.unknown_score, temperature, config.accept_rate
        )
    extra["temperature"] = detector.temperature
    extra["unknown_detector"] = detector.to_dict()
    write_checkpoint_atomically(best_dir, model, extra)

    predictor = Predictor(
        model,
        names,
        logit_scale=scale,
        detector=detector,
        data_features=test_ds.feature_config,
        flow=test_ds.config.flow,
        debias=test_ds.config.debias,
        metadata=extra,
        path=best_dir,
    )
    test_arrays = dataset_arrays(test_ds, mc, f"{dataset} (test)")
    splits = {"train": Split({k: v for k, v in train.items() if k != "labels"}, train["labels"])}
    logits = {}
    if valid is not None:
        splits["valid"] = Split(valid[0], valid[1])
        logits["valid"] = valid_logits
    splits["test"] = Split(test_arrays, test_ds.labels)
    if not (test_ds.labels >= 0).any():
        log.warning("%s: the test split is empty; no test metrics", dataset)
        results: dict[str, Any] = {k: None for k in SUMMARY_KEYS}
    else:
        results = assess(
            predictor,
            FittedData(splits),
            baseline=config.baseline,
            batch_sizes=config.throughput_batch_sizes or None,
            batch_size=config.train.eval_batch_size,
            logits=logits,
        )
    history = [
        {k: v for k, v in row.items() if k not in ("kind", "step")}
        for row in read_metrics_log(run_dir)
        if row.get("kind") == "epoch"
    ]
    results.update(
        best=task.best,
        temperature=detector.temperature,
        unknown_threshold=detector.threshold,
        steps=loop.total_steps,
        epochs=loop.epochs,
        train_seconds=round(loop.seconds, 3),
        resumed_from=loop.resumed_from,
        checkpoint=str(best_dir),
        dataset=str(dataset),
        init=extra["init"],
        loss=extra["loss"],
    )
    summary = data_summary(
        names,
        {name: s.labels for name, s in splits.items()},
        {"dataset": str(dataset), "few-shot fraction": config.fraction},
    )
    if "model" in results:
        write_outputs(
            run_dir,
            results,
            title=f"{results['model_name']} fine-tuned on {Path(dataset).name}",
            subtitle=f"best of {loop.epochs} epochs by {task.best.get('metric')} · "
            f"init {extra['init']['kind']} · test split",
            history=history,
            best_epoch=task.best.get("epoch"),
            config={
                "finetune": config.to_dict(),
                "model": mc.to_dict(),
                "init": extra["init"],
                "loss": extra["loss"],
            },
            data=summary,
        )
    else:
        from netmamba.evaluate.report import write_metrics_json

        write_metrics_json(run_dir / "metrics.json", {**results, "history": history})
    return results
