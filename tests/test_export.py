"""Exported models (ONNX, torch.export) give the predictions netmamba gives, without its models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from netmamba.classify import load_predictor
from netmamba.cli import main
from netmamba.dataset import load_dataset
from netmamba.export import INPUT_DTYPES, ExportedModel, as_export_inputs, export_model
from train import toydata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return toydata.finetuned_run(tmp_path_factory) / "best"


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    return load_dataset(toydata.toy_dataset(tmp_path_factory), None).arrays


def _agrees(path, model, arrays):
    predictor = load_predictor(model)
    inputs = as_export_inputs(predictor, arrays)
    expected = predictor.predict(inputs)
    got = ExportedModel(path).run(inputs)
    assert got["probs"].shape == expected["probs"].shape
    assert np.abs(got["probs"] - expected["probs"]).max() < 1e-5
    assert np.array_equal(got["probs"].argmax(1), expected["label"])
    # the unknown flag may differ only for a score within float error of the threshold
    differ = got["unknown"] != expected["unknown"]
    near = np.abs(expected["unknown_score"] - predictor.detector.threshold) < 1e-5
    assert not np.any(differ & ~near)
    assert np.allclose(got["unknown_score"], expected["unknown_score"], atol=1e-5)


def test_torch_export_program_agrees_with_the_predictor(model, arrays, tmp_path):
    path = export_model(model, tmp_path / "toy.pt2")
    _agrees(path, model, arrays)
    info = json.loads((tmp_path / "toy.json").read_text())
    assert info["format"] == "pt2"
    assert info["label_names"] == load_predictor(model).label_names
    assert info["inputs"]["bytes"] == {
        "dtype": "uint8",
        "width": load_predictor(model).features.total_bytes,
    }


def test_onnx_export_agrees_with_the_predictor(model, arrays, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="checking an ONNX model needs onnxruntime")
    path = export_model(model, tmp_path / "toy.onnx")
    _agrees(path, model, arrays)


def test_export_verb_checks_against_a_dataset(model, tmp_path_factory, tmp_path, capsys):
    dataset = toydata.toy_dataset(tmp_path_factory)
    out = tmp_path / "m.pt2"
    assert main(["export", str(model), "-o", str(out), "--check", str(dataset)]) == 0
    err = capsys.readouterr().err
    assert "labels differ on 0.00%" in err


def test_exported_inputs_use_portable_types(model, arrays):
    inputs = as_export_inputs(load_predictor(model), arrays)
    assert {k: v.dtype for k, v in inputs.items()} == {
        k: np.dtype(t) for k, t in INPUT_DTYPES.items()
    }
