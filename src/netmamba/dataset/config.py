"""Configuration of `netmamba prepare`: one dataclass per stage, stored in the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

from netmamba.config import Config, ConfigError
from netmamba.debias import DebiasConfig
from netmamba.features import FeatureConfig
from netmamba.flows import FlowConfig
from netmamba.labels import LabelConfig

PROTOCOL_FILTERS = ("paper", "tcp_udp", "none")
DUPLICATE_POLICIES = ("group", "drop")
SPLIT_STRATEGIES = ("session", "flow", "file", "time")
SPLIT_NAMES = ("train", "valid", "test")

# The paper's cleaning drops flows of these protocols, recognised by a port at either end:
# DNS, mDNS, LLMNR, NBNS, DHCP, DHCPv6, NTP.
PAPER_FILTER_PORTS = frozenset({53, 5353, 5355, 137, 67, 68, 546, 547, 123})


def protocol_excluded(protocol_filter: str, proto: int, sport: int, dport: int) -> bool:
    """Whether a protocol filter leaves a flow out: "none" keeps every flow, "tcp_udp" only
    TCP and UDP, "paper" TCP and UDP without the ports of PAPER_FILTER_PORTS at either end."""
    if protocol_filter == "none":
        return False
    if proto not in (6, 17):
        return True
    return protocol_filter == "paper" and (
        sport in PAPER_FILTER_PORTS or dport in PAPER_FILTER_PORTS
    )


@dataclass
class CleaningConfig(Config):
    """Which flows are kept, and how many per class."""

    protocol_filter: str = "paper"  # paper: TCP/UDP without DNS, mDNS, LLMNR, NBNS, DHCP, NTP
    min_packets: int = 1  # flows with fewer packets are dropped
    max_per_class: int | None = 2000  # at most this many flows per class (seeded sample)
    min_per_class: int = 50  # classes with fewer flows are dropped
    duplicates: str = "group"  # group: identical samples kept, on one side of the split;
    # drop: identical samples kept once

    def __post_init__(self) -> None:
        if self.protocol_filter not in PROTOCOL_FILTERS:
            raise ConfigError(
                f"CleaningConfig.protocol_filter must be one of {', '.join(PROTOCOL_FILTERS)}"
            )
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(
                f"CleaningConfig.duplicates must be one of {', '.join(DUPLICATE_POLICIES)}"
            )
        if self.min_packets < 1 or self.min_per_class < 0:
            raise ConfigError("CleaningConfig: min_packets >= 1 and min_per_class >= 0")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError("CleaningConfig.max_per_class must be at least 1 (or None)")


@dataclass
class SplitConfig(Config):
    """How flows are divided into train / valid / test."""

    strategy: str = "session"  # session | flow | file | time (see netmamba.dataset.split)
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, valid, test
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in SPLIT_STRATEGIES:
            raise ConfigError(
                f"SplitConfig.strategy must be one of {', '.join(SPLIT_STRATEGIES)}, "
                f"not {self.strategy!r}"
            )
        ratios = tuple(float(r) for r in self.ratios)
        if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
            raise ConfigError("SplitConfig.ratios: three non-negative numbers, not all zero")
        total = sum(ratios)
        self.ratios = tuple(r / total for r in ratios)  # type: ignore[assignment]


@dataclass
class PrepareConfig(Config):
    """Everything that decides the content of a prepared dataset."""

    flow: FlowConfig = field(default_factory=FlowConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    keep_raw_bytes: bool = True  # store the bytes before de-biasing (to redo it: the audit)
    rows_per_shard: int = 100_000
