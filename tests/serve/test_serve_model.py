"""What the packet process reads from a checkpoint (without torch), and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import servemodel

from netmamba.serve.model import ModelError, checkpoint_info, model_chunk


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "ckpt"
    return servemodel.make_checkpoint(
        folder, flow={"mode": "bidirectional", "idle_timeout": 30.0}, min_packets=3
    )


def test_the_settings_the_model_was_trained_with(model: Path) -> None:
    info = checkpoint_info(model)
    assert info.path == model and info.labels == servemodel.LABELS
    assert info.flow.mode == "bidirectional" and info.flow.idle_timeout == 30.0
    assert (info.data_features.header_bytes, info.data_features.payload_bytes) == (80, 240)
    assert (info.model_features.header_bytes, info.model_features.payload_bytes) == (64, 64)
    assert info.min_packets == 3
    assert info.ready_packets == 20  # max(M_b = 5, M_seq = 20, min_packets)
    spec = info.array_spec()  # the training data's geometry: the Predictor crops it
    assert spec["bytes"] == ((1600,), np.dtype(np.uint8))
    assert spec["sizes"] == ((20,), np.dtype(np.int16))
    assert set(spec) == {"bytes", "header_lens", "payload_lens", "sizes", "iats", "seq_mask"}


def test_reading_a_checkpoint_does_not_import_torch(model: Path) -> None:
    code = (
        "import sys\nfrom netmamba.serve.model import checkpoint_info, model_spec\n"
        f"model_spec(checkpoint_info({str(model)!r}), threads=2)\n"
        "import netmamba.serve.flowtable, netmamba.serve.service, netmamba.serve.api\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_names_resolve_as_classify_resolves_them(model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(model, run / "best")  # a fine-tuning run folder: its best model
    assert checkpoint_info(run).path == run / "best"


def test_unusable_models_say_why(model: Path, tmp_path: Path) -> None:
    from netmamba.classify import BUILTIN_MODELS

    with pytest.raises(ModelError, match=r"nowhere: no such model; give a built-in name"):
        checkpoint_info(tmp_path / "nowhere")
    if not (BUILTIN_MODELS["default"] / "checkpoint.json").is_file():
        with pytest.raises(ModelError, match=r"built-in model 'default' is not installed"):
            checkpoint_info("default")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty: neither a checkpoint folder"):
        checkpoint_info(tmp_path / "empty")
    pre = tmp_path / "pre"
    shutil.copytree(model, pre)
    meta = json.loads((pre / "checkpoint.json").read_text())
    meta["kind"] = "pretrainer"
    (pre / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"pre-training checkpoint has no classification head"):
        checkpoint_info(pre)


def test_model_calls_fit_the_cache() -> None:
    assert model_chunk(83, 128) == 64  # the fast preset
    assert model_chunk(443, 512) == 4  # the paper's
    assert model_chunk(10, 8) == 256  # never more than a batch
