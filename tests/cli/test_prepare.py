"""`netmamba prepare` on the command line: summary, options reaching the configuration,
labels by MAC, shards and merge, exit statuses and error messages."""

from __future__ import annotations

import json

import pytest

import pcapgen as pg
from netmamba.cli import main

S = 1_000_000_000


def write_devices(root):
    """Two 'devices' (by MAC) in one folder each, plus a host that is neither."""
    macs = {"cam": bytes.fromhex("aa0000000001"), "plug": bytes.fromhex("aa0000000002")}
    for d, (name, mac) in enumerate(macs.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for f in range(2):
            frames = []
            for k in range(3):
                sent = pg.udp_flow(
                    (f"10.0.{d}.{k + 1}", 1000 + k),
                    ("192.0.2.9", 8000),
                    [("client", f"{name}{f}{k}".encode())] * 3,
                    start_ns=(1_700_000_000 + 10 * f + k) * S,
                )
                frames += [
                    (s.ts_ns, pg.ethernet(s.ip, src_mac=mac, dst_mac=b"\xbb" * 6)) for s in sent
                ]
            other = pg.udp_flow(("10.9.9.9", 7), ("192.0.2.9", 8000), [("client", b"x")])
            frames += pg.frames(other, src_mac=b"\xcc" * 6)
            pg.write_pcap(folder / f"setup-{f}.pcap", frames)
    labels = root / "macs.csv"
    labels.write_text("mac,label\n" + "".join(f"{m.hex(':')},{n}\n" for n, m in macs.items()))
    return root, labels


def test_folder_per_class_run_prints_the_summary(tmp_path, capsys):
    root, _ = write_devices(tmp_path / "in")
    out = tmp_path / "ds"
    code = main(
        [
            "prepare",
            str(root),
            "-o",
            str(out),
            "--quiet",
            "--min-per-class",
            "1",
            "--split",
            "flow",
            "--ratios",
            "1:0:1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "cam" in captured.out and "plug" in captured.out
    assert f"wrote dataset {out}" in captured.out
    assert "ignored 1 files that are not captures" in captured.out  # macs.csv
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["valid"]["flows"] == 0
    assert manifest["flows"] == 16  # 12 device flows + 4 of the other host


def test_labels_by_mac_drop_other_hosts(tmp_path, capsys):
    root, labels = write_devices(tmp_path / "in")
    out = tmp_path / "ds"
    code = main(
        [
            "prepare",
            str(root),
            "-o",
            str(out),
            "-q",
            "--labels",
            str(labels),
            "--min-per-class",
            "1",
            "--debias",
            "ports=zero",
            "--debias",
            "tcp_window=on",
            "--mode",
            "bidirectional",
            "--packets",
            "2",
            "--payload-bytes",
            "8",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_names"] == ["cam", "plug"]
    assert manifest["dropped"] == {"no_label": 4}  # one other-host flow per capture
    cfg = manifest["config"]
    assert cfg["debias"]["ports"] == "zero" and cfg["debias"]["tcp_window"] is True
    assert cfg["flow"]["mode"] == "bidirectional"
    assert cfg["features"]["n_packets"] == 2 and cfg["features"]["payload_bytes"] == 8


def test_shards_then_merge(tmp_path, capsys):
    root, labels = write_devices(tmp_path / "in")
    common = ["-q", "--labels", str(labels), "--min-per-class", "1", "--no-debias"]
    for i in range(2):
        assert (
            main(
                ["prepare", str(root), "-o", str(tmp_path / f"s{i}"), "--shard", f"{i}/2", *common]
            )
            == 0
        )
    assert "partial result for shard 1/2" in capsys.readouterr().out
    assert (
        main(
            [
                "prepare",
                "--merge",
                str(tmp_path / "s0"),
                str(tmp_path / "s1"),
                "-o",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    merged = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert merged["flows"] == 12 and merged["config"]["debias"]["ip_addresses"] == "keep"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["MISSING"], 2, "no such file or folder"),
        (["IN", "--shard", "2/2"], 2, "--shard 2/2: expected I/N with 0 <= I < N"),
        (["IN", "--debias", "color=red"], 2, "expected NAME=VALUE"),
        (["IN", "--labels", "LABELS", "--label-column", "type"], 2, "no label column 'type'"),
        (["IN", "--ratios", "8:1"], 2, "expected three numbers"),
        (["IN", "--mode", "bidirectional", "--idle-timeout", "0"], 2, "must be positive"),
        (["JUNK"], 1, "nothing usable: no packets could be read"),
        (["IN", "--min-packets", "9"], 1, "nothing usable: every flow was dropped"),
    ],
)
def test_errors_name_the_problem_and_set_the_exit_status(tmp_path, capsys, args, status, message):
    root, labels = write_devices(tmp_path / "in")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.pcap").write_bytes(b"garbage that is not a capture")
    swap = {
        "IN": str(root),
        "MISSING": str(tmp_path / "nope"),
        "LABELS": str(labels),
        "JUNK": str(junk),
    }
    argv = ["prepare", *(swap.get(a, a) for a in args), "-o", str(tmp_path / "out"), "-q"]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("netmamba prepare: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    root, _ = write_devices(tmp_path / "in")
    out = tmp_path / "ds"
    args = ["prepare", str(root), "-o", str(out), "-q", "--min-per-class", "1"]
    assert main(args) == 0
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "netmamba prepare captures/" in out and "--merge" in out


def test_settings_file_with_options_overriding_it(tmp_path, capsys):
    root, _ = write_devices(tmp_path / "in")
    settings = tmp_path / "prepare.json"
    settings.write_text(
        json.dumps(
            {
                "features": {"n_packets": 2, "seq_len": 4},
                "split": {"strategy": "file"},
                "cleaning": {"min_per_class": 1},
            }
        )
    )
    out = tmp_path / "ds"
    assert (
        main(
            [
                "prepare",
                str(root),
                "-o",
                str(out),
                "-q",
                "--config",
                str(settings),
                "--seq-len",
                "3",
            ]
        )
        == 0
    )
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert (cfg["features"]["n_packets"], cfg["features"]["seq_len"]) == (2, 3)
    assert cfg["split"]["strategy"] == "file"
    settings.write_text(json.dumps({"features": {"n_packets": 2, "colour": 1}}))
    assert (
        main(["prepare", str(root), "-o", str(tmp_path / "x"), "-q", "--config", str(settings)])
        == 2
    )
    assert "unknown setting(s) colour" in capsys.readouterr().err
