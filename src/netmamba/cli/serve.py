"""`netmamba serve`: classify traffic as it crosses a link, or replayed captures; results in
SQLite or Redis, an HTTP API and a dashboard. The pieces are in `netmamba.serve`."""

from __future__ import annotations

import argparse
import os

from netmamba.serve import options

HELP = "classify live traffic or replayed captures; HTTP API, dashboard, SQLite/Redis results"
EXAMPLE = options.EXAMPLES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_arguments(parser)


def default_threads() -> int:
    """Model threads: one per core. The packet process needs a fraction of one (measured:
    2 CPU-seconds for the 222,000 packets and 10,500 flows of the nDPI captures, the model
    several times that), and the model's threads yield to it (see netmamba.serve.model)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    from netmamba.capture import CaptureError
    from netmamba.capture.live import CaptureError as LiveCaptureError
    from netmamba.cli import CommandError
    from netmamba.serve.batcher import BatcherError
    from netmamba.serve.flowtable import MeterFlowTable
    from netmamba.serve.model import ModelError, checkpoint_info, model_spec
    from netmamba.serve.service import ServeError, Service

    try:
        config = options.serve_config(args)
        info = checkpoint_info(args.model)
        table_config = options.flow_table_config(args, info)
    except (options.OptionError, ModelError) as exc:
        raise CommandError(str(exc)) from None
    if args.quiet:
        config = config.replace(log_interval_s=0)
    spec = model_spec(info, threads=args.threads or default_threads())
    try:
        source = options.open_source(args)
    except (CaptureError, LiveCaptureError, OSError) as exc:
        raise CommandError(str(exc)) from None
    table = MeterFlowTable(
        info.flow, info.data_features, info.debias, table_config, source=source.name
    )
    try:
        service = Service(config, source, table, spec)
    except ServeError as exc:
        source.close()
        raise CommandError(str(exc)) from None
    try:
        summary = service.run()
    except ServeError as exc:
        raise CommandError(str(exc)) from None
    except BatcherError as exc:
        raise CommandError(f"inference failed: {exc}", status=1) from None
    return 1 if summary.flows_lost else 0
