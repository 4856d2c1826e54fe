"""Model options beyond the paper: cosine head, IAT scale, Mamba's initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from netmamba.config import ConfigError
from netmamba.models import ModelConfig, build_classifier, build_pretrainer, random_batch
from netmamba.models.encoder import Encoder


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cosine_head_gives_the_cosine_of_features_and_class_weights():
    torch.manual_seed(0)
    config = ModelConfig.preset("fast", head="cosine", signed_sizes=True)
    model = build_classifier(config, 3).eval()
    batch = random_batch(config, 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = model.features(batch)  # (4, 64)
        w = model.head.weight  # (3, 64)
        want = torch.empty(4, 3)
        for i in range(4):
            for c in range(3):
                want[i, c] = (f[i] @ w[c]) / (f[i].norm() * w[c].norm())
        got = model(batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert got.abs().max() <= 1.0
        # only directions count: scaling the features or a class's weights changes nothing
        torch.testing.assert_close(model.logits(7.0 * f), got, rtol=1e-5, atol=1e-6)
        model.head.weight[1] *= 0.01
        torch.testing.assert_close(model(batch), got, rtol=1e-5, atol=1e-6)


def test_cosine_head_has_the_parameters_of_the_papers_linear_head():
    linear = build_classifier(ModelConfig.preset("paper"), 10)
    cosine = build_classifier(ModelConfig.preset("paper", head="cosine"), 10)
    assert n_params(cosine) == n_params(linear) == 1_868_544 + 256 * 10
    assert ModelConfig.preset("paper").head == "linear"  # the paper's model by default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"head": "mlp"}, "head 'mlp'"),
        ({"head": "cosine", "head_bias": True}, "cosine head has no bias"),
        ({"init": "xavier"}, "init 'xavier'"),
        ({"iat_scale": 0.0}, "iat_scale must be positive"),
        ({"iat_scale": float("nan")}, "iat_scale must be positive"),
    ],
)
def test_bad_option_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.preset("fast", **overrides)


def _iat_content(config: ModelConfig, iats: list[float]) -> torch.Tensor:
    torch.manual_seed(0)
    encoder = Encoder(config)
    batch = random_batch(config, 1, torch.Generator().manual_seed(0), full=True)
    batch["iats"] = torch.tensor([iats + [0.0] * (config.seq_len - len(iats))])
    with torch.no_grad():
        return encoder.content(batch)["iats"][0][0, : len(iats)]  # (len, D)


def test_iat_scale_multiplies_the_mapped_gap_before_the_sinusoidal_embedding():
    D = 8
    config = ModelConfig.preset("fast", d_model=D, iat_scale=1000.0)
    got = _iat_content(config, [0.0, 0.001, 1.0])
    for row, x in zip(got, [0.0, 0.001, 1.0], strict=True):
        value = 1000.0 * (1 + x) / (2 + x)  # 500, 500.25, 666.67
        want = []
        for j in range(D // 2):
            angle = value / 10000 ** (2 * j / D)
            want += [math.sin(angle), math.cos(angle)]
        torch.testing.assert_close(row, torch.tensor(want), rtol=1e-4, atol=1e-4)


def test_the_papers_iat_embedding_barely_separates_a_millisecond_and_the_scaled_one_does():
    paper = _iat_content(ModelConfig.preset("paper"), [0.0, 0.001])
    scaled = _iat_content(ModelConfig.preset("paper", iat_scale=1000.0), [0.0, 0.001])
    # SE(0.5) vs SE(0.50025): about 2.5e-4 apart; x 1000 moves the fast dimensions by 0.25 rad
    assert (paper[0] - paper[1]).norm() < 1e-3
    assert (scaled[0] - scaled[1]).norm() > 0.2


def test_mamba_init_draws_projections_as_mamba_ssm_and_scales_the_residual_branch():
    depth = 3
    torch.manual_seed(0)
    config = ModelConfig.preset("fast", init="mamba", depth=depth)
    mixer = Encoder(config).blocks[0].mixer
    D, E = config.d_model, config.d_inner
    for linear, fan_in, shrink in (
        (mixer.in_proj, D, 1.0),
        (mixer.x_proj, E, 1.0),
        (mixer.out_proj, E, math.sqrt(depth)),
    ):
        bound = 1 / math.sqrt(fan_in) / shrink  # uniform(-bound, bound): std bound / sqrt(3)
        w = linear.weight
        assert w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    paper = Encoder(ModelConfig.preset("fast")).blocks[0].mixer
    assert paper.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # the delta projection keeps Mamba's own initialisation under both
    assert mixer.dt_proj.weight.abs().max() <= config.delta_rank**-0.5


def test_mamba_init_reaches_the_pretrainers_byte_decoder():
    torch.manual_seed(0)
    pre = build_pretrainer(ModelConfig.preset("fast", init="mamba"))
    w = pre.byte_decoder.blocks[0].mixer.in_proj.weight
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * w.shape[1]), rel=0.05)


def test_with_mamba_init_the_class_tokens_depend_on_the_flow_from_the_start():
    """With 0.02 weights at D = 64 each block adds ~1e-3 of its input to the class token's
    residual stream, so its output hardly varies over flows; Mamba's initialisation lets it."""

    def spread(init: str) -> float:
        torch.manual_seed(0)
        config = ModelConfig.preset("fast", init=init, signed_sizes=True)
        model = build_classifier(config, 3).eval()
        batch = random_batch(config, 64, torch.Generator().manual_seed(1))
        with torch.no_grad():
            cls = model.encoder(model.prepare(batch)).cls["bytes"]  # (64, D), RMS 1 per dim
        return cls.std(dim=0).mean().item()

    paper, mamba = spread("paper"), spread("mamba")
    assert paper < 0.05
    assert mamba > 0.1
