"""From sample arrays to token values and padding masks, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netmamba.models import ModelConfig, inputs, random_batch
from netmamba.models.config import GeometryError

# a tiny geometry: 2 packets of 4 header + 4 payload bytes, strides of 2, 3 sequence packets
TINY = ModelConfig(n_packets=2, header_bytes=4, payload_bytes=4, seq_len=3, stride=2, d_model=8)


def tiny_batch():
    return inputs.batch_to_tensors(
        {
            "bytes": np.array([[0, 255, 51, 0, 9, 9, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]], np.uint8),
            "header_lens": np.array([[3, 4]], np.uint16),
            "payload_lens": np.array([[2, 1]], np.uint16),
            "sizes": np.array([[1600, -60, 0]], np.int16),
            "iats": np.array([[0.0, 1.0, 0.0]], np.float32),
            "seq_mask": np.array([[True, True, False]]),
        },
        "cpu",
    )


def test_bytes_scale_to_minus_one_one_in_strides():
    values = inputs.byte_token_values(TINY, tiny_batch())
    assert values.shape == (1, 8, 2)
    torch.testing.assert_close(values[0, 0], torch.tensor([-1.0, 1.0]))  # 0 -> -1, 255 -> 1
    torch.testing.assert_close(values[0, 1, 0], torch.tensor(51 / 127.5 - 1))


def test_stride_is_padding_only_when_none_of_its_bytes_is_real():
    # packet 0: header bytes 0-2 real (strides 0, 1), payload bytes 4-5 real (stride 2), 6-7 not
    # packet 1: header 8-11 real (strides 4, 5), payload byte 12 real (stride 6), 14-15 not
    valid = inputs.byte_token_valid(TINY, tiny_batch())
    assert valid[0].tolist() == [True, True, True, False, True, True, True, False]


def test_variants_read_only_their_bytes():
    no_header = TINY.replace(variant="no_header")
    values = inputs.byte_token_values(no_header, tiny_batch())
    expected = torch.tensor([9, 9, 0, 0, 5, 6, 7, 8]).float() / 127.5 - 1
    torch.testing.assert_close(values.flatten(), expected)
    assert inputs.byte_token_valid(no_header, tiny_batch())[0].tolist() == [
        True,
        False,
        True,
        False,
    ]


def test_patches_are_row_major_squares_of_the_byte_image():
    config = TINY.replace(variant="patches", patch_size=2, image_width=4)
    batch = tiny_batch()
    batch["bytes"] = torch.arange(16, dtype=torch.uint8)[None]
    values = inputs.byte_token_values(config, batch)
    as_bytes = torch.round((values + 1) * 127.5).long()
    # image rows [0 1 2 3], [4 5 6 7], [8 ...]: first patch 0 1 / 4 5, second 2 3 / 6 7
    assert as_bytes[0, 0].tolist() == [0, 1, 4, 5]
    assert as_bytes[0, 1].tolist() == [2, 3, 6, 7]
    assert as_bytes[0, 2].tolist() == [8, 9, 12, 13]


def test_sizes_clip_at_mtu_and_iats_map_to_one_plus_x_over_two_plus_x():
    batch = tiny_batch()
    assert inputs.size_values(TINY, batch)[0].tolist() == [1500, 0, 0]
    signed = TINY.replace(signed_sizes=True)
    assert inputs.size_values(signed, batch)[0].tolist() == [1500, -60, 0]
    assert inputs.size_targets(signed, batch)[0].tolist() == [3000, 1440, 1500]
    torch.testing.assert_close(inputs.iat_values(batch)[0], torch.tensor([0.5, 2 / 3, 0.5]))


def test_signed_sizes_in_an_unsigned_model_are_a_clear_error():
    with pytest.raises(ValueError, match="signed_sizes=True"):
        inputs.size_targets(TINY, tiny_batch())


def test_wrong_geometry_names_the_array_and_both_widths():
    batch = tiny_batch()
    batch["bytes"] = batch["bytes"][:, :12]
    with pytest.raises(GeometryError, match=r"'bytes' has shape \(1, 12\).*\(1, 16\)"):
        inputs.check_batch(TINY, batch)


def test_missing_array_is_a_clear_error():
    batch = tiny_batch()
    del batch["iats"]
    with pytest.raises(KeyError, match="lacks iats"):
        inputs.batch_to_tensors(batch, "cpu")


def test_random_batch_zeroes_bytes_past_the_lengths():
    config = ModelConfig.preset("paper")
    batch = random_batch(config, 4, torch.Generator().manual_seed(0))
    inputs.check_batch(config, inputs.batch_to_tensors(batch, "cpu"))
    packets = batch["bytes"].reshape(4, 5, 320).long()
    for b in range(4):
        for p in range(5):
            h, pl = int(batch["header_lens"][b, p]), int(batch["payload_lens"][b, p])
            assert packets[b, p, h:80].sum() == 0 and packets[b, p, 80 + pl :].sum() == 0
    assert (batch["sizes"][~batch["seq_mask"]] == 0).all()
