"""From captures to a report on the command line: prepare -> pretrain -> finetune -> evaluate ->
audit on a tiny dataset, and the errors a user sees when something does not fit."""

from __future__ import annotations

import json

import pytest

from netmamba.cli import main
from train import toydata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    path = tmp_path_factory.mktemp("settings") / "tiny.json"
    path.write_text(json.dumps({"preset": "fast", "model": toydata.TINY_MODEL}))
    return path


def test_captures_to_report_on_the_command_line(tmp_path, tiny_settings, capsys):
    captures = toydata.write_captures(tmp_path / "captures", sessions=20)
    data, pre, run, ev, au = (tmp_path / n for n in ("data", "pre", "run", "eval", "audit"))
    assert (
        main(
            [
                "prepare",
                str(captures),
                "-o",
                str(data),
                "-q",
                "--packets",
                "3",
                "--header-bytes",
                "40",
                "--payload-bytes",
                "40",
                "--seq-len",
                "10",
                "--min-per-class",
                "1",
                "--protocol-filter",
                "tcp_udp",
                "--split",
                "flow",
                "--ratios",
                "6:2:2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "pretrain",
                str(data),
                "-o",
                str(pre),
                "-q",
                "--config",
                str(tiny_settings),
                "--steps",
                "6",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pre-trained 6 steps" in out and str(pre / "checkpoint") in out
    assert (
        main(
            [
                "finetune",
                str(data),
                "-o",
                str(run),
                "-q",
                "--from",
                str(pre),
                "--epochs",
                "3",
                "--batch-size",
                "16",
                "--lr",
                "0.16",
                "--warmup-epochs",
                "1",
                "--set",
                "baseline.max_iter=20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "GBDT baseline" in out and "accuracy" in out and "fine-tuned" in out
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["train"]["epochs"] == 3.0
    assert record["config"]["optim"]["base_lr"] == 0.16
    assert record["config"]["baseline"]["max_iter"] == 20
    assert record["init"]["kind"] == "pretrained"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "weighted_f1"} <= set(metrics)
    assert (run / "report.html").is_file()
    assert (
        main(
            [
                "evaluate",
                str(run),
                str(data),
                "-o",
                str(ev),
                "--batch-sizes",
                "1,2",
                "--seconds",
                "0.05",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "calibration: T =" in out and "throughput: batch 1:" in out
    evaluated = json.loads((ev / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"])  # the same model and flows
    assert (ev / "report.html").is_file()
    assert main(["audit", str(run), str(data), "-o", str(au), "-q", "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "debias:ports" in out and "blank:payload bytes" in out
    assert (au / "report.html").is_file()


def test_training_verbs_refuse_what_they_cannot_do(tmp_path_factory, tmp_path, capsys):
    data = toydata.toy_dataset(tmp_path_factory)
    run = toydata.finetuned_run(tmp_path_factory)
    code = main(["finetune", str(data), "-o", str(run), "-q"])
    assert code == 2
    assert "already exists: add --resume" in capsys.readouterr().err
    code = main(["finetune", str(data), "-o", str(tmp_path / "x"), "--set", "train.bogus=1"])
    assert code == 2
    assert "unknown setting(s) bogus" in capsys.readouterr().err
    code = main(["finetune", str(data), "-o", str(tmp_path / "x"), "--set", "nosuch.key=1"])
    assert code == 2
    assert "nosuch is not a section of settings" in capsys.readouterr().err
    code = main(["pretrain", str(tmp_path / "missing"), "-o", str(tmp_path / "p")])
    assert code == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    code = main(["finetune", str(data), "-o", str(tmp_path / "y"), "--config", "huge"])
    assert code == 2
    assert "neither a preset (paper, fast) nor a settings file" in capsys.readouterr().err
    other = toydata.prepare_toy(tmp_path / "other", sessions=4, classes=("web", "game"))
    code = main(["evaluate", str(run), str(other), "-o", str(tmp_path / "e")])
    assert code == 2
    assert "classes the model was not trained on: game" in capsys.readouterr().err
    code = main(["evaluate", str(tmp_path), str(data), "-o", str(tmp_path / "e")])
    assert code == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["pretrain", "finetune", "evaluate", "audit", "experiment"])
def test_help_shows_an_example(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"netmamba {verb} " in capsys.readouterr().out
