"""Checkpoints: safetensors round trip, encoder transfer, the authors' checkpoint importer."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from authors_names import to_authors_names
from netmamba.models import ModelConfig, build_classifier, build_pretrainer, random_batch
from netmamba.models.weights import (
    CheckpointError,
    import_authors_checkpoint,
    load_checkpoint,
    load_encoder,
    save_checkpoint,
)

SMALL = dict(d_model=32, depth=2, d_state=4, decoder_dim=16, decoder_depth=2)


def test_classifier_round_trip_gives_identical_outputs(tmp_path):
    config = ModelConfig.preset("fast", fusion="concat")
    model = build_classifier(config, 5).eval()
    extra = {"labels": ["a", "b", "c", "d", "e"], "features": {"seq_len": 20}}
    folder = save_checkpoint(tmp_path / "ckpt", model, extra)
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["kind"] == "classifier" and meta["num_classes"] == 5
    assert meta["model"] == config.to_dict() and meta["labels"] == extra["labels"]
    assert (folder / "model.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # not a pickle
    loaded = load_checkpoint(folder)
    assert loaded.config == config and loaded.extra == extra
    batch = random_batch(config, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(batch), loaded.model.eval()(batch))


def test_the_same_weights_always_give_the_same_file(tmp_path):
    # the built-in model's SHA256SUMS must be reproducible: no varying header order
    model = build_classifier(ModelConfig.preset("fast", **SMALL), 3)
    files = {
        save_checkpoint(tmp_path / str(i), model).joinpath("model.safetensors").read_bytes()
        for i in range(20)
    }
    assert len(files) == 1


def test_pretrainer_round_trip(tmp_path):
    model = build_pretrainer(ModelConfig.preset("fast"))
    loaded = load_checkpoint(save_checkpoint(tmp_path, model)).model
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_bad_checkpoint_folders_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no checkpoint\.json"):
        load_checkpoint(tmp_path)
    folder = save_checkpoint(tmp_path / "c", build_classifier(ModelConfig.preset("fast"), 2))
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(
            tmp_path / "d", build_classifier(ModelConfig.preset("fast"), 2), {"kind": 1}
        )


def test_pretrained_encoder_loads_into_a_classifier(tmp_path):
    config = ModelConfig.preset("fast")
    pretrainer = build_pretrainer(config)
    classifier = build_classifier(config, 4)
    report = load_encoder(classifier, save_checkpoint(tmp_path, pretrainer))
    assert not report.missing  # every encoder weight came from the pre-trained model
    assert report.loaded and all(name.startswith("encoder.") for name in report.loaded)
    for name, tensor in classifier.encoder.state_dict().items():
        assert torch.equal(tensor, pretrainer.encoder.state_dict()[name])
    with pytest.raises(CheckpointError, match="configurations differ"):
        load_encoder(build_classifier(config.replace(d_model=2 * config.d_model), 4), pretrainer)


def test_authors_classifier_checkpoint_imports_with_identical_outputs(tmp_path):
    # their default seq_len is 50: the importer must read M_seq from the positional embeddings
    config = ModelConfig.preset("paper", seq_len=50, **SMALL)
    ours = build_classifier(config, 6).eval()
    theirs = to_authors_names(ours.state_dict())
    theirs["encoder_blocks.0.mixer.A_b_log"] = torch.zeros(64, 4)  # a bidirectional extra
    path = tmp_path / "fuse3_mamba.pth"
    args = argparse.Namespace(model="fuse3_mamba_classifier", lr=1e-3)
    torch.save({"model": theirs, "epoch": 3, "args": args}, path)

    imported = import_authors_checkpoint(path)
    assert imported.config.seq_len == 50 and imported.config.n_tokens == 503
    assert imported.unmapped == ["encoder_blocks.0.mixer.A_b_log"]
    assert imported.missing == []
    batch = random_batch(config, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(imported.model.eval()(batch), ours(batch), rtol=0, atol=0)
    assert "did not map 1" in imported.summary()


def test_authors_pretraining_checkpoint_imports_as_a_pretrainer(tmp_path):
    config = ModelConfig.preset("paper", **SMALL)
    ours = build_pretrainer(config)
    path = tmp_path / "pretrain.pth"
    torch.save({"model": to_authors_names(ours.state_dict())}, path)
    imported = import_authors_checkpoint(path)
    assert imported.config.decoder_dim == 16 and imported.config.decoder_depth == 2
    # they mask sizes and IATs with a value, we with learned tokens: those stay as initialised
    assert imported.missing == ["iat_mask_token", "size_mask_token"]
    for name, tensor in ours.state_dict().items():
        if "mask_token" not in name or name.startswith("byte_decoder"):
            assert torch.equal(imported.model.state_dict()[name], tensor), name
    # fine-tuning from it: a classifier for our own classes, the head left as initialised
    as_classifier = import_authors_checkpoint(path, num_classes=4)
    assert "head.weight" in as_classifier.missing
    assert "byte_decoder_embed.weight" in as_classifier.unmapped


def test_importer_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": ValueError("boom")}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_authors_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a NetMamba"):
        torch.save({"model": {"x": torch.zeros(1)}}, path)
        import_authors_checkpoint(path)
