"""Fine-tuning on a separable toy dataset: it learns, the LDA loss is the loss applied, the
checkpoint carries what inference needs, and the linear probe / few-shot / init options do what
they say."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from authors_names import to_authors_names
from netmamba.dataset import load_dataset
from netmamba.inference import Predictor, fit_arrays
from netmamba.models import ModelConfig, build_classifier
from netmamba.train.data import BatchPlan
from netmamba.train.finetune import FinetuneConfig, finetune
from netmamba.train.loop import read_metrics_log
from netmamba.train.rundir import TrainError
from train import toydata
from train.lda_reference import hand_lda_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toydata.toy_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toydata.finetuned_run(tmp_path_factory)


def settings(**changes):
    s = json.loads(json.dumps(toydata.TINY_FINETUNE))
    s["baseline"] = None
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            s.setdefault(section, {})[name] = value
        else:
            s[section] = value
    return FinetuneConfig.from_dict(s)


def test_a_few_epochs_on_a_separable_toy_dataset_reach_high_accuracy(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert metrics["macro_f1"] >= 0.9
    assert metrics["weighted_f1"] >= 0.9
    assert metrics["model"]["n"] == 30  # the whole test split, scored once
    assert metrics["baseline"]["accuracy"] >= 0.9  # the classical baseline beside it
    assert metrics["best"]["metric"] == "valid_macro_f1"
    assert 1 <= metrics["best"]["epoch"] <= 25
    epochs = [r for r in metrics["history"] if "valid_macro_f1" in r]
    assert len(epochs) == 25
    best = max(r["valid_macro_f1"] for r in epochs)
    assert metrics["best"]["value"] == pytest.approx(best)
    page = (run / "report.html").read_text()
    assert "GBDT baseline" in page and "Learning curves" in page and "Calibration" in page


def test_the_best_checkpoint_carries_labels_calibration_and_data_settings(run, toy):
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["label_names"] == ["chat", "stream", "web"]
    assert meta["logit_scale"] == 30.0  # the LDA loss reads 30 x logits
    detector = meta["unknown_detector"]
    assert detector["score"] == "entropy" and detector["threshold"] is not None
    assert detector["temperature"] == meta["temperature"] > 0
    manifest = json.loads((toy / "manifest.json").read_text())
    assert meta["data_features"] == manifest["config"]["features"]
    assert meta["flow"] == manifest["config"]["flow"]
    assert meta["debias"] == manifest["config"]["debias"]
    assert meta["cleaning"] == manifest["config"]["cleaning"]
    assert meta["features"]["header_bytes"] == 32  # what the (cropping) model reads
    assert meta["finetune"]["select_metric"] == "macro_f1"
    assert meta["best"]["epoch"] == json.loads((run / "metrics.json").read_text())["best"]["epoch"]
    # the stored threshold accepts 95% of the validation flows under the stored temperature
    predictor = Predictor.load(run)
    valid = load_dataset(toy, "valid")
    scores = predictor.predict(valid.arrays)["unknown_score"]
    assert np.mean(scores <= detector["threshold"] + 1e-6) >= 0.95


def test_the_lda_loss_is_the_loss_training_applies(toy, tmp_path):
    config = settings(train__steps=1, train__log_every=1, warmup_epochs=0)
    finetune(toy, tmp_path / "lda", config, progress=False)
    record = json.loads((tmp_path / "lda" / "run.json").read_text())
    counts = [36, 18, 36]  # chat, stream, web flows of the toy train split
    assert record["loss"]["class_counts"] == counts
    assert record["loss"]["margins"] == pytest.approx([0.5 * 0.5**0.25, 0.5, 0.5 * 0.5**0.25])
    # the first step's loss, recomputed from the same initial model and the same batch
    torch.manual_seed(config.train.seed)
    model = build_classifier(ModelConfig.preset("fast", **toydata.TINY_MODEL), 3)
    train = load_dataset(toy, "train")
    arrays = fit_arrays(train.arrays, model.config, train.feature_config)
    batch = BatchPlan(len(train), 16, config.train.seed).global_batch(0)
    model.train()
    logits = model({k: v[batch] for k, v in arrays.items()}).detach().tolist()
    expected = hand_lda_loss(logits, train.labels[batch].tolist(), counts, eps=0.1)
    logged = read_metrics_log(tmp_path / "lda")[0]
    assert logged["step"] == 1
    assert logged["loss"] == pytest.approx(expected, rel=1e-5)
    # and cross-entropy from the same start is another loss and another step
    ce = settings(train__steps=1, train__log_every=1, warmup_epochs=0, loss={"kind": "ce"})
    finetune(toy, tmp_path / "ce", ce, progress=False)
    assert read_metrics_log(tmp_path / "ce")[0]["loss"] != pytest.approx(expected, rel=1e-2)
    a = load_file(str(tmp_path / "lda" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "ce" / "last" / "model.safetensors"))
    assert not torch.equal(a["head.weight"], b["head.weight"])
    ce_meta = json.loads((tmp_path / "ce" / "last" / "checkpoint.json").read_text())
    assert ce_meta["logit_scale"] == 1.0


def test_linear_probe_trains_the_head_and_leaves_the_encoder_as_pre_trained(toy, tmp_path_factory):
    pre = toydata.pretrained_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("probe") / "run"
    finetune(toy, out, settings(linear_probe=True, train__epochs=2), init=pre, progress=False)
    theirs = load_file(str(pre / "checkpoint" / "model.safetensors"))
    ours = load_file(str(out / "last" / "model.safetensors"))
    encoder = [k for k in ours if k.startswith("encoder.")]
    assert encoder and all(torch.equal(ours[k], theirs[k]) for k in encoder)
    record = json.loads((out / "run.json").read_text())
    assert record["init"]["kind"] == "pretrained"
    assert record["init"]["report"].startswith(f"loaded {len(encoder)} tensors")
    assert float(ours["head.weight"].abs().max()) > 1e-3  # initialised at std 2e-5, trained


def test_few_shot_trains_on_a_stratified_fraction_of_the_train_split(toy, tmp_path):
    finetune(toy, tmp_path / "run", settings(fraction=0.4, train__steps=1), progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    # round(0.4 x [36, 18, 36]) = [14, 7, 14]
    assert record["dataset"]["class_counts"] == [14, 7, 14]
    assert record["dataset"]["train_flows"] == 35
    assert record["steps_per_epoch"] == 3  # ceil(35 / 16)


def test_a_pre_trained_model_keeps_its_architecture(toy, tmp_path_factory, tmp_path):
    pre = toydata.pretrained_run(tmp_path_factory)
    config = settings(model={**toydata.TINY_MODEL, "d_model": 64})
    with pytest.raises(TrainError, match="cannot change d_model of the pre-trained model"):
        finetune(toy, tmp_path / "run", config, init=pre, progress=False)
    with pytest.raises(TrainError, match=r"--from .*no such checkpoint"):
        finetune(toy, tmp_path / "run", settings(), init=tmp_path / "nothing", progress=False)


def test_unlabelled_data_cannot_be_fine_tuned(tmp_path):
    data = toydata.prepare_toy(tmp_path / "unlabelled", sessions=6, labelled=False)
    with pytest.raises(TrainError, match="no labels; fine-tuning needs labelled flows"):
        finetune(data, tmp_path / "run", settings(), progress=False)


def test_bf16_autocast_and_gradient_clipping_run_and_are_logged(toy, tmp_path):
    config = settings(train__steps=2, train__log_every=1, train__bf16=True, train__grad_clip=1.0)
    finetune(toy, tmp_path / "run", config, progress=False)
    rows = [r for r in read_metrics_log(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)


def test_fine_tuning_starts_from_the_authors_checkpoint(toy, tmp_path):
    config = ModelConfig.preset("fast", **toydata.TINY_MODEL)
    torch.manual_seed(5)
    theirs = build_classifier(config, 7)  # their own classes: the head is replaced
    path = tmp_path / "fuse3_mamba.pth"
    torch.save({"model": to_authors_names(theirs.state_dict()), "epoch": 9}, path)
    # their tensors say D, depth, N, L_s and the token count, not how the bytes are split
    geometry = {k: toydata.TINY_MODEL[k] for k in ("n_packets", "header_bytes", "payload_bytes")}
    run = finetune(
        toy,
        tmp_path / "run",
        settings(train__steps=1, model=geometry, linear_probe=True),
        init=path,
        progress=False,
    )
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["init"]["kind"] == "authors"
    assert "mapped 31 of the checkpoint's tensors" in record["init"]["report"]
    assert record["model"]["seq_len"] == 8  # read from their positional embeddings
    ours = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert ours["head.weight"].shape == (3, 32)
    # the one step is the first of the warm-up (lr 0): the encoder is still exactly theirs
    start = theirs.state_dict()
    assert all(torch.equal(ours[k], start[k]) for k in ours if k.startswith("encoder."))
    assert run.metrics["init"]["source"] == str(path)
