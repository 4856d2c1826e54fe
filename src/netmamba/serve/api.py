"""The HTTP API and dashboard of `netmamba serve` (FastAPI).

    GET /                 the dashboard (one self-contained page; polls the endpoints below)
    GET /api/flows        recent classified flows: filters (label, address, port, protocol,
                          source, unknown, since/until on classification or first-packet time)
                          and paging (limit, offset); newest first
    GET /api/stats        flows, packets and bytes per label per time bucket
    GET /api/throughput   packets/s, Mb/s and flows/s, one point a second
    GET /api/health       status, model, source, counters, store; 503 when degraded
    GET /metrics          Prometheus text format
    GET /openapi.json     this API described (the reference)
    GET /docs             the same as a page of its own (no CDN: works on offline servers)

Malformed parameters get a 400 or 422 answer that names the parameter; a store that cannot
answer gives 503. Times are seconds since the epoch, ISO 8601 ("2026-05-01T12:00:00Z"), "now",
or relative to now ("-15m", "-2h", "-30s", "-1d").
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from netmamba import __version__
from netmamba.serve.metrics import CONTENT_TYPE, ServiceMetrics
from netmamba.serve.store import PROTOCOLS, FlowQuery, ResultStore, StoreError

MAX_LIMIT = 1000
MAX_BUCKETS = 5000
_RELATIVE = re.compile(r"-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# -- response models (they are the OpenAPI description) -------------------------------------


class TopClass(BaseModel):
    label: str
    probability: float


class Flow(BaseModel):
    flow_id: str
    source: str = Field(description="capture file or interface")
    protocol: int
    protocol_name: str
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    first_ts: float = Field(description="first packet, seconds since the epoch")
    last_ts: float
    packets: int = Field(description="packets counted when the flow was classified")
    bytes: int = Field(description="their IP bytes")
    label: str
    confidence: float
    top: list[TopClass]
    unknown: bool = Field(description="flagged as a class the model was not trained on")
    classified_at: float
    short: bool = Field(
        description="classified at a timeout with fewer packets than the model reads"
    )


class FlowList(BaseModel):
    total: int = Field(description="flows matching the filters")
    limit: int
    offset: int
    flows: list[Flow]


class StatsBucket(BaseModel):
    t: float = Field(description="bucket start, seconds since the epoch")
    label: str
    unknown: bool
    flows: int
    packets: int
    bytes: int


class LabelTotal(BaseModel):
    label: str
    unknown: bool
    flows: int
    packets: int
    bytes: int


class Stats(BaseModel):
    since: float
    until: float
    bucket: float = Field(description="bucket width in seconds, as used")
    time: str
    labels: list[LabelTotal] = Field(description="totals over the range, most flows first")
    buckets: list[StatsBucket]


class ThroughputPoint(BaseModel):
    t: float
    packets_per_s: float
    mbps: float
    flows_per_s: float


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str]
    version: str
    uptime_s: float
    service: dict[str, Any]
    counters: dict[str, int]
    rates: dict[str, float]
    store: dict[str, Any]


# -- parameter parsing ------------------------------------------------------------------------


def parse_time(text: str, now: float, name: str) -> float:
    """Seconds since the epoch from epoch seconds, ISO 8601, "now" or "-15m"-style text."""
    value = text.strip()
    if value == "now":
        return now
    match = _RELATIVE.fullmatch(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise HTTPException(
                400,
                f"{name}={text!r}: expected seconds since the epoch, an ISO 8601 time "
                "(2026-05-01T12:00:00Z), 'now' or a time relative to now like -15m",
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise HTTPException(400, f"{name}={text!r}: must be a finite time >= 0")
    return seconds


def parse_protocol(text: str) -> int:
    value = text.strip().lower()
    if value in PROTOCOLS:
        return PROTOCOLS[value]
    if value.isascii() and value.isdigit() and int(value) <= 255:  # not "¹": isdigit, no int
        return int(value)
    raise HTTPException(
        400, f"protocol={text!r}: expected {', '.join(PROTOCOLS)} or a number 0-255"
    )


def parse_address(text: str) -> str:
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        raise HTTPException(400, f"address={text!r} is not an IPv4 or IPv6 address") from None


def _range(since: str | None, until: str | None, default_since: str | None) -> tuple[Any, Any]:
    now = time.time()
    lo = parse_time(since, now, "since") if since is not None else None
    if lo is None and default_since is not None:
        lo = parse_time(default_since, now, "since")
    hi = parse_time(until, now, "until") if until is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise HTTPException(400, f"since ({lo}) is after until ({hi})")
    return lo, hi


# -- the application --------------------------------------------------------------------------


def dashboard_html() -> str:
    return resources.files("netmamba.serve").joinpath("static/index.html").read_text("utf-8")


def create_app(
    store: ResultStore,
    metrics: ServiceMetrics | None = None,
    status: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The API over `store`. `status()` describes the service for /api/health: a dict with
    "model", "source", ... and "problems" (a list of strings; any makes the service degraded).
    """
    metrics = metrics or ServiceMetrics()
    app = FastAPI(
        title="netmamba serve",
        version=__version__,
        description="Flows classified by a NetMamba+ model as they cross a link. The reference "
        "is /openapi.json; /docs shows it as a page that needs no internet access.",
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: blank offline
        redoc_url=None,
    )

    @app.exception_handler(StoreError)
    async def store_unavailable(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": f"results store unavailable: {exc}"}, status_code=503)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return dashboard_html()

    @app.get("/api/flows", response_model=FlowList, summary="Recent classified flows")
    def flows(
        label: str | None = Query(None, max_length=256, description="exact label"),
        address: str | None = Query(None, max_length=64, description="source or destination IP"),
        port: int | None = Query(None, ge=0, le=65535, description="source or destination port"),
        protocol: str | None = Query(None, max_length=8, description="tcp, udp or a number"),
        source: str | None = Query(None, max_length=256, description="interface or capture"),
        unknown: bool | None = Query(None, description="only unknown (true) or known (false)"),
        since: str | None = Query(None, max_length=64, description="from this time (inclusive)"),
        until: str | None = Query(None, max_length=64, description="to this time (exclusive)"),
        time_field: Literal["classified", "flow"] = Query(
            "classified",
            alias="time",
            description="filter and order by classification time or by the flow's first packet",
        ),
        limit: int = Query(100, ge=1, le=MAX_LIMIT),
        offset: int = Query(0, ge=0, le=10_000_000),
    ) -> dict[str, Any]:
        lo, hi = _range(since, until, None)
        query = FlowQuery(
            label=label,
            address=parse_address(address) if address is not None else None,
            port=port,
            protocol=parse_protocol(protocol) if protocol is not None else None,
            source=source,
            unknown=unknown,
            since=lo,
            until=hi,
            time_field=time_field,
            limit=limit,
            offset=offset,
        )
        page = store.query(query)
        return {
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "flows": [r.to_dict() for r in page.flows],
        }

    @app.get("/api/stats", response_model=Stats, summary="Flows per label over time")
    def stats(
        since: str = Query("-15m", max_length=64),
        until: str = Query("now", max_length=64),
        bucket: float | None = Query(
            None, ge=1, le=86400 * 366, description="bucket width in seconds (default: ~60 buckets)"
        ),
        time_field: Literal["classified", "flow"] = Query("classified", alias="time"),
    ) -> dict[str, Any]:
        lo, hi = _range(since, until, "-15m")
        hi = time.time() if hi is None else hi
        span = max(hi - lo, 1.0)
        width = bucket if bucket is not None else _nice_bucket(span / 60)
        if span / width > MAX_BUCKETS:
            raise HTTPException(
                400, f"{span / width:.0f} buckets asked; at most {MAX_BUCKETS}: widen the bucket"
            )
        width = store.stats_resolution(width)
        rows = store.stats(lo, hi, width, time_field)
        totals: dict[tuple[str, bool], list[int]] = {}
        for r in rows:
            t = totals.setdefault((r.label, r.unknown), [0, 0, 0])
            t[0] += r.flows
            t[1] += r.packets
            t[2] += r.bytes
        labels = [
            {"label": k[0], "unknown": k[1], "flows": v[0], "packets": v[1], "bytes": v[2]}
            for k, v in sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))
        ]
        return {
            "since": lo,
            "until": hi,
            "bucket": width,
            "time": time_field,
            "labels": labels,
            "buckets": [
                {
                    "t": r.bucket,
                    "label": r.label,
                    "unknown": r.unknown,
                    "flows": r.flows,
                    "packets": r.packets,
                    "bytes": r.bytes,
                }
                for r in rows
            ],
        }

    @app.get("/api/throughput", response_model=list[ThroughputPoint], summary="Recent rates")
    def throughput(seconds: float = Query(300, gt=0, le=3600)) -> list[dict[str, float]]:
        return metrics.throughput(seconds)

    @app.get(
        "/api/health",
        response_model=Health,
        summary="Service status",
        responses={503: {"description": "degraded: see problems"}},
    )
    def health() -> JSONResponse:
        service = dict(status() if status is not None else {})
        problems = list(service.pop("problems", []))
        store_info = store.info()
        try:
            store_info["flows"] = store.count()
        except Exception as exc:
            problems.append(f"results store: {exc}")
        if store_info.get("write_errors"):
            problems.append(f"results store write errors: {store_info.get('last_error')}")
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "version": __version__,
            "uptime_s": metrics.uptime_s(),
            "service": service,
            "counters": metrics.counters(),
            "rates": metrics.rates(),
            "store": store_info,
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> str:
        return api_page(app.openapi())

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    app.state.store, app.state.metrics = store, metrics
    return app


def _schema_text(schema: dict[str, Any]) -> str:
    """A parameter's type in a few words: "integer", "string or null", "one of a, b"."""
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["anyOf"])
    text = str(schema.get("type", "any"))
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "maximum", "maxLength") if k in schema]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def api_page(spec: dict[str, Any]) -> str:
    """The OpenAPI description as one self-contained HTML page: each operation with its
    parameters (type, default, description) and answers."""
    from html import escape

    rows = []
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            params = []
            for p in op.get("parameters", []):
                schema = p.get("schema", {})
                default = f" = {schema['default']}" if "default" in schema else ""
                params.append(
                    f"<tr><td><code>{escape(p['name'])}</code></td>"
                    f"<td>{escape(_schema_text(schema))}{escape(default)}</td>"
                    f"<td>{escape(p.get('description') or schema.get('description') or '')}</td>"
                    "</tr>"
                )
            answers = ", ".join(
                f"{code} {escape(r.get('description', ''))}"
                for code, r in op.get("responses", {}).items()
            )
            table = (
                "<table><tr><th>parameter</th><th>type</th><th>meaning</th></tr>"
                + "".join(params)
                + "</table>"
                if params
                else ""
            )
            rows.append(
                f'<section id="{escape(method + path)}"><h2><span>{method.upper()}</span> '
                f"<code>{escape(path)}</code> {escape(op.get('summary', ''))}</h2>"
                f"{table}<p>answers: {answers}</p></section>"
            )
    info = spec.get("info", {})
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>"
        f"{escape(info.get('title', 'API'))} API</title><style>"
        "body{font:14px/1.45 system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 16px}"
        "h2{font-size:16px;border-bottom:1px solid #ccc;padding-bottom:4px}"
        "h2 span{background:#0f8a83;color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}"
        "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:3px 6px;"
        "text-align:left;vertical-align:top}code{font-family:ui-monospace,monospace}</style>"
        f"</head><body><h1>{escape(info.get('title', ''))} {escape(info.get('version', ''))}</h1>"
        f"<p>{escape(info.get('description', ''))} "
        '<a href="openapi.json">openapi.json</a> · <a href="./">dashboard</a></p>'
        + "".join(rows)
        + "</body></html>"
    )


def _nice_bucket(seconds: float) -> float:
    """The first of 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, 1 h, ... >= seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400):
        if step >= seconds:
            return float(step)
    return float(math.ceil(seconds / 86400) * 86400)
