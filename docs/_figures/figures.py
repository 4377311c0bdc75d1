"""The docs' diagrams and charts, drawn as SVG files (not part of the site).

Run ``python docs/_figures/figures.py`` after changing a figure here or a
benchmark table on the performance page: it rewrites the SVG files next to the
pages that show them. ``tests/test_docs_figures.py`` fails when a file differs
from what this script draws, so the charts cannot drift from the tables.

The figures are plain SVG (no script, no web font, a white background), so they
render offline, in dark mode, and in a browser that blocks scripts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
EXPLANATION = DOCS / "explanation"

INK = "#1d1d1f"
MUTED = "#555555"
BLUE = "#0072b2"
ORANGE = "#e69f00"
GREEN = "#009e73"
RED = "#d55e00"
PURPLE = "#cc79a7"
SANS = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
MONO = "ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace"


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def document(width: int, height: int, title: str, body: Sequence[str]) -> str:
    """A standalone SVG document with a white background and an accessible title."""
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" font-family="{SANS}" '
            f'font-size="13" fill="{INK}">',
            f"<title>{escape(title)}</title>",
            "<defs>",
            f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
            f'fill="{MUTED}"/></marker>',
            "</defs>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def box(
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    lines: Sequence[str] = (),
    *,
    color: str = BLUE,
    mono: bool = True,
) -> str:
    """A rounded box: a bold title and smaller lines under it, centred."""
    parts = [
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" rx="7" '
        f'fill="{color}14" stroke="{color}" stroke-width="1.3"/>'
    ]
    total = 17 + 15 * len(lines)
    ty = y + (h - total) / 2 + 13
    parts.append(
        f'<text x="{_n(x + w / 2)}" y="{_n(ty)}" text-anchor="middle" '
        f'font-weight="600">{escape(title)}</text>'
    )
    family = MONO if mono else SANS
    for k, line in enumerate(lines):
        parts.append(
            f'<text x="{_n(x + w / 2)}" y="{_n(ty + 16 + 15 * k)}" text-anchor="middle" '
            f'font-family="{family}" font-size="11.5" fill="{MUTED}">{escape(line)}</text>'
        )
    return "".join(parts)


def arrow(points: Sequence[tuple[float, float]], *, color: str = MUTED, dashed: bool = False) -> str:
    """A polyline ending in an arrowhead."""
    d = " ".join(f"{'M' if i == 0 else 'L'}{_n(x)},{_n(y)}" for i, (x, y) in enumerate(points))
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    return (
        f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.4"{dash} '
        'marker-end="url(#arrow)"/>'
    )


def label(x: float, y: float, text: str, *, anchor: str = "start", color: str = MUTED,
          size: float = 12, weight: str = "normal") -> str:  # fmt: skip
    """A line of text."""
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}" fill="{color}" '
        f'font-size="{size}" font-weight="{weight}">{escape(text)}</text>'
    )


# --- diagrams ---------------------------------------------------------------------------


def layers() -> str:
    """The modules in layers: each arrow is an import, downwards only."""
    b = []
    b.append(box(20, 16, 420, 56, "command line", ["_cli, _cli_options, _cli_run,", "_cli_demo, _cli_report, _cli_ray"]))  # fmt: skip
    b.append(box(480, 16, 260, 56, "shardline.ray", ["Ray Data batches"], mono=False))
    b.append(box(20, 104, 720, 56, "batch runner", ["_batch, _batch_io, _jsonl, _jsonl_output, _progress"]))  # fmt: skip
    b.append(box(20, 192, 330, 56, "pipeline: _pipeline", ["admission, ids, routing, drain"], mono=False))  # fmt: skip
    b.append(box(390, 192, 350, 72, "report", ["_report, _report_builder, _report_text,", "_report_series, _report_html, _live,", "_prometheus, _otel"], color=GREEN))  # fmt: skip
    b.append(box(20, 296, 200, 56, "shard: _shard", ["queue, slots, retry loop"], mono=False))  # fmt: skip
    b.append(box(260, 296, 260, 56, "_state: RunState", ["what pipeline and shards share"], mono=False, color=PURPLE))  # fmt: skip
    b.append(box(20, 384, 200, 56, "one attempt: _send", ["permit, TPM charge"], mono=False))  # fmt: skip
    b.append(box(260, 384, 260, 72, "flow control", ["_flow, _flow_latency,", "_flow_pacer,", "_ratelimit_headers"], color=PURPLE))  # fmt: skip
    b.append(box(560, 384, 180, 72, "policy", ["_backoff, _budget,", "_ratelimit"], color=PURPLE))  # fmt: skip
    b.append(box(20, 488, 330, 56, "attempt: _attempt", ["deadlines: connect, TTFT, stall, attempt"], mono=False))  # fmt: skip
    b.append(box(20, 576, 200, 56, "httpx boundary: _http", ["pooled client, errors"], mono=False, color=ORANGE))  # fmt: skip
    b.append(box(260, 576, 260, 56, "server data: _openai, _sse", ["every field checked"], mono=False, color=ORANGE))  # fmt: skip
    b.append(box(20, 664, 720, 56, "values", ["_config, _models, _events, _exceptions, _validate"], color=MUTED))  # fmt: skip
    arrows = [
        [(230, 72), (230, 104)],  # cli -> batch
        [(610, 72), (610, 104)],  # ray -> batch
        [(185, 160), (185, 192)],  # batch -> pipeline
        [(565, 160), (565, 192)],  # batch -> report
        [(120, 248), (120, 296)],  # pipeline -> shard
        [(300, 248), (350, 296)],  # pipeline -> state
        [(220, 324), (260, 324)],  # shard -> state
        [(120, 352), (120, 384)],  # shard -> send
        [(120, 440), (120, 488)],  # send -> attempt
        [(390, 352), (390, 384)],  # state -> flow
        [(500, 352), (600, 384)],  # state -> policy
        [(120, 544), (120, 576)],  # attempt -> http
        [(300, 544), (350, 576)],  # attempt -> openai
        [(120, 632), (120, 664)],  # http -> values
        [(390, 632), (390, 664)],  # openai -> values
        [(650, 456), (650, 664)],  # policy -> values
        [(740, 228), (756, 228), (756, 692), (740, 692)],  # report -> values
    ]
    b.extend(arrow(points) for points in arrows)
    b.append(label(20, 752, "Each arrow is an import. Nothing imports upwards; "
                   "outcomes and events flow back up as values.", size=12))  # fmt: skip
    return document(770, 766, "shardline's layers: which modules import which", b)


def item_life() -> str:
    """One item from input to outcome: admission, its shard, attempts and retries."""
    b = []
    x, w = 20, 430
    b.append(box(x, 16, w, 48, "input", ["an iterable, an async iterable or JSONL"], mono=False))
    b.append(box(x, 96, w, 64, "admission", ["request checked; an id (yours, or one that",
                                             "cannot collide); routed to a shard"], mono=False))  # fmt: skip
    b.append(box(x, 192, w, 48, "shard k: its own queue", ["waits here while the shard is busy"], mono=False))  # fmt: skip
    b.append(box(x, 272, w, 80, "before each attempt, in order", ["shard cooldown -> header pacer -> shard slot",
                                                              "-> endpoint's live limit -> RPM -> TPM"],
                 color=PURPLE))  # fmt: skip
    b.append(box(x, 384, w, 64, "attempt", ["deadlines: connect, TTFT, stall, attempt;",
                                            "SSE decoded, every field checked"], mono=False))  # fmt: skip
    b.append(box(490, 352, 250, 124, "retry", ["slot released", "backoff, or Retry-After", "(a 429 cools the whole shard)",
                                               "retry budget: waits, never drops"], mono=False, color=ORANGE))  # fmt: skip
    b.append(box(20, 512, 200, 56, "ok", ["text, usage, TTFT, latency"], mono=False, color=GREEN))  # fmt: skip
    b.append(box(250, 512, 230, 56, "failed", ["with its cause"], mono=False, color=RED))
    b.append(box(510, 512, 230, 56, "cancelled", ["drain or the caller's scope"], mono=False, color=MUTED))  # fmt: skip
    for y0, y1 in ((64, 96), (160, 192), (240, 272), (352, 384)):
        b.append(arrow([(235, y0), (235, y1)]))
    b.append(arrow([(120, 448), (120, 512)]))
    b.append(label(128, 486, "content, then finish", size=11.5))
    b.append(arrow([(300, 448), (340, 512)]))
    b.append(label(346, 500, "not retryable, or out of attempts", size=11.5))
    b.append(arrow([(450, 416), (490, 416)]))
    b.append(label(470, 376, "retryable", size=11.5, anchor="middle"))
    b.append(arrow([(615, 352), (615, 312), (450, 312)]))
    b.append(label(622, 336, "next attempt", size=11.5))
    b.append(arrow([(450, 40), (756, 40), (756, 540), (740, 540)], dashed=True))
    b.append(label(600, 32, "at any point: drain or cancel", size=11.5, anchor="middle"))
    b.append(label(20, 600, "Every admitted item gets exactly one outcome and one item_end event.", size=12))  # fmt: skip
    return document(760, 612, "An item's life: admission, its shard, attempts and retries", b)


def deadlines() -> str:
    """The deadlines of one attempt on a timeline, and what counts as progress."""
    b = []
    x0, x1, axis = 60, 730, 150

    def at(s: float) -> float:
        return x0 + (x1 - x0) * s / 10.0

    b.append(f'<line x1="{x0}" y1="{axis}" x2="{x1}" y2="{axis}" stroke="{INK}" stroke-width="1.5"/>')  # fmt: skip
    b.append(label(x1 + 4, axis + 4, "time", size=11.5))
    # send, first content, content events, keep-alives, stall
    b.append(f'<line x1="{_n(at(0))}" y1="{axis - 14}" x2="{_n(at(0))}" y2="{axis + 14}" stroke="{INK}" stroke-width="2"/>')  # fmt: skip
    b.append(label(at(0), axis + 30, "send", anchor="middle", color=INK))
    content = [1.6, 2.1, 2.5, 3.0, 3.6, 4.0, 4.3]
    for s in content:
        b.append(f'<rect x="{_n(at(s) - 3)}" y="{axis - 10}" width="6" height="20" fill="{GREEN}"/>')  # fmt: skip
    for s in (4.9, 5.5, 6.1, 6.7):
        b.append(f'<rect x="{_n(at(s) - 2)}" y="{axis - 5}" width="4" height="10" fill="#bbbbbb"/>')  # fmt: skip
    b.append(label(at(1.6), axis + 30, "first content event", anchor="middle", color=GREEN))
    b.append(label(at(5.8), axis + 30, "keep-alives, SSE comments,", anchor="middle"))
    b.append(label(at(5.8), axis + 45, "empty deltas: not progress", anchor="middle"))
    # brackets above the axis
    def bracket(a: float, z: float, y: float, text: str, color: str) -> None:
        b.append(
            f'<path d="M{_n(at(a))},{y + 8} V{y} H{_n(at(z))} V{y + 8}" fill="none" '
            f'stroke="{color}" stroke-width="1.6"/>'
        )
        wide = at(z) - at(a) > 7 * len(text)
        x = (at(a) + at(z)) / 2 if wide else at(a)
        anchor = "middle" if wide else "start"
        b.append(label(x, y - 6, text, anchor=anchor, color=color, size=12))

    bracket(0, 1.6, 96, "ttft: send to first content", BLUE)
    for a, z in zip(content, content[1:], strict=False):
        b.append(
            f'<path d="M{_n(at(a))},{axis - 22} H{_n(at(z))}" stroke="{BLUE}" '
            'stroke-width="1.2" stroke-dasharray="2 2"/>'
        )
    b.append(label((at(1.6) + at(4.3)) / 2, axis - 28, "each content event moves the stall deadline",
                   anchor="middle", color=BLUE, size=11.5))  # fmt: skip
    bracket(4.3, 7.3, 96, "stall: no content for this long", RED)
    b.append(f'<line x1="{_n(at(7.3))}" y1="{axis - 40}" x2="{_n(at(7.3))}" y2="{axis + 14}" stroke="{RED}" stroke-width="2"/>')  # fmt: skip
    b.append(label(at(7.3) + 6, axis + 30, "StallTimeout", color=RED, weight="600"))
    bracket(0, 9.8, 40, "attempt: wall clock for the whole exchange (never reached here)", MUTED)
    b.append(label(x0, 226, "connect (and waiting for a pooled connection) is bounded by "
                   "httpx's connect and pool timeouts, before send.", size=12))  # fmt: skip
    b.append(label(x0, 244, "Across attempts, the caller's own cancel scope is the budget: "
                   "trio.move_on_after(...) around the call.", size=12))  # fmt: skip
    return document(770, 258, "The deadlines of one attempt on a timeline", b)


# --- charts from the performance page's tables -------------------------------------------


def _tables(markdown: str, heading: str) -> dict[str, dict[str, tuple[float, float]]]:
    """``{"Burst": {client: (req/s, CPU ms/req)}, "Paced": {...}}`` under ``heading``."""
    start = markdown.index(heading)
    end = markdown.index("\n### ", start + len(heading))
    section = markdown[start:end]
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, table in re.findall(r"\*\*(\w+)\*\*[^\n]*\n\n((?:\|[^\n]*\n)+)", section):
        rows = {}
        for line in table.splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = (float(cells[2].replace(",", "")), float(cells[3]))
        out[name] = rows
    return out


def _bars(
    figures: dict[str, dict[str, tuple[float, float]]],
    pick: Callable[[tuple[float, float]], float],
    *,
    title: str,
    unit: str,
    fmt: Callable[[float], str],
    note: str,
) -> str:
    ceiling = {name: rows.pop("raw", None) for name, rows in figures.items()}
    panels = list(figures.items())
    width, panel_w, label_w, bar_h, gap = 770, 360, 110, 20, 8
    clients = list(panels[0][1])
    height = 60 + len(clients) * (bar_h + gap) + 56
    b = [label(20, 24, title, size=14, weight="600", color=INK)]
    colors = {"shardline": BLUE}
    for p, (name, rows) in enumerate(panels):
        left = 20 + p * (panel_w + 30)
        peak = max(pick(v) for v in rows.values())
        b.append(label(left, 48, name, size=13, weight="600", color=INK))
        for k, client in enumerate(clients):
            y = 60 + k * (bar_h + gap)
            value = pick(rows[client])
            span = (panel_w - label_w - 70) * value / peak
            b.append(label(left + label_w - 8, y + 15, client, anchor="end", color=INK))
            b.append(
                f'<rect x="{left + label_w}" y="{y}" width="{_n(max(span, 1))}" height="{bar_h}" '
                f'fill="{colors.get(client, "#9aa5b1")}"/>'
            )
            b.append(label(left + label_w + span + 5, y + 15, fmt(value), color=INK))
    left_out = ", ".join(
        f"{fmt(pick(v))} {name.lower()}" for name, v in ceiling.items() if v is not None
    )
    b.append(label(20, height - 30, note, size=11.5))
    if left_out:
        b.append(label(20, height - 12, f"Left out: raw sockets, the machine's ceiling "
                       f"({left_out}).", size=11.5))  # fmt: skip
    return document(width, height, f"{title} ({unit})", b)


def throughput_charts(markdown: str) -> dict[str, str]:
    """Requests per second and client CPU per request, from the current figures' tables."""
    note = "From the tables above (bench_throughput.py, medians of two rounds)."
    return {
        "perf-throughput.svg": _bars(
            _tables(markdown, "### Current figures"),
            lambda v: v[0],
            title="Requests per second (more is better)",
            unit="req/s",
            fmt=lambda v: f"{v:,.1f}",
            note=note,
        ),
        "perf-cpu.svg": _bars(
            _tables(markdown, "### Current figures"),
            lambda v: v[1],
            title="Client CPU per request, ms (less is better)",
            unit="ms",
            fmt=lambda v: f"{v:.2f}",
            note=note,
        ),
    }


def figures() -> dict[Path, str]:
    """Every figure, by the file it belongs in."""
    out = {
        EXPLANATION / "layers.svg": layers(),
        EXPLANATION / "item-life.svg": item_life(),
        EXPLANATION / "deadlines.svg": deadlines(),
    }
    performance = (EXPLANATION / "performance.md").read_text(encoding="utf-8")
    for name, svg in throughput_charts(performance).items():
        out[EXPLANATION / name] = svg
    return out


def main() -> int:
    for path, svg in figures().items():
        path.write_text(svg, encoding="utf-8")
        print(f"wrote {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
