"""Small SVG charts as strings: step lines over time, stacked bars, log histograms.

This module draws; it knows nothing of runs. Each function returns one
``<svg>`` element that scales to its container (a ``viewBox`` and no fixed
size), with a ``<title>`` for screen readers, its legend drawn inside it, and
``data-*`` attributes that tests read back (``data-chart``, ``data-series``,
``data-marker`` with ``data-value``). No script, no external resource: the
markup is the whole chart, so it renders offline, in an ``<img>``, and in a
docs page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

import attrs

__all__ = ["PALETTE", "Band", "Bars", "Line", "Marker", "histogram", "stacked_bars", "step_lines"]

#: Colours that stay distinct for the common colour-vision deficiencies (Okabe and Ito).
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#d55e00",
    "#56b4e9",
    "#8c6d1f",
    "#000000",
    "#999999",
    "#f0e442",
)

_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_CHAR_W = 6.6  # average glyph width at 12 px, for laying out legends and labels
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 30, 30


@attrs.frozen(kw_only=True)
class Line:
    """One step series: ``values[i]`` holds over bucket ``i`` (``None``: a gap)."""

    label: str
    values: Sequence[float | None]
    color: str
    dashed: bool = False


@attrs.frozen(kw_only=True)
class Bars:
    """One layer of stacked bars: ``values[i]`` is bucket ``i``'s share."""

    label: str
    values: Sequence[float]
    color: str


@attrs.frozen(kw_only=True)
class Band:
    """A shaded stretch of the time axis, ``[start, end)`` in UTC epoch seconds."""

    start: float
    end: float
    label: str
    name: str
    color: str = "#fff3c4"


@attrs.frozen(kw_only=True)
class Marker:
    """A vertical rule at ``value`` on a histogram's axis, labelled."""

    label: str
    value: float


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * power:
            return m * power
    return 10.0 * power  # pragma: no cover - the loop always returns


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


def _time_step(span: float) -> float:
    for step in _TIME_STEPS:
        if span / step <= 7:
            return float(step)
    return 86400.0 * max(1, math.ceil(span / 86400 / 7))


def _fmt_count(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _fmt_seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


class _Frame:
    """The plot area of one chart and its scales."""

    def __init__(self, *, width: int, height: int, x0: float, x1: float, y_max: float) -> None:
        self.width, self.height = width, height
        self.x0, self.x1 = x0, x1 if x1 > x0 else x0 + 1.0
        self.y_max = y_max if y_max > 0 else 1.0
        self.left, self.right = _LEFT, width - _RIGHT
        self.top, self.bottom = _TOP, height - _BOTTOM

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value / self.y_max * (self.bottom - self.top)


def _open(name: str, title: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" data-chart="{escape(name)}" {_FONT}>',
        f"<title>{escape(title)}</title>",
        f'<rect class="bg" x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def _legend(parts: list[str], frame: _Frame, entries: Sequence[tuple[str, str, bool]]) -> None:
    x, y = float(frame.left), 14.0
    for label, color, dashed in entries:
        w = 26 + len(label) * _CHAR_W
        if x + w > frame.right and x > frame.left:
            x, y = float(frame.left), y + 14
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(
            f'<line x1="{_num(x)}" y1="{_num(y - 4)}" x2="{_num(x + 16)}" y2="{_num(y - 4)}" '
            f'stroke="{color}" stroke-width="3"{dash}/>'
            f'<text x="{_num(x + 20)}" y="{_num(y)}" fill="#333">{escape(label)}</text>'
        )
        x += w + 10


def _y_axis(parts: list[str], frame: _Frame, label: str) -> None:
    step = nice_step(frame.y_max)
    k = 0
    while k * step <= frame.y_max * 1.0001:
        v = k * step
        y = frame.y(v)
        parts.append(
            f'<line x1="{frame.left}" y1="{_num(y)}" x2="{frame.right}" y2="{_num(y)}" '
            f'stroke="#e5e5e5"/><text x="{frame.left - 6}" y="{_num(y + 4)}" '
            f'text-anchor="end" fill="#555">{_fmt_count(v)}</text>'
        )
        k += 1
    mid = (frame.top + frame.bottom) / 2
    parts.append(
        f'<text x="12" y="{_num(mid)}" transform="rotate(-90 12 {_num(mid)})" '
        f'text-anchor="middle" fill="#555">{escape(label)}</text>'
    )


def _time_axis(parts: list[str], frame: _Frame) -> None:
    span = frame.x1 - frame.x0
    step = _time_step(span)
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if span <= 86400 else "%m-%d %H:%M"
    t = math.ceil(frame.x0 / step) * step
    while t <= frame.x1 + 1e-9:
        x = frame.x(t)
        text = datetime.fromtimestamp(t, tz=UTC).strftime(fmt)
        parts.append(
            f'<line x1="{_num(x)}" y1="{frame.bottom}" x2="{_num(x)}" y2="{frame.bottom + 4}" '
            f'stroke="#555"/><text x="{_num(x)}" y="{frame.bottom + 17}" text-anchor="middle" '
            f'fill="#555">{text}</text>'
        )
        t += step
    parts.append(
        f'<line x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}" '
        'stroke="#555"/>'
        f'<text x="{frame.right}" y="{frame.height - 2}" text-anchor="end" fill="#777">'
        "UTC</text>"
    )


def _bands(parts: list[str], frame: _Frame, bands: Sequence[Band]) -> None:
    for band in bands:
        x0 = frame.x(max(band.start, frame.x0))
        x1 = frame.x(min(band.end, frame.x1))
        if x1 <= x0:
            continue
        parts.append(
            f'<rect data-band="{escape(band.name)}" x="{_num(x0)}" y="{frame.top}" '
            f'width="{_num(x1 - x0)}" height="{frame.bottom - frame.top}" fill="{band.color}"/>'
        )
        if not band.label:
            continue
        anchor = "end" if x1 > (frame.left + frame.right) / 2 else "start"
        tx = x1 - 3 if anchor == "end" else x0 + 3
        parts.append(
            f'<text x="{_num(tx)}" y="{frame.top + 12}" text-anchor="{anchor}" '
            f'fill="#7a5c00">{escape(band.label)}</text>'
        )


def step_lines(
    *,
    name: str,
    title: str,
    start: float,
    bucket_s: float,
    lines: Sequence[Line],
    y_label: str,
    bands: Sequence[Band] = (),
    width: int = 720,
    height: int = 240,
) -> str:
    """Step lines over time: bucket ``i`` spans ``start + i * bucket_s`` for ``bucket_s``."""
    n = max((len(line.values) for line in lines), default=0)
    peak = max(
        (v for line in lines for v in line.values if v is not None),
        default=0.0,
    )
    frame = _Frame(
        width=width, height=height, x0=start, x1=start + max(n, 1) * bucket_s, y_max=peak * 1.08
    )
    parts = _open(name, title, width, height)
    _bands(parts, frame, bands)
    _y_axis(parts, frame, y_label)
    _time_axis(parts, frame)
    for line in lines:
        d: list[str] = []
        pen = False
        for i, v in enumerate(line.values):
            if v is None:
                pen = False
                continue
            x0, x1, y = (
                frame.x(start + i * bucket_s),
                frame.x(start + (i + 1) * bucket_s),
                frame.y(v),
            )
            d.append(f"{'L' if pen else 'M'}{_num(x0)} {_num(y)}H{_num(x1)}")
            pen = True
        if d:
            dash = ' stroke-dasharray="6 4"' if line.dashed else ""
            parts.append(
                f'<path data-series="{escape(line.label)}" d="{"".join(d)}" fill="none" '
                f'stroke="{line.color}" stroke-width="2"{dash}/>'
            )
    _legend(parts, frame, [(line.label, line.color, line.dashed) for line in lines])
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(
    *,
    name: str,
    title: str,
    start: float,
    bucket_s: float,
    layers: Sequence[Bars],
    y_label: str,
    width: int = 720,
    height: int = 240,
) -> str:
    """Stacked bars over time, one stack per bucket, layers bottom to top."""
    n = max((len(layer.values) for layer in layers), default=0)
    totals = [sum(layer.values[i] for layer in layers if i < len(layer.values)) for i in range(n)]
    frame = _Frame(
        width=width,
        height=height,
        x0=start,
        x1=start + max(n, 1) * bucket_s,
        y_max=max(totals, default=0.0) * 1.08,
    )
    parts = _open(name, title, width, height)
    _y_axis(parts, frame, y_label)
    _time_axis(parts, frame)
    base = [0.0] * n
    gap = 0.1 if frame.x(start + bucket_s) - frame.x(start) > 4 else 0.0
    for layer in layers:
        rects: list[str] = []
        for i, v in enumerate(layer.values):
            if v <= 0:
                continue
            x0 = frame.x(start + (i + gap) * bucket_s)
            x1 = frame.x(start + (i + 1 - gap) * bucket_s)
            y_top, y_bottom = frame.y(base[i] + v), frame.y(base[i])
            base[i] += v
            rects.append(
                f'<rect x="{_num(x0)}" y="{_num(y_top)}" width="{_num(max(x1 - x0, 0.5))}" '
                f'height="{_num(y_bottom - y_top)}"/>'
            )
        if rects:
            parts.append(
                f'<g data-series="{escape(layer.label)}" fill="{layer.color}">{"".join(rects)}</g>'
            )
    _legend(parts, frame, [(layer.label, layer.color, False) for layer in layers])
    if not any(totals):
        parts.append(
            f'<text data-empty="1" x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            'fill="#777">none</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(
    *,
    name: str,
    title: str,
    edges: Sequence[float],
    counts: Sequence[int],
    markers: Sequence[Marker],
    color: str = PALETTE[0],
    width: int = 720,
    height: int = 240,
) -> str:
    """Counts in log-spaced bins (``edges`` ascending, positive), with labelled rules."""
    nonzero = [i for i, c in enumerate(counts) if c]
    parts_empty = not nonzero
    lo = max(min(nonzero, default=0) - 1, 0)
    hi = min(max(nonzero, default=len(counts) - 1) + 2, len(edges) - 1)
    log0, log1 = math.log10(edges[lo]), math.log10(edges[hi])
    frame = _Frame(width=width, height=height, x0=log0, x1=log1, y_max=max(counts) * 1.15 or 1)
    parts = _open(name, title, width, height)
    _y_axis(parts, frame, "items")
    for i in range(lo, hi):
        if counts[i]:
            x0, x1 = frame.x(math.log10(edges[i])), frame.x(math.log10(edges[i + 1]))
            y = frame.y(counts[i])
            parts.append(
                f'<rect data-bin="{i}" x="{_num(x0 + 0.5)}" y="{_num(y)}" '
                f'width="{_num(max(x1 - x0 - 1, 0.5))}" height="{_num(frame.bottom - y)}" '
                f'fill="{color}"/>'
            )
    parts.append(
        f'<line x1="{frame.left}" y1="{frame.bottom}" x2="{frame.right}" y2="{frame.bottom}" '
        'stroke="#555"/>'
    )
    for k in range(math.ceil(log0 - 1e-9), math.floor(log1 + 1e-9) + 1):
        for m in (1, 2, 5) if log1 - log0 < 3 else (1,):
            v = math.log10(m) + k
            if not log0 <= v <= log1:
                continue
            x = frame.x(v)
            parts.append(
                f'<line x1="{_num(x)}" y1="{frame.bottom}" x2="{_num(x)}" y2="{frame.bottom + 4}" '
                f'stroke="#555"/><text x="{_num(x)}" y="{frame.bottom + 17}" '
                f'text-anchor="middle" fill="#555">{_fmt_seconds(10.0**v)}</text>'
            )
    for j, marker in enumerate(markers):
        if marker.value <= 0:
            continue
        v = min(max(math.log10(marker.value), log0), log1)
        x = frame.x(v)
        y_text = frame.top + 12 + 14 * j
        parts.append(
            f'<line data-marker="{escape(marker.label)}" data-value="{marker.value!r}" '
            f'x1="{_num(x)}" y1="{frame.top}" x2="{_num(x)}" y2="{frame.bottom}" '
            f'stroke="{PALETTE[4]}" stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text x="{_num(x + 4)}" y="{_num(y_text)}" fill="{PALETTE[4]}">'
            f"{escape(marker.label)} {_fmt_seconds(float(f'{marker.value:.3g}'))}</text>"
        )
    if parts_empty:
        parts.append(
            f'<text data-empty="1" x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            'fill="#777">no successful items</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
