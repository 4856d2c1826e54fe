"""Throughput rows per batch size, and a peak-memory probe that sees torch's allocations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from netmamba.evaluate.throughput import CpuPeakMemory, count_parameters, measure_throughput

MB = 1024 * 1024


class ScratchModel(nn.Module):
    """Allocates (and touches) `mb_per_flow` MB of scratch memory per flow in its forward."""

    def __init__(self, mb_per_flow: float = 0.0) -> None:
        super().__init__()
        self.head = nn.Linear(20, 3)
        self.mb_per_flow = mb_per_flow
        self.seen_training: list[bool] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen_training.append(self.training)
        sizes = batch["sizes"].float()  # (B, 20)
        if self.mb_per_flow:
            elements = int(self.mb_per_flow * MB / 4) * sizes.shape[0]
            scratch = torch.ones(elements)  # written, so resident
            sizes = sizes + scratch[:1]
        return self.head(sizes)  # (B, 3)


def _sample(n=3):
    return {
        "sizes": np.arange(n * 20, dtype=np.int16).reshape(n, 20),
        "seq_mask": np.ones((n, 20), bool),
    }


def test_one_row_per_batch_size_in_eval_mode_and_training_mode_restored():
    model = ScratchModel()
    model.train()
    out = measure_throughput(model, _sample(), batch_sizes=(4, 1), min_seconds=0.01, warmup=1)
    assert [r["batch_size"] for r in out["results"]] == [1, 4]
    assert all(r["flows_per_s"] > 0 and r["iters"] >= 3 for r in out["results"])
    r = out["results"][1]
    assert r["flows_per_s"] == pytest.approx(4 * 1000.0 / r["batch_ms"])
    assert not any(model.seen_training) and model.training
    assert out["parameters"] == {"total": 63, "trainable": 63} == count_parameters(model)
    assert out["device"] == "cpu" and out["memory_method"]


def test_cpu_peak_memory_sees_a_64_mb_torch_allocation():
    probe = CpuPeakMemory()
    with probe:
        scratch = torch.ones(16 * MB)  # 64 MB of float32
        del scratch
    assert probe.rise >= 60 * MB, (probe.method, probe.rise / MB)
    assert probe.rise < 200 * MB


def test_peak_memory_grows_with_the_batch_even_after_a_smaller_batch_ran():
    model = ScratchModel(mb_per_flow=8.0)
    out = measure_throughput(model, _sample(), batch_sizes=(2, 8), min_seconds=0.0, warmup=2)
    small, large = (r["peak_memory_mb"] for r in out["results"])
    assert small >= 15, out  # 2 flows x 8 MB
    assert large >= 60, out  # 8 flows x 8 MB: memory the first batch freed must not hide it
    assert large > 3 * small


def test_bad_batch_sizes_and_empty_samples_are_explained():
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        measure_throughput(ScratchModel(), _sample(), batch_sizes=(0,))
    with pytest.raises(ValueError, match="at least one flow"):
        measure_throughput(ScratchModel(), {"sizes": np.zeros((0, 20), np.int16)}, (1,))


def test_sampling_fallback_sees_an_allocation_that_lasts(monkeypatch):
    import time

    import netmamba.evaluate.throughput as throughput

    monkeypatch.setattr(throughput, "_high_water_mark_resettable", lambda: False)
    probe = CpuPeakMemory()
    assert probe.method.startswith("RSS sampled")
    with probe:
        scratch = torch.ones(16 * MB)  # 64 MB, held for 50 ms
        time.sleep(0.05)
        del scratch
    assert probe.rise >= 60 * MB, probe.rise / MB
