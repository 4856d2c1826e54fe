"""From a batch of samples (the arrays of `netmamba.features`) to the model's token values.

The model does its own scaling, so a dataset serves every configuration of the same geometry:
bytes -> [-1, 1] as (b / 255 - 0.5) / 0.5, cut into strides of L_s bytes (or p x p patches of the
byte image); sizes -> clipped at MTU (sign kept in bi-directional data); IATs (seconds) ->
(1 + x) / (2 + x) = sigmoid(log(1 + x)).

Padding is decided from the masks and lengths, never from values: a size or IAT position is real
where `seq_mask` is True; a byte token is real when at least one of its bytes is a real header or
payload byte (by `header_lens` / `payload_lens`). So a stride of zero-padding inside a real packet
(after a 40-byte header, say) is padding too: it carries no information the lengths do not, and
the real tokens keep their positional embeddings, so the model still sees where each packet's
header ends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from netmamba.features import ARRAY_NAMES
from netmamba.models.config import GeometryError, ModelConfig

_DTYPES = {
    "bytes": torch.uint8,
    "header_lens": torch.int64,
    "payload_lens": torch.int64,
    "sizes": torch.float32,
    "iats": torch.float32,
    "seq_mask": torch.bool,
}


def batch_to_tensors(batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The model inputs of `batch` (tensors or NumPy arrays) as tensors on `device`."""
    missing = [name for name in ARRAY_NAMES if name not in batch]
    if missing:
        raise KeyError(
            f"the batch lacks {', '.join(missing)}; a model batch holds {', '.join(ARRAY_NAMES)}"
        )
    out = {}
    for name in ARRAY_NAMES:
        value = batch[name]
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        out[name] = torch.as_tensor(value).to(device=device, dtype=_DTYPES[name])
    return out


def check_batch(config: ModelConfig, batch: dict[str, torch.Tensor]) -> None:
    """Raise GeometryError, naming both values, when the arrays do not fit the model."""
    expected = {
        "bytes": (config.total_bytes, "M_b x (N_h + N_p)"),
        "header_lens": (config.n_packets, "M_b"),
        "payload_lens": (config.n_packets, "M_b"),
        "sizes": (config.seq_len, "M_seq"),
        "iats": (config.seq_len, "M_seq"),
        "seq_mask": (config.seq_len, "M_seq"),
    }
    rows = batch["bytes"].shape[0]
    for name, (width, symbol) in expected.items():
        shape = tuple(batch[name].shape)
        if len(shape) != 2 or shape[1] != width or shape[0] != rows:
            raise GeometryError(
                f"batch array {name!r} has shape {shape} but the model expects "
                f"({rows}, {width}) ({symbol} = {width}: M_b={config.n_packets}, "
                f"N_h={config.header_bytes}, N_p={config.payload_bytes}, M_seq={config.seq_len}); "
                "build (or crop) the dataset with the model's geometry"
            )


def _select_fields(config: ModelConfig, per_byte: torch.Tensor) -> torch.Tensor:
    """(B, M_b * (N_h + N_p)) -> (B, used bytes): the header and/or payload parts."""
    if len(config.byte_fields) == 2:
        return per_byte
    packets = per_byte.view(per_byte.shape[0], config.n_packets, config.packet_bytes)
    part = (
        packets[..., : config.header_bytes]
        if config.byte_fields == ("header",)
        else packets[..., config.header_bytes :]
    )
    return part.reshape(per_byte.shape[0], -1)


def _tokens(config: ModelConfig, per_byte: torch.Tensor) -> torch.Tensor:
    """(B, used bytes) -> (B, n_tokens, bytes per token): strides, or row-major p x p patches."""
    batch = per_byte.shape[0]
    if config.byte_tokens == "stride":
        return per_byte.reshape(batch, -1, config.stride)
    p, width = config.patch_size, config.image_width
    image = per_byte.reshape(batch, -1, width)  # (B, H, W)
    rows = image.shape[1]
    patches = image.reshape(batch, rows // p, p, width // p, p).permute(0, 1, 3, 2, 4)
    return patches.reshape(batch, -1, p * p)  # (B, H/p * W/p, p*p)


def byte_token_values(config: ModelConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, n_byte_tokens, bytes per token) in [-1, 1]."""
    scaled = batch["bytes"].float() / 127.5 - 1.0  # (b / 255 - 0.5) / 0.5
    return _tokens(config, _select_fields(config, scaled))


def byte_token_valid(config: ModelConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, n_byte_tokens) bool: the token holds at least one real byte."""
    header_lens, payload_lens = batch["header_lens"], batch["payload_lens"]  # (B, M_b)
    position = torch.arange(config.packet_bytes, device=header_lens.device)  # (N_h + N_p,)
    in_header = position < config.header_bytes
    # and/or rather than torch.where: the same values, and exportable (ONNX Runtime has no
    # Where over booleans)
    real = (in_header & (position < header_lens[..., None])) | (
        ~in_header & ((position - config.header_bytes) < payload_lens[..., None])
    )  # (B, M_b, N_h + N_p)
    real = _select_fields(config, real.reshape(real.shape[0], -1))
    return _tokens(config, real).any(dim=-1)


def size_values(config: ModelConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, M_seq) sizes as embedded: clipped at MTU (and -MTU), plus `size_offset`."""
    low = -config.mtu if config.signed_sizes else 0
    return batch["sizes"].clamp(low, config.mtu) + config.size_offset


def size_targets(config: ModelConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, M_seq) int64 class of each size for pre-training: 0..MTU (or size + MTU if signed)."""
    sizes = batch["sizes"]
    if config.signed_sizes:
        return (sizes.clamp(-config.mtu, config.mtu) + config.mtu).long()
    if bool((sizes < 0).any()):
        raise ValueError(
            "the batch has negative (direction-signed) sizes but the model was configured for "
            "unsigned ones; set ModelConfig.signed_sizes=True for bi-directional sessions"
        )
    return sizes.clamp(0, config.mtu).long()


def iat_values(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, M_seq) IATs mapped to [0.5, 1): (1 + x) / (2 + x) (negative gaps count as 0)."""
    x = batch["iats"].clamp(min=0)
    return (1 + x) / (2 + x)


def random_batch(
    config: ModelConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    full: bool = False,
) -> dict[str, torch.Tensor]:
    """A batch of synthetic flows with the model's geometry (for tests and benchmarks).

    Flows have 1..M_b packets with random header / payload lengths and 1..M_seq sequence
    packets; bytes past the lengths are zero, as the feature extractor writes them. `full` gives
    every flow all its packets and bytes (no padding).
    """
    g = generator
    M_b, N_h, N_p = config.n_packets, config.header_bytes, config.payload_bytes
    M_seq = config.seq_len

    def randint(low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, high + 1, shape, generator=g)

    if full:
        packets = torch.full((batch_size,), M_b)
        seq_packets = torch.full((batch_size,), M_seq)
        header_lens = torch.full((batch_size, M_b), N_h)
        payload_lens = torch.full((batch_size, M_b), N_p)
    else:
        packets = randint(1, M_b, (batch_size,))
        seq_packets = randint(1, M_seq, (batch_size,))
        header_lens = randint(min(20, N_h), N_h, (batch_size, M_b))
        payload_lens = randint(0, N_p, (batch_size, M_b))
    present = torch.arange(M_b) < packets[:, None]  # (B, M_b)
    header_lens, payload_lens = header_lens * present, payload_lens * present
    data = randint(0, 255, (batch_size, M_b, N_h + N_p))
    position = torch.arange(N_h + N_p)
    real = torch.where(
        position < N_h, position < header_lens[..., None], position - N_h < payload_lens[..., None]
    )
    seq_mask = torch.arange(M_seq) < seq_packets[:, None]
    sizes = randint(40, config.mtu, (batch_size, M_seq))
    if config.signed_sizes:
        sizes = sizes * (torch.randint(0, 2, sizes.shape, generator=g) * 2 - 1)
    iats = torch.rand(batch_size, M_seq, generator=g) ** 4 * 2.0
    iats[:, 0] = 0.0
    return {
        "bytes": (data * real).reshape(batch_size, -1).to(torch.uint8),
        "header_lens": header_lens.to(torch.int16),
        "payload_lens": payload_lens.to(torch.int16),
        "sizes": (sizes * seq_mask).to(torch.int16),
        "iats": iats * seq_mask,
        "seq_mask": seq_mask,
    }
