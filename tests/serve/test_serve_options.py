"""Command-line options of `netmamba serve` -> configurations, and the errors for bad ones."""

from __future__ import annotations

import argparse

import pytest

from netmamba.serve.options import (
    OptionError,
    add_arguments,
    capture_config,
    duration_s,
    serve_config,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="netmamba serve")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_live_defaults() -> None:
    args = parse("--interface", "eth0")
    config = serve_config(args)
    assert config.store == "netmamba-results.sqlite" and config.http and config.port == 8000
    assert config.max_age_s == 7 * 86400 and config.max_flows == 1_000_000
    live = capture_config(args)
    assert (live.interface, live.bpf, live.method) == ("eth0", "", "ring")


def test_everything_set() -> None:
    args = parse(
        "-r", "-", "--speed", "2", "--redis", "redis://db:6379/1", "--retention", "12h",
        "--max-flows", "0", "--batch", "64", "--max-wait-ms", "5", "--queue", "100",
        "--overload", "block", "--host", "0.0.0.0", "--port", "0", "--exit-when-done",
    )  # fmt: skip
    config = serve_config(args)
    assert config.store == "redis://db:6379/1"  # --redis wins over the SQLite file
    assert config.max_age_s == 12 * 3600 and config.max_flows is None
    assert (config.max_batch, config.max_wait_ms, config.queue_flows) == (64, 5.0, 100)
    assert config.overload == "block" and config.host == "0.0.0.0" and config.port == 0
    assert not config.keep_serving
    assert capture_config(args) is None and args.read == "-" and args.speed == 2.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("-i", "eth0", "--speed", "2"), "--speed paces a replay"),
        (("-r", "x.pcap", "--filter", "tcp"), "tcpdump -r x.pcap -w - 'tcp' | netmamba serve"),
        (("-r", "x.pcap", "--batch", "0"), "--batch must be at least 1"),
        (("-r", "x.pcap", "--port", "70000"), "--port must be 0-65535"),
        (("-r", "x.pcap", "--speed", "-1"), "--speed must be positive"),
    ],
)
def test_bad_combinations_say_what_to_change(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("|", r"\|")):
        serve_config(parse(*argv))


def test_a_source_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--port", "9000")
    assert "one of the arguments -i/--interface -r/--read is required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'a week' is not a duration"):
        duration_s("a week")
