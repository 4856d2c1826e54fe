"""Classifier and pre-training model: sizes, padding, variants, and that they learn."""

from __future__ import annotations

import pytest
import torch

from netmamba.models import (
    VARIANTS,
    ModelConfig,
    build_classifier,
    build_pretrainer,
    inputs,
    random_batch,
)
from netmamba.models.pretrain import choose_masked, choose_visible


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_netmamba_plus_has_the_papers_parameter_count():
    """1,868,544 + 256 x classes, decomposed:
    4 Mamba blocks x 438,016 (in_proj 256x1024 = 262,144; conv1d 512x4 + 512 = 2,560;
    x_proj 512x48 = 24,576; dt_proj 16x512 + 512 = 8,704; A_log 512x16 = 8,192; D 512;
    out_proj 512x256 = 131,072; RMSNorm 256) = 1,752,064; stride embedding 4x256 + 256 = 1,280;
    positional embeddings 443x256 = 113,408; 3 indicators + 3 class tokens 6x256 = 1,536;
    final RMSNorm 256; head 256 x classes without bias (as the authors' head_bias=False)."""
    block = 262_144 + 2_560 + 24_576 + 8_704 + 8_192 + 512 + 131_072 + 256
    assert block == 438_016
    assert 4 * block + 1_280 + 113_408 + 1_536 + 256 == 1_868_544
    config = ModelConfig.preset("paper")
    model = build_classifier(config, 10)
    assert n_params(model.encoder.blocks[0]) == block
    assert n_params(model) == 1_868_544 + 256 * 10


def test_paper_nettrans_and_pretrainer_sizes():
    nettrans = build_classifier(ModelConfig.preset("paper", backbone="transformer"), 10)
    assert n_params(nettrans) == 2_457_600 + 192 * 10  # "about 2.46M"
    # pre-training: encoder + byte decoder (128 wide, 2 Mamba blocks) + size and IAT heads
    pretrainer = build_pretrainer(ModelConfig.preset("paper"))
    assert 2.5e6 < n_params(pretrainer) < 2.7e6  # "about 2.6M"
    assert type(pretrainer.encoder) is type(
        build_classifier(ModelConfig.preset("paper"), 3).encoder
    )


@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_padding_content_never_changes_the_outputs(backbone):
    """Attention masks padded keys; Mamba zeroes padded inputs of the conv and their delta, so
    both give bit-identical class-token features whatever the padding holds."""
    config = ModelConfig.preset("paper", backbone=backbone, depth=2)
    model = build_classifier(config, 4).eval()
    batch = random_batch(config, 3, torch.Generator().manual_seed(1))
    changed = {k: v.clone() for k, v in batch.items()}
    padded = ~batch["seq_mask"]
    changed["sizes"][padded] = 777
    changed["iats"][padded] = 3.5
    token_valid = inputs.byte_token_valid(config, inputs.batch_to_tensors(batch, "cpu"))
    padded_bytes = (~token_valid)[..., None].expand(-1, -1, config.stride).reshape(3, -1)
    assert padded_bytes.any() and padded.any()
    changed["bytes"][padded_bytes] = 0xAB
    with torch.no_grad():
        assert torch.equal(model.features(batch), model.features(changed))
        # without masking (the authors' behaviour) padding does reach the output
        unmasked = build_classifier(config.replace(mask_padding=False), 4).eval()
        unmasked.load_state_dict(model.state_dict())
        assert not torch.equal(unmasked.features(batch), unmasked.features(changed))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_every_variant_builds_and_classifies(variant, fusion):
    config = ModelConfig.preset("fast", variant=variant, fusion=fusion)
    model = build_classifier(config, 7).eval()
    batch = random_batch(config, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = model(batch), model.features(batch)
    assert logits.shape == (2, 7) and features.shape == (2, config.d_model)
    assert set(model.encoder.cls_tokens) == set(config.modalities)


def test_class_tokens_sit_at_the_end_of_their_segments():
    config = ModelConfig.preset("paper")
    encoder = build_classifier(config, 2).encoder.eval()
    batch = inputs.batch_to_tensors(random_batch(config, 1), "cpu")
    with torch.no_grad():
        out = encoder(batch)
    assert out.starts == {"sizes": 0, "iats": 21, "bytes": 42}
    torch.testing.assert_close(out.cls["sizes"], out.hidden[:, 20])
    torch.testing.assert_close(out.cls["iats"], out.hidden[:, 41])
    torch.testing.assert_close(out.cls["bytes"], out.hidden[:, 442])


def test_layer_ids_and_weight_decay_exemptions():
    config = ModelConfig.preset("paper")
    model = build_classifier(config, 3)
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["encoder.pos_embed"] == ids["encoder.byte_embed.weight"] == 0
    assert ids["encoder.cls_tokens.bytes"] == 0
    assert ids["encoder.blocks.0.mixer.in_proj.weight"] == 1
    assert ids["encoder.blocks.3.norm.weight"] == 4
    assert ids["encoder.norm.weight"] == ids["head.weight"] == 5
    no_decay = model.no_weight_decay()
    assert {
        "encoder.pos_embed",
        "encoder.blocks.2.mixer.A_log",
        "encoder.blocks.2.mixer.D",
    } <= no_decay
    assert "encoder.blocks.0.mixer.in_proj.weight" not in no_decay
    assert "head.weight" not in no_decay


def test_masking_never_picks_padding():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(64, 40, generator=g) > 0.4
    valid[0] = False  # a row with nothing real
    masked = choose_masked(valid, 0.15, g)
    assert not (masked & ~valid).any()
    real = valid.sum(1)
    assert torch.equal(
        masked.sum(1), torch.where(real > 0, torch.round(real * 0.15).clamp(min=1), 0).long()
    )
    positions, kept = choose_visible(valid, 0.1, g)
    assert valid.gather(1, positions)[kept].all()
    ordered = torch.where(kept, positions, 10**6)
    assert (ordered[:, 1:] >= ordered[:, :-1]).all()  # visible strides keep sequence order
    assert (
        kept.sum(1)[1:].tolist()
        == torch.minimum(torch.round(real[1:] * 0.1).clamp(min=1), real[1:]).tolist()
    )


TINY = dict(
    depth=2,
    d_model=32,
    d_state=4,
    decoder_dim=16,
    decoder_depth=1,
    n_heads=4,
    header_bytes=16,
    payload_bytes=16,
    seq_len=8,
    mtu=200,
)


@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_a_pretraining_step_reduces_the_loss(backbone):
    torch.manual_seed(0)
    config = ModelConfig.preset("paper", backbone=backbone, **TINY, dropout=0.0, drop_path=0.0)
    model = build_pretrainer(config)
    batch = random_batch(config, 8, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss():  # the same masking every time, so the losses compare
        return model(batch, generator=torch.Generator().manual_seed(1))

    first = loss()
    assert set(first) == {"loss", "loss_bytes", "loss_sizes", "loss_iats"}
    assert all(v.item() > 0 for v in first.values())
    torch.testing.assert_close(
        first["loss"], first["loss_bytes"] + first["loss_sizes"] + first["loss_iats"]
    )
    for _ in range(10):
        optimizer.zero_grad()
        loss()["loss"].backward()
        optimizer.step()
    assert loss()["loss"].item() < first["loss"].item()


@pytest.mark.parametrize("backbone", ["mamba", "transformer"])
def test_a_finetuning_step_reduces_the_loss(backbone):
    torch.manual_seed(0)
    config = ModelConfig.preset("paper", backbone=backbone, **TINY, dropout=0.0, drop_path=0.0)
    model = build_classifier(config, 3)
    batch = random_batch(config, 12, torch.Generator().manual_seed(0))
    labels = torch.arange(12) % 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = torch.nn.functional.cross_entropy(model(batch), labels).item()
    for _ in range(10):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), labels).backward()
        optimizer.step()
    assert torch.nn.functional.cross_entropy(model(batch), labels).item() < first


def test_pretrainer_without_a_modality_scores_nothing_for_it():
    config = ModelConfig.preset("paper", variant="bytes", **TINY)
    losses = build_pretrainer(config)(random_batch(config, 2))
    assert losses["loss_sizes"].item() == 0 and losses["loss_iats"].item() == 0
    assert losses["loss_bytes"].item() > 0
