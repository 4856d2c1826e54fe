"""`netmamba <verb>`: one verb per stage of the data flow.

Each verb lives in its own module `netmamba.cli.<verb>` that defines `HELP` (one line),
`EXAMPLE` (shown by --help), `add_arguments(parser)` and `run(args) -> int` (the exit status).
Command modules import heavy libraries (torch, pyarrow) inside `run`, so `netmamba --help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from netmamba import __version__

# Verbs in data-flow order: capture -> dataset -> model -> train/evaluate -> classify -> serve.
VERBS = (
    "prepare",
    "pretrain",
    "finetune",
    "evaluate",
    "audit",
    "experiment",
    "classify",
    "export",
    "serve",
)


class CommandError(Exception):
    """An error the user can fix: printed as one line, exit status 2 (or `status`)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _available_verbs() -> dict[str, object]:
    modules = {}
    for verb in VERBS:
        try:
            modules[verb] = importlib.import_module(f"netmamba.cli.{verb}")
        except ModuleNotFoundError as exc:
            if exc.name != f"netmamba.cli.{verb}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netmamba",
        description="Classify network traffic from packet captures with NetMamba+ models.",
        epilog="Run `netmamba VERB --help` for the options and an example of each verb.",
    )
    parser.add_argument("--version", action="version", version=f"netmamba {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in _available_verbs().items():
        example = getattr(module, "EXAMPLE", "")
        p = sub.add_parser(
            verb,
            help=module.HELP,  # type: ignore[attr-defined]
            description=module.HELP,  # type: ignore[attr-defined]
            epilog=f"example:\n  {example}" if example else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        module.add_arguments(p)  # type: ignore[attr-defined]
        p.set_defaults(_run=module.run)  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except CommandError as exc:
        print(f"netmamba {args.verb}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"netmamba {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
