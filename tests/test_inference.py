"""The one inference path: a fine-tuned checkpoint gives logits, calibrated probabilities, top-3
and unknown flags; larger inputs are cropped to the model, smaller ones refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netmamba.dataset import load_dataset
from netmamba.features import FeatureConfig, crop_arrays
from netmamba.inference import Predictor, fit_arrays, resolve_checkpoint
from netmamba.models import GeometryError
from netmamba.models.weights import CheckpointError
from train import toydata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toydata.finetuned_run(tmp_path_factory)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    return load_dataset(toydata.toy_dataset(tmp_path_factory), "test")


def test_a_run_folder_resolves_to_its_best_checkpoint(run, tmp_path):
    assert resolve_checkpoint(run) == run / "best"
    assert resolve_checkpoint(run / "best") == run / "best"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)


def test_logits_are_the_model_outputs_times_the_logit_scale_in_float32(run, test_split):
    predictor = Predictor.load(run, device="cpu")
    assert predictor.logit_scale == 30.0
    logits = predictor.logits(test_split.arrays, batch_size=7)  # batches of 7 of the 30 flows
    assert logits.dtype == np.float32 and logits.shape == (30, 3)
    arrays = crop_arrays(test_split.arrays, test_split.feature_config, predictor.features)
    with torch.no_grad():
        direct = predictor.model(arrays).numpy() * 30.0
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        predictor.logits(test_split.arrays, batch_size=256), logits, rtol=1e-5, atol=1e-5
    )


def test_predictions_apply_the_calibrated_temperature(run, test_split):
    predictor = Predictor.load(run, device="cpu")
    out = predictor.predict(test_split.arrays)
    z = predictor.logits(test_split.arrays).astype(np.float64) / predictor.temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probs"], p, rtol=1e-5, atol=1e-6)
    assert np.array_equal(out["label"], p.argmax(1))
    np.testing.assert_allclose(out["confidence"], p.max(1), rtol=1e-5)
    assert out["top_ids"].shape == (30, 3) and np.array_equal(out["top_ids"][:, 0], out["label"])
    assert (np.diff(out["top_probs"], axis=1) <= 0).all()  # most likely first
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)  # 0 log 0 = 0
    np.testing.assert_allclose(out["unknown_score"], entropy, rtol=1e-4, atol=1e-6)
    threshold = predictor.detector.threshold
    assert np.array_equal(out["unknown"], entropy > threshold)
    names = np.array(predictor.label_names)[out["label"]]
    assert (names == np.array(test_split.label_names)[test_split.labels]).mean() >= 0.9


def test_larger_inputs_are_cropped_and_smaller_ones_refused(run, test_split):
    predictor = Predictor.load(run, device="cpu")
    model_geometry = predictor.features
    cropped = fit_arrays(test_split.arrays, predictor.config, test_split.feature_config)
    assert cropped["bytes"].shape == (30, 3 * (32 + 32))
    assert cropped["sizes"].shape == (30, 8)
    # arrays already of the model's geometry pass unchanged
    again = predictor.fit(cropped)
    assert all(np.array_equal(again[k], cropped[k]) for k in cropped)
    # arrays of an unrelated geometry need their geometry to be named
    other = FeatureConfig(n_packets=2, header_bytes=40, payload_bytes=40, seq_len=10)
    two = crop_arrays(test_split.arrays, test_split.feature_config, other)
    with pytest.raises(GeometryError, match="give the geometry the arrays were made with"):
        predictor.logits(two)
    with pytest.raises(GeometryError, match="cannot crop n_packets from 2 up to 3"):
        predictor.logits(two, geometry=other)
    assert model_geometry.n_packets == 3


def test_a_pre_training_checkpoint_is_not_a_classifier(tmp_path_factory):
    pre = toydata.pretrained_run(tmp_path_factory)
    with pytest.raises(CheckpointError, match="has no classification head; fine-tune it first"):
        Predictor.load(pre)


def test_the_unknown_detector_flags_flows_of_an_unseen_class_more_often(run, tmp_path_factory):
    predictor = Predictor.load(run, device="cpu")
    unseen = load_dataset(toydata.unseen_dataset(tmp_path_factory), "all")
    known = load_dataset(toydata.toy_dataset(tmp_path_factory), "test")
    flagged_unseen = predictor.predict(unseen.arrays)["unknown"].mean()
    flagged_known = predictor.predict(known.arrays)["unknown"].mean()
    meta = json.loads((run / "best" / "checkpoint.json").read_text())
    assert meta["unknown_detector"]["accept_rate"] == 0.95
    assert flagged_known <= 0.2
    assert flagged_unseen >= flagged_known
