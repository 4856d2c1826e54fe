"""Long runs behave: the step budget is exact, an interrupted run resumed from its last
checkpoint ends bit-identical to an uninterrupted one, state is replaced atomically, and a run
folder is never reused by accident."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from netmamba.train.checkpoint import STATE_JSON, find_state, replace_folder
from netmamba.train.finetune import FinetuneConfig, finetune
from netmamba.train.loop import Interrupted, read_metrics_log
from netmamba.train.pretrain import PretrainConfig, pretrain
from netmamba.train.rundir import TrainError
from train import toydata

REPO = toydata.Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toydata.toy_dataset(tmp_path_factory)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def assert_identical(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ: {different[:5]}"


def losses(run):
    return [
        (r["kind"], r["step"], r.get("loss"), r.get("train_loss"), r.get("valid_macro_f1"))
        for r in read_metrics_log(run)
    ]


def pretrain_config(steps=9, checkpoint_every=3):
    settings = json.loads(json.dumps(toydata.TINY_PRETRAIN))
    settings["model"]["drop_path"] = 0.1  # random per step: the resumed run must replay it
    settings["train"].update(steps=steps, checkpoint_every=checkpoint_every, log_every=1)
    return PretrainConfig.from_dict(settings)


def test_the_step_budget_is_honoured_exactly(toy, tmp_path):
    manifest = json.loads((toy / "manifest.json").read_text())
    assert manifest["splits"]["train"]["flows"] == 90  # batches of 16: 6 steps per epoch
    result = pretrain([toy], tmp_path / "run", pretrain_config(steps=13), progress=False)
    assert result.loop.total_steps == 13
    state = json.loads((tmp_path / "run" / "last" / STATE_JSON).read_text())
    assert state["step"] == 13 and state["schedule"]["last_step"] == 13
    rows = [r for r in read_metrics_log(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, 14))
    epochs = [r for r in read_metrics_log(tmp_path / "run") if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == [6, 12, 13]  # epoch ends, and the budget's end
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 13 and metrics["epochs"] == pytest.approx(13 / 6)


def test_resumed_pretraining_ends_bit_identical(toy, tmp_path):
    config = pretrain_config()
    pretrain([toy], tmp_path / "a", config, progress=False)
    with pytest.raises(Interrupted):  # stops after step 5; the last state is step 3's
        pretrain([toy], tmp_path / "b", config, progress=False, stop_after=5)
    assert json.loads((tmp_path / "b" / "last" / STATE_JSON).read_text())["step"] == 3
    result = pretrain([toy], tmp_path / "b", config, progress=False, resume=True)
    assert result.loop.resumed_from == 3
    assert_identical(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # the log was rewound, not doubled


def test_resumed_finetuning_ends_bit_identical_with_the_same_best_checkpoint(toy, tmp_path):
    settings = json.loads(json.dumps(toydata.TINY_FINETUNE))
    settings["model"]["drop_path"] = 0.1
    settings["train"].update(epochs=4, checkpoint_every=5, log_every=2)
    settings["loss"] = {"reweight_from_epoch": 2}  # deferred re-weighting crosses the resume
    settings["baseline"] = None
    config = FinetuneConfig.from_dict(settings)
    a = finetune(toy, tmp_path / "a", config, progress=False)
    with pytest.raises(Interrupted):
        finetune(toy, tmp_path / "b", config, progress=False, stop_after=11)
    b = finetune(toy, tmp_path / "b", config, progress=False, resume=True)
    assert b.loop.resumed_from == 10
    assert_identical(tmp_path / "a" / "last", tmp_path / "b" / "last")
    assert_identical(tmp_path / "a" / "best", tmp_path / "b" / "best")
    assert a.metrics["best"] == b.metrics["best"]
    assert a.metrics["temperature"] == b.metrics["temperature"]
    assert a.metrics["accuracy"] == b.metrics["accuracy"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_a_run_killed_at_any_moment_resumes_to_the_same_end(toy, tmp_path):
    """A real SIGKILL of `netmamba pretrain` while it writes state every step."""
    settings = pretrain_config(steps=30, checkpoint_every=1).to_dict()
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    command = [
        sys.executable,
        "-m",
        "netmamba",
        "pretrain",
        str(toy),
        "-o",
        str(tmp_path / "b"),
        "--config",
        str(tmp_path / "settings.json"),
        "--threads",
        "1",
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    log = tmp_path / "b" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 6:
            break
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read()}")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = find_state(tmp_path / "b" / "last")
    assert state is not None
    assert 1 <= json.loads((state / STATE_JSON).read_text())["step"] < 30
    config = PretrainConfig.from_dict(settings)
    pretrain([toy], tmp_path / "b", config, progress=False, resume=True)
    pretrain([toy], tmp_path / "a", config, progress=False)
    assert_identical(tmp_path / "a" / "checkpoint", tmp_path / "b" / "checkpoint")


def test_state_replacement_survives_a_crash_between_the_renames(tmp_path):
    target = tmp_path / "last"
    target.mkdir()
    (target / STATE_JSON).write_text('{"step": 1}')
    new = tmp_path / ".last.tmp"
    new.mkdir()
    (new / STATE_JSON).write_text('{"step": 2}')
    replace_folder(new, target)
    assert json.loads((target / STATE_JSON).read_text())["step"] == 2
    assert not (tmp_path / ".last.old").exists()
    # a crash after the old folder was moved away and before the new one was moved in
    os.replace(target, tmp_path / ".last.old")
    assert find_state(target) == tmp_path / ".last.old"


def test_an_existing_run_folder_is_not_reused_silently(toy, tmp_path):
    config = pretrain_config(steps=2)
    pretrain([toy], tmp_path / "run", config, progress=False)
    with pytest.raises(TrainError, match="--resume to continue"):
        pretrain([toy], tmp_path / "run", config, progress=False)
    changed = pretrain_config(steps=2, checkpoint_every=1)
    with pytest.raises(TrainError, match=r"train\.checkpoint_every: 3 -> 1"):
        pretrain([toy], tmp_path / "run", changed, progress=False, resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="not a run folder"):
        pretrain([toy], tmp_path / "other", config, progress=False, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").exists()


def test_metrics_go_to_tensorboard_when_it_is_installed(toy, tmp_path, monkeypatch):
    import types

    written = []

    class SummaryWriter:  # stands in for torch.utils.tensorboard's
        def __init__(self, log_dir, purge_step=None):
            written.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            written.append((tag, step))

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )
    pretrain([toy], tmp_path / "run", pretrain_config(steps=2), progress=False)
    assert written[0] == ("open", str(tmp_path / "run" / "tensorboard"), None)
    assert ("train/loss", 1) in written and ("train/loss_bytes", 2) in written
    assert ("epoch/train_loss", 2) in written
    assert written[-1] == ("close",)
