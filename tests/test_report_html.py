"""The HTML report: self-contained, its tables and chart markers equal the report's figures."""

from __future__ import annotations

import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import attrs
import pytest

from report_sim import simulate
from shardline._cli_report import run_report
from shardline._events import Event, RunEnd, RunStart, encode_event
from shardline._report_html import render_html, report_and_series
from shardline.report import RunReport


class Page(HTMLParser):
    """Just enough of the page: tables by name, charts and what they draw, every tag."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: dict[str, Counter[str]] = {}
        self.markers: dict[str, dict[str, float]] = {}
        self.bands: dict[str, int] = {}
        self._table: str | None = None
        self._chart: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs_}
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "svg":
            self._chart = a["data-chart"]
            self.charts[self._chart] = Counter()
        elif self._chart is not None:
            drawn = tag in ("path", "rect", "line") and a.get("class") != "bg"
            if drawn:
                self.charts[self._chart][tag] += 1
            if "data-marker" in a:
                self.markers.setdefault(self._chart, {})[a["data-marker"]] = float(a["data-value"])
            if "data-band" in a:
                key = f"{self._chart}/{a['data-band']}"
                self.bands[key] = self.bands.get(key, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "svg":
            self._chart = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def field(self, table: str, name: str) -> str:
        """The value of row ``name`` of a two-column table."""
        (value,) = [row[1] for row in self.tables[table] if row and row[0] == name]
        return value


def _page(events: list[Event], *, sha: str | None = "ab" * 32) -> tuple[RunReport, Page, str]:
    report, series = report_and_series(events)
    report = attrs.evolve(report, events_sha256=sha)
    text = render_html(report, series)
    return report, Page(text), text


def test_proof_and_summary_tables_equal_the_report() -> None:
    """The proof block shows the report's fields, digest included, with the same names."""
    report, page, _ = _page(simulate(seed=1))
    assert page.field("proof", "run_id") == report.run_id
    assert page.field("proof", "events_sha256") == "ab" * 32
    assert page.field("proof", "proof_minute_utc") == report.proof_minute_utc
    for name in ("peak_aggregate_tpm_total", "peak_completion_tpm_out", "peak_prompt_tpm_in"):
        assert page.field("proof", name) == f"{getattr(report, name):,}"
    assert page.field("items", "tokens_in_total") == f"{report.tokens_in_total:,}"
    assert page.field("items", "retries").startswith(f"{report.retries:,} ")
    causes = {row[0]: int(row[2]) for row in page.tables["causes"][1:]}
    assert causes == report.retry_causes
    shards = [int(row[0]) for row in page.tables["shards"][1:]]
    assert shards == [s.shard for s in report.shards]
    minutes = [row[0].removesuffix(" (peak)") for row in page.tables["minutes"][1:]]
    assert minutes == [m.minute_utc for m in report.tpm_by_minute]
    endpoint = page.tables["endpoints"][1]
    (limit,) = report.limits
    assert [int(x) for x in endpoint[:6]] == [
        limit.endpoint, limit.initial, limit.min, limit.median, limit.max, limit.final,
    ]  # fmt: skip


def test_every_chart_draws_and_marks_the_reports_figures() -> None:
    """Each chart has drawn marks; the percentile rules and the peak minute are the report's."""
    report, page, _ = _page(simulate(seed=2, shards=3))
    assert set(page.charts) == {
        "tokens", "ttft", "latency", "retries", "flow", "queued", "shard-0", "shard-1",
        "shard-2",
    }  # fmt: skip
    for name, drawn in page.charts.items():
        assert drawn["path"] + drawn["rect"] > 0, name
    for name, tails in (("ttft", report.ttft_s), ("latency", report.latency_s)):
        assert page.markers[name] == {"p50": tails.p50, "p95": tails.p95, "p99": tails.p99}
    assert page.bands["tokens/peak-minute"] == 1
    assert sum(n for key, n in page.bands.items() if key.endswith("/cooling")) > 0


def test_the_page_is_self_contained() -> None:
    """No script, stylesheet, image or font from anywhere: it opens offline."""
    _, page, text = _page(simulate(seed=3))
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    for _, a in page.tags:
        assert not {"src", "href"} & set(a), a
        assert "url(" not in a.get("style", "")
    assert "url(" not in text
    assert "@import" not in text
    assert text.count("http") == text.count('xmlns="http://www.w3.org/2000/svg"')


def test_text_from_events_is_escaped() -> None:
    """A run id (or any text from the events) cannot inject markup."""
    events: list[Event] = [
        RunStart(t=0.0, run_id="<script>x</script>", started_at=1e9, shard_count=1, config={}),
        RunEnd(t=1.0, reason="completed"),
    ]
    report, page, text = _page(events, sha=None)
    assert "<script>" not in text
    assert page.field("proof", "run_id") == "<script>x</script>"
    # a run without items still draws its axes and says the histograms are empty
    assert page.markers == {}
    assert report.items == 0
    assert text.count('data-empty="1"') == 3  # ttft, latency, retries


def test_report_cli_writes_the_html(tmp_path: Path) -> None:
    """``shardline report EVENTS --html FILE``: the page of the file, digest and all."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(encode_event(e) for e in simulate(seed=4)))
    page_path = tmp_path / "report.html"
    out, err = io.StringIO(), io.StringIO()
    assert run_report(str(events), as_json=True, html=str(page_path), stdout=out, stderr=err) == 0
    data = json.loads(out.getvalue())
    page = Page(page_path.read_text(encoding="utf-8"))
    assert page.field("proof", "events_sha256") == data["events_sha256"]
    assert page.field("items", "tokens_out_total") == f"{data['tokens_out_total']:,}"


def test_report_cli_unwritable_html_exits_2(tmp_path: Path) -> None:
    """An HTML path that cannot be written is one error line and exit status 2."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(encode_event(e) for e in simulate(seed=4, items=5)))
    out, err = io.StringIO(), io.StringIO()
    status = run_report(str(events), html=str(tmp_path), stdout=out, stderr=err)
    assert status == 2
    assert err.getvalue() == f"shardline report: cannot write {tmp_path}: Is a directory\n"


@pytest.mark.parametrize("items", [1, 3000])
def test_page_size_is_bounded_by_buckets_not_items(items: int) -> None:
    """The page grows with buckets and shards, not with items: tens of kB."""
    _, _, text = _page(simulate(seed=6, items=items, minutes=30.0))
    assert len(text.encode()) < 120_000


def test_a_killed_run_still_renders() -> None:
    """The events of a run killed halfway (no run_end) make a page that says so."""
    events = simulate(seed=8)
    report, page, _ = _page(events[: len(events) // 2])
    assert report.unfinished > 0
    assert page.field("items", "end") == "no run_end (incomplete)"
    assert page.field("items", "unfinished") == f"{report.unfinished:,}"
    for name, drawn in page.charts.items():
        assert drawn["path"] + drawn["rect"] > 0, name
