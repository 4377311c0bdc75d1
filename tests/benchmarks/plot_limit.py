"""Plot an endpoint's live in-flight limit over time from a shardline events file, as SVG.

No plotting library: the SVG is written by hand (a few hundred lines of text).
Run it from the repository root on an events file from a real run, for example
one that ``bench_flow.py --events-dir`` kept::

    uv run python tests/benchmarks/bench_flow.py --only capacity-24 --events-dir /tmp/flow
    uv run python tests/benchmarks/plot_limit.py \\
        /tmp/flow/capacity-24-shardline-adaptive-8x16.jsonl \\
        docs/explanation/flow-limit-capacity-24.svg --capacity 24 \\
        --title "8 shards x 16 against a server that takes 24"

It draws the limit as a step line (from ``limit_change`` events; it starts at
the first event's ``old``), the attempts in flight (``attempt_start`` minus
``attempt_end``; the most within each pixel column) as a thin grey line, a dot
for every change that lowered the limit, coloured by its reason, and a dashed
line at ``--capacity`` if given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

W, H = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 36, 40
COLOURS = {
    "rate_limited": "#d62728",
    "server_error": "#ff7f0e",
    "connection_lost": "#9467bd",
    "latency": "#2ca02c",
}
OTHER = "#8c564b"


def read(
    path: Path, endpoint: int
) -> tuple[list[tuple[float, int, int, str]], list[tuple[float, int]], float]:
    """Limit changes ``(t, old, new, reason)``, in-flight steps ``(t, count)``, and the end time."""
    changes: list[tuple[float, int, int, str]] = []
    flight: list[tuple[float, int]] = []
    in_flight = 0
    end = 0.0
    with path.open() as f:
        for line in f:
            e = json.loads(line)
            kind, t = e["kind"], float(e["t"])
            end = max(end, t)
            if kind == "limit_change" and e["endpoint"] == endpoint:
                changes.append((t, e["old"], e["new"], e["reason"]))
            elif kind == "attempt_start":
                in_flight += 1
                flight.append((t, in_flight))
            elif kind == "attempt_end":
                in_flight -= 1
                flight.append((t, in_flight))
    return changes, flight, end


def nice_step(span: float, ticks: int = 6) -> float:
    raw = span / ticks
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if step >= raw:
            return step
    return raw


def svg(
    changes: list[tuple[float, int, int, str]],
    flight: list[tuple[float, int]],
    end: float,
    *,
    capacity: int | None,
    title: str,
) -> str:
    top = max([c[1] for c in changes] + [c[2] for c in changes] + [capacity or 0, 1])
    top = max(top, max((n for _, n in flight), default=0))
    ymax = top * 1.1
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + pw * (t / end if end else 0)

    def y(v: float) -> float:
        return TOP + ph * (1 - v / ymax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    # axes and grid
    ystep = nice_step(ymax, 5)
    v = 0.0
    while v <= ymax:
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += ystep
    xstep = nice_step(end)
    t = 0.0
    while t <= end + 1e-9:
        out.append(f'<text x="{x(t):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{t:g}</text>')
        t += xstep
    out.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">'
        "seconds since the run started</text>"
    )
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#444"/>'
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#444"/>'
    )
    # in flight: the most in flight within each pixel column (thousands of steps otherwise)
    if flight:
        columns: dict[int, int] = {}
        prev = 0
        for t, n in flight:
            col = int(x(t))
            columns[col] = max(columns.get(col, prev), n)
            prev = n
        pts = [f"{col},{y(n):.1f}" for col, n in sorted(columns.items())]
        out.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="#bbb" stroke-width="0.7"/>'
        )
    # capacity
    if capacity is not None:
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(capacity):.1f}" y2="{y(capacity):.1f}" '
            'stroke="#555" stroke-dasharray="5,4"/>'
        )
        out.append(
            f'<text x="{W - RIGHT - 4}" y="{y(capacity) - 4:.1f}" text-anchor="end" fill="#555">'
            f"server capacity {capacity}</text>"
        )
    # the limit
    if changes:
        value = changes[0][1]
        pts = [f"{x(0):.1f},{y(value):.1f}"]
        for t, _old, new, _reason in changes:
            pts.append(f"{x(t):.1f},{y(value):.1f}")
            pts.append(f"{x(t):.1f},{y(new):.1f}")
            value = new
        pts.append(f"{x(end):.1f},{y(value):.1f}")
        out.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="#1f77b4" stroke-width="1.8"/>'
        )
        for t, old, new, reason in changes:
            if new < old:
                colour = COLOURS.get(reason, OTHER)
                out.append(
                    f'<circle cx="{x(t):.1f}" cy="{y(new):.1f}" r="2.6" fill="{colour}">'
                    f"<title>{escape(reason)}: {old} → {new} at {t:.2f} s</title></circle>"
                )
    # legend
    seen = Counter(r for _, o, n, r in changes if n < o)
    items = [("#1f77b4", "live limit"), ("#bbb", "attempts in flight")]
    items += [(COLOURS.get(r, OTHER), f"lowered: {r} ({k})") for r, k in sorted(seen.items())]
    lx = LEFT + 8
    for colour, label in items:
        out.append(f'<rect x="{lx}" y="{TOP - 12}" width="10" height="3" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{TOP - 8}">{escape(label)}</text>')
        lx += 14 + 6.2 * len(label) + 14
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("events", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--endpoint", type=int, default=0)
    ap.add_argument("--capacity", type=int, default=None, help="draw the server's capacity")
    ap.add_argument("--title", default="live in-flight limit")
    args = ap.parse_args()
    changes, flight, end = read(args.events, args.endpoint)
    if not changes:
        print(
            f"{args.events}: no limit_change events for endpoint {args.endpoint}", file=sys.stderr
        )
        return 1
    args.out.write_text(svg(changes, flight, end, capacity=args.capacity, title=args.title))
    lowered = Counter(r for _, o, n, r in changes if n < o)
    print(f"{args.out}: {len(changes)} changes over {end:.1f} s; lowered by {dict(lowered)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
