"""Layer-wise lr decay groups, no-decay sets, lr scaling and the resumable warm-up + cosine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from netmamba.config import ConfigError
from netmamba.train.optim import (
    OptimConfig,
    WarmupCosineSchedule,
    build_optimizer,
    build_schedule,
    effective_lr,
    param_groups,
    warmup_cosine_lr,
)


class TinyClassifier(nn.Module):
    """The classifier contract in miniature: embeddings, 2 blocks, a norm and a head."""

    def __init__(self, depth: int = 2, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.depth = depth
        self.embed = nn.Linear(4, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed(batch["x"]) + self.pos_embed  # (B, 3, D)
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x).mean(1))  # (B, C)

    def layer_id(self, name: str) -> int:
        if name.startswith(("embed", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _by_name(groups):
    return {n: g for g in groups for n in g["names"]}


def test_layer_scales_decay_from_the_head_down_to_the_embeddings():
    model = TinyClassifier()
    groups = _by_name(param_groups(model, weight_decay=0.05, layer_decay=0.75))
    # L = depth + 1 = 3: embeddings 0.75^3, block 0 0.75^2, block 1 0.75, norm and head 1
    expected = {
        "embed.weight": 0.421875,
        "pos_embed": 0.421875,
        "blocks.0.1.weight": 0.5625,
        "blocks.1.0.bias": 0.75,
        "norm.weight": 1.0,
        "head.weight": 1.0,
    }
    for name, scale in expected.items():
        assert groups[name]["lr_scale"] == pytest.approx(scale), name
    assert set(groups) == {n for n, _ in model.named_parameters()}  # each parameter once


def test_norms_biases_and_listed_embeddings_get_no_weight_decay():
    model = TinyClassifier()
    model.embed.weight._no_weight_decay = True  # the Mamba convention for A_log and D
    groups = _by_name(param_groups(model, weight_decay=0.05, layer_decay=0.75))
    decayed = {n for n, g in groups.items() if g["weight_decay"] == 0.05}
    assert decayed == {"blocks.0.1.weight", "blocks.1.1.weight", "head.weight"}
    assert groups["pos_embed"]["weight_decay"] == 0.0
    assert groups["norm.weight"]["weight_decay"] == 0.0 and groups["head.bias"]["weight_decay"] == 0


def test_frozen_parameters_are_left_out_for_a_linear_probe():
    model = TinyClassifier()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.75)
    assert sorted(n for g in groups for n in g["names"]) == ["head.bias", "head.weight"]
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_layer_decay_needs_layer_ids_and_is_explained():
    with pytest.raises(ValueError, match="layer_id"):
        param_groups(nn.Linear(2, 2), weight_decay=0.05, layer_decay=0.75)
    assert len(param_groups(nn.Linear(2, 2), weight_decay=0.05)) == 2  # decay + no-decay


def test_lr_is_base_lr_times_batch_over_256():
    assert effective_lr(2e-3, 512) == pytest.approx(4e-3)
    assert effective_lr(1e-3, 128) == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="positive"):
        effective_lr(1e-3, 0)


def test_first_adamw_step_moves_each_group_by_its_own_lr():
    torch.manual_seed(0)
    model = TinyClassifier()
    config = OptimConfig(base_lr=1e-2, weight_decay=0.0, layer_decay=0.5)
    optimizer = build_optimizer(model, config, effective_batch=256)  # peak lr 1e-2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model({"x": torch.randn(5, 3, 4)}).square().sum()
    loss.backward()
    optimizer.step()
    # Adam's first step is lr * g / (|g| + eps): each coordinate moves by lr (for |g| >> eps)
    for name, scale in [("embed.weight", 0.125), ("blocks.1.1.weight", 0.5), ("head.weight", 1)]:
        moved = (dict(model.named_parameters())[name] - before[name]).abs()
        assert moved.max().item() == pytest.approx(1e-2 * scale, rel=1e-3), name


def test_warmup_cosine_values_by_hand():
    peak, low = 1e-3, 1e-6
    # warm-up of 10 steps (peak / 10 for the first: no step is wasted at lr 0), cosine over
    # the 90 left down to min
    assert warmup_cosine_lr(0, peak, 100, 10, low) == pytest.approx(peak / 10)
    assert warmup_cosine_lr(4, peak, 100, 10, low) == pytest.approx(peak / 2)
    assert warmup_cosine_lr(9, peak, 100, 10, low) == pytest.approx(peak)
    assert warmup_cosine_lr(10, peak, 100, 10, low) == pytest.approx(peak)
    assert warmup_cosine_lr(55, peak, 100, 10, low) == pytest.approx((peak + low) / 2)
    quarter = low + (peak - low) * (1 + math.cos(math.pi / 4)) / 2  # at 10 + 90/4 = 32.5
    assert warmup_cosine_lr(32.5, peak, 100, 10, low) == pytest.approx(quarter)
    assert warmup_cosine_lr(100, peak, 100, 10, low) == pytest.approx(low)
    assert warmup_cosine_lr(150, peak, 100, 10, low) == pytest.approx(low)
    assert warmup_cosine_lr(0, peak, 100, 0, low) == pytest.approx(peak)


def test_schedule_sets_every_group_lr_times_its_scale():
    model = TinyClassifier()
    config = OptimConfig(base_lr=1e-3, layer_decay=0.5, warmup_steps=4, min_lr=0.0)
    optimizer = build_optimizer(model, config, effective_batch=512)  # peak 2e-3
    schedule = build_schedule(optimizer, config, total_steps=20, effective_batch=512)
    for g in optimizer.param_groups:  # first step of the warm-up: a quarter of the peak
        assert g["lr"] == pytest.approx(2e-3 / 4 * g["lr_scale"])
    for _ in range(2):
        schedule.step()
    for g in optimizer.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * 3 / 4 * g["lr_scale"])
    assert sorted({g["lr_scale"] for g in optimizer.param_groups}) == [0.125, 0.25, 0.5, 1.0]


def test_warmup_fraction_of_the_total_steps():
    assert OptimConfig(warmup_fraction=0.1).warmup_for(1000) == 100
    assert OptimConfig(warmup_steps=50, warmup_fraction=0.1).warmup_for(1000) == 50
    assert OptimConfig(warmup_steps=50).warmup_for(20) == 20
    with pytest.raises(ConfigError, match="layer_decay"):
        OptimConfig(layer_decay=0.0)


def _train(model, optimizer, schedule, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 4, generator=gen)
        optimizer.zero_grad()
        model({"x": x}).logsumexp(-1).mean().backward()
        optimizer.step()
        schedule.step()


def _fresh(config):
    torch.manual_seed(0)
    model = TinyClassifier()
    optimizer = build_optimizer(model, config, effective_batch=256)
    return model, optimizer, build_schedule(optimizer, config, total_steps=20, effective_batch=256)


def test_resumed_optimiser_and_schedule_end_where_an_uninterrupted_run_ends():
    config = OptimConfig(base_lr=5e-3, warmup_steps=5, min_lr=1e-5)
    model, optimizer, schedule = _fresh(config)
    _train(model, optimizer, schedule, 20, seed=1)

    first, opt1, sched1 = _fresh(config)
    _train(first, opt1, sched1, 8, seed=1)
    saved_model = {k: v.clone() for k, v in first.state_dict().items()}
    saved_opt = opt1.state_dict()
    saved_sched = json.loads(json.dumps(sched1.state_dict()))  # it lives in train_state.json

    resumed, opt2, sched2 = _fresh(config)
    resumed.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.last_step == 8 and sched2.get_last_lr() == sched1.get_last_lr()
    # the data stream continues where it stopped: replay the first 8 batches' draws
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        torch.randn(4, 3, 4, generator=gen)
    for _ in range(12):
        x = torch.randn(4, 3, 4, generator=gen)
        opt2.zero_grad()
        resumed({"x": x}).logsumexp(-1).mean().backward()
        opt2.step()
        sched2.step()
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert sched2.get_last_lr() == schedule.get_last_lr()


def test_resuming_with_a_different_schedule_is_refused():
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    state = WarmupCosineSchedule(optimizer, 1e-3, total_steps=100).state_dict()
    other = WarmupCosineSchedule(optimizer, 1e-3, total_steps=200)
    with pytest.raises(ValueError, match="total_steps was 100 and is now 200"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineSchedule(optimizer, 1e-3, total_steps=10, warmup_steps=11)
