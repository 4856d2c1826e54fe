"""ModelConfig: presets, validation, JSON round trip, geometry checks."""

from __future__ import annotations

import pytest

from netmamba.config import ConfigError
from netmamba.features import FeatureConfig
from netmamba.models import ModelConfig
from netmamba.models.config import GeometryError


def test_paper_preset_is_the_paper_layout():
    config = ModelConfig.preset("paper")
    assert (config.backbone, config.d_model, config.d_inner, config.d_state) == (
        "mamba",
        256,
        512,
        16,
    )
    assert config.delta_rank == 16  # ceil(256 / 16)
    assert config.n_byte_tokens == 400  # 5 x 320 bytes / 4
    assert config.n_tokens == 443  # 20 + 1 + 20 + 1 + 400 + 1
    assert ModelConfig.preset("paper", variant="bytes").n_tokens == 401


def test_transformer_preset_takes_the_backbones_sizes():
    config = ModelConfig.preset("paper", backbone="transformer")
    assert (config.d_model, config.n_heads, config.dropout) == (192, 8, 0.1)
    assert ModelConfig.preset("paper", backbone="transformer", d_model=96).d_model == 96


def test_variants_pick_modalities_and_bytes():
    no_header = ModelConfig.preset("paper", variant="no_header")
    assert no_header.byte_fields == ("payload",)
    assert no_header.n_byte_tokens == 5 * 240 // 4
    assert ModelConfig.preset("paper", variant="no_payload").n_byte_tokens == 5 * 80 // 4
    assert ModelConfig.preset("paper", variant="sizes").segment_lengths() == {"sizes": 20}
    patches = ModelConfig.preset("paper", variant="patches")
    assert (patches.byte_tokens, patches.token_bytes, patches.n_byte_tokens) == ("patch", 4, 400)


def test_json_round_trip_and_strict_keys():
    config = ModelConfig.preset("fast", fusion="concat")
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown setting"):
        ModelConfig.from_dict({**config.to_dict(), "d_modle": 3})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "rnn"}, "backbone 'rnn'"),
        ({"variant": "everything"}, "variant 'everything'"),
        ({"stride": 7}, "do not split into strides of L_s=7"),
        ({"variant": "patches", "image_width": 30}, "image of width 30"),
        ({"d_model": 255}, "must be even"),
        ({"fusion": "max"}, "fusion 'max'"),
        ({"drop_path": 1.5}, "drop_path"),
    ],
)
def test_bad_settings_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.preset("paper", **overrides)


def test_unknown_preset_and_field_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="unknown setting"):
        ModelConfig.preset("paper", width=3)


def test_geometry_check_names_both_values():
    config = ModelConfig.preset("paper")
    config.check_features(FeatureConfig())  # the paper's geometry
    assert config.feature_config() == FeatureConfig()
    with pytest.raises(
        GeometryError, match=r"payload_bytes \(N_p\) = 128 but the model expects 240"
    ):
        config.check_features(FeatureConfig(payload_bytes=128))


def test_fast_preset_fits_a_crop_of_the_paper_geometry():
    # the dataset loader crops the paper geometry to the model's: every size must be <= it
    fast, paper = ModelConfig.preset("fast"), FeatureConfig()
    for name in ("n_packets", "header_bytes", "payload_bytes", "seq_len"):
        assert getattr(fast.feature_config(), name) <= getattr(paper, name)
