"""`ModelConfig`: the model's sizes, input geometry and variant; the `paper` and `fast` presets.

Symbols follow the paper: D (d_model), E = expand * D (inner width of a Mamba mixer), N (SSM state
size), M_b / N_h / N_p (packets, header and payload bytes per packet of the byte modality),
M_seq (packets of the size and inter-arrival-time sequences), L_s (bytes per stride token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from netmamba.config import Config, ConfigError
from netmamba.features import FeatureConfig

BACKBONES = ("mamba", "transformer")
MODALITIES = ("sizes", "iats", "bytes")  # token layout order (paper): sizes, IATs, bytes
FUSIONS = ("sum", "concat")
HEADS = ("linear", "cosine")
INITS = ("paper", "mamba")

# Variant -> (modalities, byte fields, byte tokens). "all" is NetMamba+ (or NetTrans+ with the
# transformer backbone); "bytes" is NetMamba (bytes only, 401 tokens); the rest are the paper's
# ablations: without header bytes, without payload bytes, each modality alone, 2-D patches.
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "all": (MODALITIES, ("header", "payload"), "stride"),
    "bytes": (("bytes",), ("header", "payload"), "stride"),
    "sizes": (("sizes",), ("header", "payload"), "stride"),
    "iats": (("iats",), ("header", "payload"), "stride"),
    "no_header": (MODALITIES, ("payload",), "stride"),
    "no_payload": (MODALITIES, ("header",), "stride"),
    "patches": (MODALITIES, ("header", "payload"), "patch"),
}


class GeometryError(ValueError):
    """The data's geometry (packets, bytes, sequence length) does not match the model's."""


@dataclass
class ModelConfig(Config):
    """Everything that defines a NetMamba+ / NetTrans model; `preset()` gives the named ones."""

    backbone: str = "mamba"  # "mamba" (NetMamba+) or "transformer" (NetTrans)
    variant: str = "all"  # VARIANTS: all, bytes, sizes, iats, no_header, no_payload, patches
    # input geometry: must match the data (see check_features / feature_config)
    n_packets: int = 5  # M_b: packets whose bytes are read
    header_bytes: int = 80  # N_h: bytes from the IP header on, per packet
    payload_bytes: int = 240  # N_p: transport payload bytes per packet
    seq_len: int = 20  # M_seq: packets in the size and IAT sequences
    mtu: int = 1500  # sizes are clipped at this value (pre-training predicts 0..MTU)
    stride: int = 4  # L_s: bytes per stride token
    patch_size: int = 2  # p: side of a 2-D patch (variant "patches")
    image_width: int = 40  # bytes per image row for 2-D patches (40 x 40 = 1600 in the paper)
    signed_sizes: bool = False  # sizes carry a direction sign (bi-directional sessions)
    size_offset: int = 0  # added to sizes before embedding (MTU for the authors' signed ones)
    iat_scale: float = 1.0  # IATs are embedded as SE(iat_scale x (1 + x) / (2 + x)); 1 = paper
    # encoder
    d_model: int = 256  # D
    depth: int = 4  # encoder blocks
    d_state: int = 16  # N: SSM state size (mamba)
    expand: int = 2  # E = expand * D (mamba)
    d_conv: int = 4  # causal depthwise conv width (mamba)
    dt_rank: int = 0  # R: rank of the encoder's delta projection; 0 = ceil(D / 16) (mamba)
    init: str = "paper"  # weights: "paper" (trunc-normal 0.02, the authors') or "mamba" (below)
    n_heads: int = 8  # attention heads (transformer)
    ffn_mult: int = 4  # GeGLU hidden width = ffn_mult * D (transformer)
    norm_eps: float = 1e-5
    # regularisation
    dropout: float = 0.0  # embedding dropout; also the block output dropout of the transformer
    drop_path: float = 0.1  # stochastic depth, rising linearly to this value over the blocks
    # classification head
    fusion: str = "sum"  # fuse the class tokens by "sum" or "concat" (+ MLP)
    head: str = "linear"  # "linear" (paper) or "cosine": logits = cos(f, w_c), same parameters
    head_bias: bool = False
    mask_padding: bool = True  # padding never reaches real tokens (off = the authors' behaviour)
    # pre-training (SPEC section 4)
    decoder_dim: int = 128  # width of the byte decoder
    decoder_depth: int = 2
    byte_mask_ratio: float = 0.9  # strides hidden from the encoder (it sees 10%)
    size_mask_ratio: float = 0.15
    iat_mask_ratio: float = 0.15

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"ModelConfig: {message}")

        if self.backbone not in BACKBONES:
            raise bad(f"backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.variant not in VARIANTS:
            raise bad(f"variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.fusion not in FUSIONS:
            raise bad(f"fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.head not in HEADS:
            raise bad(f"head {self.head!r} is not one of {', '.join(HEADS)}")
        if self.init not in INITS:
            raise bad(f"init {self.init!r} is not one of {', '.join(INITS)}")
        if self.head == "cosine" and self.head_bias:
            raise bad("a cosine head has no bias (set head_bias=false)")
        if not (math.isfinite(self.iat_scale) and self.iat_scale > 0):
            raise bad(f"iat_scale must be positive (got {self.iat_scale})")
        for name in (
            "n_packets",
            "header_bytes",
            "seq_len",
            "mtu",
            "stride",
            "patch_size",
            "image_width",
            "d_model",
            "depth",
            "d_state",
            "expand",
            "d_conv",
            "n_heads",
            "ffn_mult",
            "decoder_dim",
            "decoder_depth",
        ):
            if getattr(self, name) <= 0:
                raise bad(f"{name} must be positive (got {getattr(self, name)})")
        if self.payload_bytes < 0 or self.dt_rank < 0:
            raise bad("payload_bytes and dt_rank must be >= 0")
        if self.d_model % 2:
            raise bad(f"d_model must be even for the sinusoidal embedding (got {self.d_model})")
        if self.backbone == "transformer":
            for width, what in ((self.d_model, "d_model"), (self.decoder_dim, "decoder_dim")):
                if width % self.n_heads:
                    raise bad(f"{what}={width} must be divisible by n_heads={self.n_heads}")
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(f"{name} must be in [0, 1)")
        for name in ("byte_mask_ratio", "size_mask_ratio", "iat_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise bad(f"{name} must be in [0, 1)")
        if "bytes" in self.modalities:
            self._check_byte_tokens()

    def _check_byte_tokens(self) -> None:
        used = self.used_bytes
        if used == 0:
            raise ConfigError(f"ModelConfig: variant {self.variant!r} reads no bytes (N_p = 0?)")
        if self.byte_tokens == "stride":
            if used % self.stride:
                raise ConfigError(
                    f"ModelConfig: {used} byte(s) per flow do not split into strides of "
                    f"L_s={self.stride}; choose a stride that divides {used}"
                )
        else:
            p, width = self.patch_size, self.image_width
            if used % width or width % p or (used // width) % p:
                raise ConfigError(
                    f"ModelConfig: {used} bytes do not form an image of width {width} cut into "
                    f"{p}x{p} patches; choose image_width dividing {used}, both sides "
                    f"divisible by {p}"
                )

    # ---- derived sizes ------------------------------------------------------------------

    @property
    def d_inner(self) -> int:
        """E = expand * D."""
        return self.expand * self.d_model

    @property
    def delta_rank(self) -> int:
        """R: the rank of the delta projection."""
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def modalities(self) -> tuple[str, ...]:
        return VARIANTS[self.variant][0]

    @property
    def byte_fields(self) -> tuple[str, ...]:
        return VARIANTS[self.variant][1]

    @property
    def byte_tokens(self) -> str:
        """ "stride" (1-D strides of L_s bytes) or "patch" (2-D p x p patches)."""
        return VARIANTS[self.variant][2]

    @property
    def packet_bytes(self) -> int:
        """N_h + N_p."""
        return self.header_bytes + self.payload_bytes

    @property
    def total_bytes(self) -> int:
        """M_b * (N_h + N_p): width of the `bytes` input."""
        return self.n_packets * self.packet_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes per flow the byte tokens read (all, or only headers / payloads)."""
        per_packet = ("header" in self.byte_fields) * self.header_bytes + (
            "payload" in self.byte_fields
        ) * self.payload_bytes
        return self.n_packets * per_packet

    @property
    def token_bytes(self) -> int:
        """Bytes per byte token: L_s, or p * p."""
        return self.stride if self.byte_tokens == "stride" else self.patch_size**2

    @property
    def n_byte_tokens(self) -> int:
        return self.used_bytes // self.token_bytes if "bytes" in self.modalities else 0

    @property
    def size_classes(self) -> int:
        """Classes of the size prediction: 0..MTU, or -MTU..MTU with signed sizes."""
        return (2 * self.mtu + 1) if self.signed_sizes else (self.mtu + 1)

    def segment_lengths(self) -> dict[str, int]:
        """Tokens per modality segment, class token excluded, in layout order."""
        lengths = {"sizes": self.seq_len, "iats": self.seq_len, "bytes": self.n_byte_tokens}
        return {m: lengths[m] for m in self.modalities}

    @property
    def n_tokens(self) -> int:
        """Sequence length: every segment plus its class token (443 for the paper)."""
        return sum(n + 1 for n in self.segment_lengths().values())

    # ---- geometry shared with the data ------------------------------------------------------

    def feature_config(self) -> FeatureConfig:
        """The sample geometry this model reads (for building or cropping a dataset)."""
        return FeatureConfig(
            n_packets=self.n_packets,
            header_bytes=self.header_bytes,
            payload_bytes=self.payload_bytes,
            seq_len=self.seq_len,
            mtu=self.mtu,
        )

    def check_features(self, features: FeatureConfig) -> None:
        """Raise GeometryError, naming both values, when the data's geometry differs."""
        for name, symbol in (
            ("n_packets", "M_b"),
            ("header_bytes", "N_h"),
            ("payload_bytes", "N_p"),
            ("seq_len", "M_seq"),
        ):
            ours, theirs = getattr(self, name), getattr(features, name)
            if ours != theirs:
                raise GeometryError(
                    f"the data has {name} ({symbol}) = {theirs} but the model expects {ours}; "
                    "build (or crop) the dataset with the model's geometry, "
                    "ModelConfig.feature_config()"
                )

    # ---- presets ---------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named configuration ("paper" or "fast"), with any field overridden.

        The backbone picks the preset's sizes for it: `preset("paper", backbone="transformer")`
        is NetTrans (D = 192, 8 heads, dropout 0.1).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        backbone = overrides.get("backbone", PRESETS[name]["mamba"].get("backbone", "mamba"))
        if backbone not in BACKBONES:
            raise ConfigError(
                f"ModelConfig: backbone {backbone!r} is not one of {', '.join(BACKBONES)}"
            )
        fields = {**PRESETS[name][backbone], **overrides}
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"ModelConfig: unknown setting(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**fields)


# Presets by name, then by backbone.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's sizes (SPEC section 3): NetMamba+ D=256, E=512, N=16, depth 4, decoder 128 x 2;
    # NetTrans D=192, 8 heads, depth 4, dropout 0.1.
    "paper": {
        "mamba": {"backbone": "mamba", "d_model": 256, "depth": 4, "d_state": 16, "expand": 2},
        "transformer": {
            "backbone": "transformer",
            "d_model": 192,
            "depth": 4,
            "n_heads": 8,
            "dropout": 0.1,
        },
    },
    # The built-in default model and the online service's, chosen by measurement on the 2-core
    # CPU (benchmarks/bench_models.py --fast-table): 64 header + 64 payload bytes per packet in
    # strides of 16 (40 byte tokens, 83 in all instead of 443), D = 64, depth 3, N = 16:
    # 105,600 + 64 x classes parameters, >= 3,000 flows/s at batch 256 on 2 threads, >= 1,500
    # on one. Its byte decoder for pre-training is 64 wide.
    "fast": {
        "mamba": {
            "backbone": "mamba",
            "header_bytes": 64,
            "payload_bytes": 64,
            "stride": 16,
            "d_model": 64,
            "depth": 3,
            "d_state": 16,
            "expand": 2,
            "decoder_dim": 64,
        },
        "transformer": {
            "backbone": "transformer",
            "header_bytes": 64,
            "payload_bytes": 64,
            "stride": 16,
            "d_model": 64,
            "depth": 3,
            "n_heads": 4,
            "dropout": 0.1,
            "decoder_dim": 64,
        },
    },
}
