"""Inline SVG charts for the HTML report: no JavaScript, no fonts or files fetched from anywhere.

Each function returns one `<svg>` element as a string, sized by its viewBox (the page scales it
to the column width). Every label is HTML-escaped; long class names are shortened on the chart
and given in full in a hover tooltip (`<title>`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

# colour-blind-safe series colours (Okabe-Ito), model first, baseline second
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e4e8ee"
CHAR_WIDTH = 6.4  # average glyph width of the 11 px sans-serif labels, for layout


def _t(value: object) -> str:
    return escape(str(value), quote=True)


def short_label(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {_num(width)} {_num(height)}" '
        f'width="{_num(width)}" role="img" aria-label="{_t(label)}">' + "".join(body) + "</svg>"
    )


def _text(
    x: float, y: float, text: str, anchor: str = "start", cls: str = "", extra: str = ""
) -> str:
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}"{klass}{extra}>{_t(text)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" class="{cls}"/>'


def _rotate(degrees: float, x: float, y: float) -> str:
    return f' transform="rotate({_num(degrees)} {_num(x)} {_num(y)})"'


def _vertical_text(x: float, y: float, text: str) -> str:
    """An axis title read bottom to top, centred on (x, y)."""
    return _text(x, y, text, "middle", "axis", _rotate(-90, x, y))


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def legend(names: Sequence[str], x: float, y: float) -> list[str]:
    out, cursor = [], x
    for i, name in enumerate(names):
        out.append(
            f'<rect x="{_num(cursor)}" y="{_num(y - 9)}" width="10" height="10" rx="2" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/>'
        )
        out.append(_text(cursor + 14, y, name, cls="lbl"))
        cursor += 28 + CHAR_WIDTH * len(name)
    return out


def grouped_bars(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    annotations: Sequence[str] | None = None,
    max_value: float = 1.0,
    title: str = "",
    value_format: str = "{:.3f}",
) -> str:
    """Horizontal grouped bars, one group per label (e.g. per-class F1 of model and baseline)."""
    names = list(series)
    shown = [short_label(label) for label in labels]
    left = 12 + CHAR_WIDTH * max([len(s) for s in shown] + [4])
    bar_h = 12 if len(names) > 1 else 14
    group_h = bar_h * len(names) + 8
    top, plot_w = 30, 420
    right = 70 if annotations else 40
    width = left + plot_w + right
    height = top + group_h * len(labels) + 24
    body = legend(names, left, 14)
    for tick in nice_ticks(0.0, max_value, 5):
        if tick > max_value + 1e-12:
            continue
        x = left + plot_w * tick / max_value
        body.append(_line(x, top - 4, x, height - 20, "grid"))
        body.append(_text(x, height - 6, _fmt_tick(tick), "middle", "tick"))
    for i, (label, short) in enumerate(zip(labels, shown, strict=True)):
        y0 = top + i * group_h
        body.append(
            f"<g><title>{_t(label)}</title>"
            + _text(left - 8, y0 + group_h / 2 + 2, short, "end", "lbl")
            + "</g>"
        )
        for j, name in enumerate(names):
            value = float(series[name][i])
            w = plot_w * max(0.0, min(value, max_value)) / max_value
            y = y0 + 4 + j * bar_h
            body.append(
                f'<rect x="{_num(left)}" y="{_num(y)}" width="{_num(max(w, 0.5))}" '
                f'height="{bar_h - 2}" rx="2" fill="{PALETTE[j % len(PALETTE)]}">'
                f"<title>{_t(label)} · {_t(name)}: {_t(value_format.format(value))}</title></rect>"
            )
            body.append(_text(left + w + 4, y + bar_h - 4, value_format.format(value), cls="val"))
        if annotations:
            body.append(_text(width - 6, y0 + group_h / 2 + 2, annotations[i], "end", "tick"))
    return _svg(width, height, body, title or "bar chart")


def heatmap(
    matrix: Sequence[Sequence[int]],
    labels: Sequence[str],
    title: str = "confusion matrix",
) -> str:
    """Confusion matrix: rows = true class, columns = predicted; colour = share of the row."""
    n = len(labels)
    cell = max(14.0, min(44.0, 640.0 / max(1, n)))
    shown = [short_label(label, 22) for label in labels]
    label_w = 14 + CHAR_WIDTH * max([len(s) for s in shown] + [4])
    slant = (label_w - 14) * 0.71  # a label at -45 degrees reaches this far up and right
    left, top = label_w + 22, slant + 30
    width = left + cell * n + max(20.0, slant - cell / 2 + 8)
    height = top + cell * n + 40
    body = [
        _text(left + cell * n / 2, 14, "predicted class", "middle", "axis"),
        _vertical_text(12, top + cell * n / 2, "true class"),
    ]
    for j, short in enumerate(shown):
        x = left + cell * (j + 0.5) - 3
        body.append(
            f"<g><title>{_t(labels[j])}</title>"
            + _text(x, top - 6, short, "start", "lbl", _rotate(-45, x, top - 6))
            + "</g>"
        )
    show_counts = cell >= 22
    for i in range(n):
        row = [int(v) for v in matrix[i]]
        total = sum(row)
        y = top + cell * i
        body.append(
            f"<g><title>{_t(labels[i])}</title>"
            + _text(left - 6, y + cell / 2 + 4, shown[i], "end", "lbl")
            + "</g>"
        )
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            x = left + cell * j
            kind = "diag" if i == j else "cell"
            tip = f"true {labels[i]} → predicted {labels[j]}: {count} ({share:.1%} of the row)"
            body.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(cell)}" height="{_num(cell)}" '
                f'fill="{_blue(share)}" class="{kind}"><title>{_t(tip)}</title></rect>'
            )
            if show_counts and count:
                colour = "#ffffff" if share > 0.55 else INK
                size = 10 if count < 1000 else 8.5
                style = f' fill="{colour}" font-size="{size}"'
                body.append(
                    _text(x + cell / 2, y + cell / 2 + 3.5, str(count), "middle", "", style)
                )
    # colour scale
    scale_y = top + cell * n + 14
    for k in range(11):
        body.append(
            f'<rect x="{_num(left + k * 18)}" y="{_num(scale_y)}" width="18" height="8" '
            f'fill="{_blue(k / 10)}"/>'
        )
    body.append(_text(left, scale_y + 20, "0%", "start", "tick"))
    body.append(_text(left + 198, scale_y + 20, "100% of the true class", "end", "tick"))
    return _svg(width, height, body, title)


def _blue(share: float) -> str:
    """White (0) to deep blue (1), perceptually even enough for a heat-map."""
    share = max(0.0, min(1.0, share)) ** 0.7
    low, high = (247, 251, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * share) for a, c in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_label: str,
    y_label: str,
    marker_x: float | None = None,
    marker_label: str = "",
    y_range: tuple[float, float] | None = None,
    title: str = "",
) -> str:
    """Lines of (x, y) points per series (points may be missing where a series was not logged)."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    left, top, plot_w, plot_h = 56, 30, 440, 200
    width, height = left + plot_w + 20, top + plot_h + 44
    body = legend(list(series), left, 14)
    if not points:
        body.append(_text(left + plot_w / 2, top + plot_h / 2, "nothing logged", "middle", "tick"))
        return _svg(width, height, body, title or y_label)
    xs = [p[0] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    if y_range is None:
        ys = [p[1] for p in points]
        y_ticks = nice_ticks(min(0.0, min(ys)) if min(ys) >= 0 else min(ys), max(ys))
    else:
        y_ticks = nice_ticks(*y_range)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    for tick in y_ticks:
        body.append(_line(left, sy(tick), left + plot_w, sy(tick), "grid"))
        body.append(_text(left - 6, sy(tick) + 3.5, _fmt_tick(tick), "end", "tick"))
    for tick in nice_ticks(x_lo, x_hi, 6):
        if x_lo <= tick <= x_hi:
            body.append(_text(sx(tick), top + plot_h + 16, _fmt_tick(tick), "middle", "tick"))
    body.append(_text(left + plot_w / 2, height - 6, x_label, "middle", "axis"))
    body.append(_vertical_text(14, top + plot_h / 2, y_label))
    if marker_x is not None and x_lo <= marker_x <= x_hi:
        x = sx(marker_x)
        body.append(_line(x, top, x, top + plot_h, "marker"))
        body.append(_text(x + 4, top + 10, marker_label, "start", "tick"))
    for i, (name, values) in enumerate(series.items()):
        pts = [(sx(x), sy(y)) for x, y in values if math.isfinite(y)]
        if not pts:
            continue
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{_num(x)},{_num(y)}" for x, y in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if len(pts) <= 60:
            for (x, y), (vx, vy) in zip(
                pts, [v for v in values if math.isfinite(v[1])], strict=True
            ):
                body.append(
                    f'<circle cx="{_num(x)}" cy="{_num(y)}" r="2.6" fill="{colour}">'
                    f"<title>{_t(name)} at {_fmt_tick(vx)}: {vy:.4f}</title></circle>"
                )
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    return _svg(width, height, body, title or y_label)


def reliability_chart(bins: Mapping[str, Mapping[str, Sequence]], title: str = "") -> str:
    """Accuracy per confidence bin for each named binning (before / after scaling) + diagonal."""
    left, top, plot = 56, 30, 260
    width, height = left + plot + 30, top + plot + 44
    body = legend(list(bins), left, 14)

    def sx(v: float) -> float:
        return left + plot * v

    def sy(v: float) -> float:
        return top + plot * (1 - v)

    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        body.append(_line(left, sy(tick), left + plot, sy(tick), "grid"))
        body.append(_text(left - 6, sy(tick) + 3.5, _fmt_tick(tick), "end", "tick"))
        body.append(_text(sx(tick), top + plot + 16, _fmt_tick(tick), "middle", "tick"))
    body.append(_line(sx(0), sy(0), sx(1), sy(1), "marker"))
    names = list(bins)
    for k, name in enumerate(names):
        data = bins[name]
        edges = data["edges"]
        slot = 1.0 / len(names)
        for b, acc in enumerate(data["accuracy"]):
            if acc is None:
                continue
            x0 = sx(edges[b]) + (sx(edges[b + 1]) - sx(edges[b])) * slot * k
            w = (sx(edges[b + 1]) - sx(edges[b])) * slot
            tip = (
                f"{name}: confidence {edges[b]:.2f}–{edges[b + 1]:.2f}, {data['count'][b]} flows, "
                f"accuracy {acc:.3f}, mean confidence {data['confidence'][b]:.3f}"
            )
            body.append(
                f'<rect x="{_num(x0)}" y="{_num(sy(acc))}" width="{_num(max(w - 1, 0.5))}" '
                f'height="{_num(sy(0) - sy(acc))}" fill="{PALETTE[k % len(PALETTE)]}" '
                f'fill-opacity="0.8"><title>{_t(tip)}</title></rect>'
            )
    body.append(_text(left + plot / 2, height - 6, "confidence (max softmax)", "middle", "axis"))
    body.append(_vertical_text(14, top + plot / 2, "accuracy"))
    body.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" class="frame"/>')
    return _svg(width, height, body, title or "reliability diagram")


def histogram_chart(
    edges: Sequence[float],
    series: Mapping[str, Sequence[int]],
    threshold: float | None = None,
    x_label: str = "",
    title: str = "",
) -> str:
    """Overlaid histograms (share of each series per bin), with an optional threshold line."""
    left, top, plot_w, plot_h = 56, 30, 440, 170
    width, height = left + plot_w + 20, top + plot_h + 44
    body = legend(list(series), left, 14)
    shares = {}
    for name, counts in series.items():
        total = sum(counts) or 1
        shares[name] = [c / total for c in counts]
    y_hi = nice_ticks(0.0, max([max(v) for v in shares.values()] + [0.01]), 4)[-1]
    lo, hi = edges[0], edges[-1]

    def sx(v: float) -> float:
        return left + plot_w * (v - lo) / ((hi - lo) or 1.0)

    def sy(v: float) -> float:
        return top + plot_h * (1 - v / y_hi)

    for tick in nice_ticks(0.0, y_hi, 4):
        body.append(_line(left, sy(tick), left + plot_w, sy(tick), "grid"))
        body.append(_text(left - 6, sy(tick) + 3.5, f"{tick:.0%}", "end", "tick"))
    for tick in nice_ticks(lo, hi, 6):
        if lo <= tick <= hi:
            body.append(_text(sx(tick), top + plot_h + 16, _fmt_tick(tick), "middle", "tick"))
    for k, (name, values) in enumerate(shares.items()):
        colour = PALETTE[k % len(PALETTE)]
        for b, share in enumerate(values):
            if share <= 0:
                continue
            body.append(
                f'<rect x="{_num(sx(edges[b]))}" y="{_num(sy(share))}" '
                f'width="{_num(max(sx(edges[b + 1]) - sx(edges[b]) - 0.5, 0.5))}" '
                f'height="{_num(sy(0) - sy(share))}" fill="{colour}" fill-opacity="0.55">'
                f"<title>{_t(name)}: {share:.1%} of flows in {edges[b]:.3g}–{edges[b + 1]:.3g}"
                f"</title></rect>"
            )
    if threshold is not None and lo <= threshold <= hi:
        x = sx(threshold)
        body.append(_line(x, top, x, top + plot_h, "marker"))
        body.append(_text(x + 4, top + 10, f"threshold {threshold:.3g}", "start", "tick"))
    body.append(_text(left + plot_w / 2, height - 6, x_label, "middle", "axis"))
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    return _svg(width, height, body, title or x_label)
