"""Experiments as files: the tiny experiment runs end to end into one results table, running it
again reuses what is done, and every shipped experiment file (the paper's tables) plans."""

from __future__ import annotations

import csv
import json

import pytest

from netmamba.cli import main
from netmamba.experiment import ExperimentError, load_experiment, plan
from train import toydata

EXPERIMENTS = toydata.Path(__file__).resolve().parents[2] / "experiments"
SHIPPED = sorted(p.name for p in EXPERIMENTS.glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_tiny_experiment_runs_end_to_end(tmp_path_factory, tmp_path, capsys):
    data = toydata.toy_dataset(tmp_path_factory)
    unseen = toydata.unseen_dataset(tmp_path_factory)
    args = [
        "experiment",
        str(EXPERIMENTS / "tiny.yaml"),
        "-o",
        str(tmp_path / "out"),
        "-q",
        "--var",
        f"DATASET={data}",
        "--var",
        f"UNKNOWN={unseen}",
    ]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "| variant | dataset |" in out.out
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == [
        "NetMamba+ pre-trained",
        "GBDT baseline",
        "NetMamba+ from scratch",
    ]
    assert [r["init"] for r in rows] == ["pretrained", "-", "scratch"]
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
        assert 0.0 <= float(row["macro_f1"]) <= 1.0
    assert float(rows[0]["unknown_auroc"]) >= 0.0 and rows[1]["unknown_auroc"] == ""
    for row in rows:  # each figure traces back to its run folder and its settings
        run = json.loads((toydata.Path(row["run"]) / "run.json").read_text())
        assert run["kind"] == "finetune"
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert markdown.startswith("# tiny smoke experiment")
    assert markdown.count("\n| ") == 4  # header + 3 rows
    # again: nothing is trained twice
    assert main(args) == 0
    assert capsys.readouterr().err.count("done before, reused") == 3


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_experiment_file_plans(name, tmp_path):
    exp_path = EXPERIMENTS / name
    declared = load_declared(exp_path)
    given = {k: str(tmp_path / k.lower()) for k, v in declared.items() if v is None}
    if name == "main.yaml":
        given["ISCXVPN2016"] = str(tmp_path / "vpn")
    exp = load_experiment(exp_path, given, use_environment=False)
    jobs = plan(exp, tmp_path / "out")
    finetunes = [j for j in jobs if j.kind == "finetune"]
    assert finetunes, name
    assert len({j.folder for j in finetunes}) == len(finetunes)  # no two runs share a folder
    for job in finetunes:
        assert job.init is None or job.init.startswith(str(tmp_path / "out" / "pretrain"))
    assert (
        main(
            [
                "experiment",
                str(exp_path),
                "-o",
                str(tmp_path / "dry"),
                "--dry-run",
                *[f"--var={k}={v}" for k, v in given.items()],
            ]
        )
        == 0
    )


def load_declared(path):
    import yaml

    return yaml.safe_load(path.read_text()).get("vars") or {}


def test_the_main_comparison_pre_trains_each_architecture_once(tmp_path):
    exp = load_experiment(
        EXPERIMENTS / "main.yaml",
        {"ISCXVPN2016": "vpn", "CICIOT2022": "iot", "PRESET": "fast", "EPOCHS": "30"},
        use_environment=False,
    )
    jobs = plan(exp, tmp_path)
    pretrains = [j for j in jobs if j.kind == "pretrain"]
    assert len(pretrains) == 3  # NetMamba+, NetMamba (bytes), NetTrans
    assert len([j for j in jobs if j.kind == "finetune"]) == 8  # 4 variants x 2 datasets
    assert all(j.data == ["iot", "vpn"] for j in pretrains)  # default: the datasets themselves
    assert {j.settings["train"]["epochs"] for j in jobs if j.kind == "finetune"} == {30}
    assert sum(1 for j in jobs if j.kind == "finetune" and j.baseline) == 2  # once per dataset


def test_variables_are_required_declared_and_typed(tmp_path):
    with pytest.raises(ExperimentError, match=r"set the variable.*DATASET"):
        load_experiment(EXPERIMENTS / "lda.yaml", {}, use_environment=False)
    with pytest.raises(ExperimentError, match="declares no such variable"):
        load_experiment(EXPERIMENTS / "lda.yaml", {"DATASET": "d", "NOPE": "1"})
    exp = load_experiment(
        EXPERIMENTS / "lda.yaml",
        {"DATASET": "d", "REWEIGHT_FROM_EPOCH": "7"},
        use_environment=False,
    )
    deferred = next(v for v in exp.variants if "deferred" in v.name)
    assert deferred.settings["loss"]["reweight_from_epoch"] == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {a: x}\nvariants: [{name: v, settings: {loss: {kind: hinge}}}]\n")
    with pytest.raises(ExperimentError, match=r"LossConfig\.kind must be 'lda' or 'ce'"):
        load_experiment(bad)
