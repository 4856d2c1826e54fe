"""Our state dicts under the parameter names and shapes of the authors' public NetMamba+ code,
for the tests of the checkpoint importer (tests/models) and of fine-tuning from it (tests/train)."""

from __future__ import annotations

import torch


def to_authors_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under the parameter names and shapes of the authors' fuse3 NetMamba+
    (models_net_mamba_fuse3.py): written out by hand, independent of the importer's rules."""
    ours_to_theirs = {"sizes": "size", "iats": "iat", "bytes": "byte"}
    out = {}
    for name, t in state.items():
        if name == "encoder.byte_embed.weight":
            out["byte_embed.proj.weight"] = t[:, None, :]  # Conv1d(1, D, 4): (D, 1, 4)
        elif name == "encoder.byte_embed.bias":
            out["byte_embed.proj.bias"] = t
        elif name.startswith(("encoder.cls_tokens.", "encoder.indicators.")):
            kind, modality = name.split(".")[1:]
            suffix = "cls_token" if kind == "cls_tokens" else "indicator"
            out[f"{ours_to_theirs[modality]}_{suffix}"] = t.reshape(1, 1, -1)
        elif name == "encoder.pos_embed":
            out["pos_embed"] = t[None]
        elif name.startswith("encoder.blocks."):
            out["encoder_blocks." + name[len("encoder.blocks.") :]] = t
        elif name == "encoder.norm.weight":
            out["norm_f.weight"] = t
        elif name.startswith("head."):
            out[name] = t
        elif name.startswith("byte_decoder.blocks."):
            out["byte_decoder_blocks." + name[len("byte_decoder.blocks.") :]] = t
        elif name.startswith("byte_decoder."):
            rest = name[len("byte_decoder.") :]
            theirs = {
                "embed.weight": "byte_decoder_embed.weight",
                "embed.bias": "byte_decoder_embed.bias",
                "mask_token": "byte_mask_token",
                "pos_embed": "byte_decoder_pos_embed",
                "norm.weight": "decoder_norm_f.weight",
                "pred.weight": "byte_decoder_pred.weight",
                "pred.bias": "byte_decoder_pred.bias",
            }[rest]
            shaped = t.reshape(1, 1, -1) if rest == "mask_token" else t
            out[theirs] = shaped[None] if rest == "pos_embed" else shaped
        elif name.startswith("size_head."):  # their size classes add PAD and MASK at the end
            extra = torch.zeros((2, *t.shape[1:]))
            out["size_decoder_pred." + name.split(".")[1]] = torch.cat([t, extra])
        elif name.startswith("iat_head."):
            out["iat_decoder_pred." + name.split(".")[1]] = t
    return out
