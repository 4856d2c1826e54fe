"""`netmamba serve` on the command line: a replay stores what `classify` gives, a capture
stream on standard input, Ctrl-C flushes the open flows, and errors a user can fix are one line
that says what to do (exit status 2)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from netmamba.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # the service's helpers
import servemodel


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve-cli")
    return {
        "model": servemodel.make_checkpoint(folder / "model", min_packets=2),
        "capture": servemodel.write_traffic(folder / "traffic.pcap", n_sessions=10),
    }


def stored(db: Path) -> dict[tuple, tuple]:
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT src_ip, src_port, dst_ip, dst_port, protocol, label, confidence, source "
            "FROM flows"
        ).fetchall()
    out = {tuple(r[:5]): (r[5], r[6], r[7]) for r in rows}
    assert len(out) == len(rows), "a flow stored twice"
    return out


def classified(files: dict[str, Path]) -> dict[tuple, tuple]:
    from netmamba.classify import classify_captures

    flows = classify_captures([files["capture"]], model=files["model"]).flows
    ok = flows[flows["status"] == "ok"]
    return {
        (r.src_ip, r.src_port, r.dst_ip, r.dst_port, r.protocol): (r.label, r.confidence,
                                                                   r.confidence_2)
        for r in ok.itertuples()
    }  # fmt: skip


def assert_same_labels(served: dict, expected: dict) -> None:
    assert served.keys() == expected.keys() and len(expected) > 20
    for key, (label, confidence, runner_up) in expected.items():
        assert served[key][1] == pytest.approx(confidence, abs=1e-4)
        if confidence - runner_up > 1e-4:  # a near tie may swap with other batch sizes
            assert served[key][0] == label


def serve_args(files: dict[str, Path], db: Path, *extra: str) -> list[str]:
    return ["serve", "--model", str(files["model"]), "--store", str(db), *extra]


def test_replay_stores_every_flow_with_the_label_classify_gives(
    files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "results.sqlite"
    caplog.set_level("INFO", logger="netmamba.serve")
    args = serve_args(files, db, "--read", str(files["capture"]), "--no-http", "--exit-when-done")
    assert main(args) == 0
    assert_same_labels(stored(db), classified(files))
    assert {v[2] for v in stored(db).values()} == {str(files["capture"])}
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    assert len(done) == 1 and "0 dropped" in done[0] and "too short to classify" in done[0]


def run_cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netmamba", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,  # type: ignore[arg-type]
    )


def test_a_capture_stream_on_standard_input(files: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    with open(files["capture"], "rb") as stdin:  # as in: tcpdump -w - | netmamba serve --read -
        proc = run_cli(*serve_args(files, db, "--read", "-", "--no-http", "--exit-when-done"),
                       stdin=stdin)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    served = stored(db)
    assert_same_labels(served, classified(files))
    assert {v[2] for v in served.values()} == {"stdin"}


def test_ctrl_c_classifies_and_stores_the_open_flows(
    files: dict[str, Path], tmp_path: Path
) -> None:
    db = tmp_path / "results.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "netmamba", *serve_args(files, db, "--read", "-", "--no-http")],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=False,
    )
    log: list[bytes] = []
    reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    assert proc.stdin is not None
    proc.stdin.write(files["capture"].read_bytes())  # ...and the stream stays open
    proc.stdin.flush()
    deadline = time.monotonic() + 60
    while not any(b"reading stdin" in line for line in log) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the packets are in the flow table: most flows are still open
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, b"".join(log).decode()
    text = b"".join(log).decode()
    assert "SIGINT: finishing" in text and "Traceback" not in text
    assert_same_labels(stored(db), classified(files))


def fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("netmamba serve: error: ") and "\n" not in err
    return err


def test_user_errors_are_one_line_that_says_what_to_do(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, model = str(tmp_path / "r.sqlite"), str(files["model"])
    err = fails(capsys, ["serve", "-r", str(files["capture"]), "--model", str(tmp_path / "nope")])
    assert "nope: no such model; give a built-in name" in err
    bad = tmp_path / "notes.pcap"
    bad.write_text("hello")
    err = fails(capsys, ["serve", "-r", str(bad), "--model", model, "--store", db])
    assert "notes.pcap: not a pcap or pcapng capture" in err
    err = fails(capsys, ["serve", "-i", "lo", "--speed", "2", "--model", model])
    assert "--speed paces a replay" in err
    err = fails(capsys, ["serve", "-i", "nm-nope0", "--model", model, "--store", db])
    assert "no network interface named 'nm-nope0' (available: " in err
    err = fails(capsys, ["serve", "-r", str(files["capture"]), "--model", model, "--store",
                         str(tmp_path / "no" / "such" / "folder.sqlite")])  # fmt: skip
    assert "folder no" in err or "does not exist" in err


def test_a_port_in_use_is_named(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = serve_args(files, tmp_path / "r.sqlite", "-r", str(files["capture"]), "--port",
                          str(port))  # fmt: skip
        err = fails(capsys, argv)
    assert f"127.0.0.1:{port}" in err and "pick one with --port" in err


def _drop_cap_net_raw() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 13, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_RAW
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_PACKET is Linux")
def test_missing_capture_permission_says_how_to_grant_it(files: dict[str, Path]) -> None:
    try:
        proc = run_cli("serve", "-i", "lo", "--model", str(files["model"]),
                       preexec_fn=_drop_cap_net_raw if os.geteuid() == 0 else None)  # fmt: skip
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot start a child without CAP_NET_RAW here: {exc}")
    assert proc.returncode == 2
    assert "netmamba serve: error: capturing on 'lo' needs root or CAP_NET_RAW" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "netmamba serve --interface eth0" in out and "--classify-within" in out
