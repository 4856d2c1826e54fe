from dataclasses import dataclass, field

import pytest

from netmamba.config import Config, ConfigError
from netmamba.features import FeatureConfig


@dataclass
class Inner(Config):
    width: int = 4
    ratio: float = 0.5


@dataclass
class Outer(Config):
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)


def test_nested_config_round_trips_through_json():
    cfg = Outer(name="y", inner=Inner(width=8, ratio=2.0), sizes=(3, 4, 5))
    back = Outer.from_json(cfg.to_json())
    assert back == cfg
    assert isinstance(back.inner, Inner)
    assert back.sizes == (3, 4, 5)


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown setting.*colour.*accepted: width, ratio"):
        Inner.from_dict({"width": 2, "colour": "red"})


def test_int_given_for_float_becomes_float():
    assert Inner.from_dict({"ratio": 1}).ratio == 1.0
    assert isinstance(Inner.from_dict({"ratio": 1}).ratio, float)


def test_feature_config_defaults_are_the_papers_geometry():
    cfg = FeatureConfig()
    assert (cfg.n_packets, cfg.header_bytes, cfg.payload_bytes, cfg.seq_len) == (5, 80, 240, 20)
    assert cfg.total_bytes == 1600


def test_feature_config_rejects_impossible_values():
    with pytest.raises(ConfigError, match="n_packets"):
        FeatureConfig(n_packets=0)


def test_numbers_and_booleans_given_as_text_are_parsed():
    assert Inner.from_dict({"width": "16", "ratio": "1e-3"}) == Inner(width=16, ratio=0.001)

    @dataclass
    class Switch(Config):
        on: bool = False

    assert Switch.from_dict({"on": "true"}).on is True
    with pytest.raises(ConfigError, match="'maybe' is not a valid bool"):
        Switch.from_dict({"on": "maybe"})
    with pytest.raises(ConfigError, match="'wide' is not a valid int"):
        Inner.from_dict({"width": "wide"})
