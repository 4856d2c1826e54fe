"""Two CPU processes under torchrun (gloo) train the same model as one process with the same
global batch.

Not bit-exact: each process sums its half of the batch, gloo averages the two gradients, and
the single process sums all of it with two threads, so the floating-point additions happen in
another order: weights end about 1e-5 apart after 12 steps that moved them by about 1e-1.
Dropout and drop path are off: each process draws its own masks, by design."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from netmamba.models import ModelConfig, build_classifier
from netmamba.train.finetune import FinetuneConfig, finetune
from netmamba.train.loop import read_metrics_log
from train import toydata

REPO = toydata.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tmp_path_factory, tmp_path
):
    toy = toydata.toy_dataset(tmp_path_factory)
    settings = json.loads(json.dumps(toydata.TINY_FINETUNE))
    settings["model"].update(drop_path=0.0, dropout=0.0)
    settings["train"].update(epochs=2, log_every=1, checkpoint_every=4)
    settings["baseline"] = None
    # the LDA loss's class weights differ between the two halves of a batch: each process's
    # share of the gradient is its share of the batch's total weight, not half
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "netmamba",
        "finetune",
        str(toy),
        "-o",
        str(tmp_path / "two"),
        "--config",
        str(tmp_path / "settings.json"),
        "--device",
        "cpu",
        "-q",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        finetune(toy, tmp_path / "one", FinetuneConfig.from_dict(settings), progress=False)
    finally:
        torch.set_num_threads(before)
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["world_size"] == 2
    one = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    torch.manual_seed(0)  # the run's seed: its initial weights
    start = build_classifier(ModelConfig.preset("fast", **settings["model"]), 3).state_dict()
    for name in one:
        moved = float((one[name] - start[name]).abs().max())
        apart = float((two[name] - one[name]).abs().max())
        assert apart <= 2e-4 and apart <= 0.01 * moved, f"{name}: {apart} apart, moved {moved}"
    train = [r for r in read_metrics_log(tmp_path / "one") if r["kind"] == "train"]
    train2 = [r for r in read_metrics_log(tmp_path / "two") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [r["step"] for r in train2] == list(range(1, 13))
    for a, b in zip(train, train2, strict=True):  # the global batch's loss, step by step
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
