"""The built docs site in a real browser: the main pages show their code whole.

Builds the site with ``mkdocs build --strict``, opens each main page in headless
Chromium at 1280 px (a laptop screen) and measures, in the page, every code block
that would scroll sideways and every figure that did not load. Skipped when no
Chromium or no mkdocs is installed.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_report_browser import BROWSER

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # builds the whole site: about a minute
    pytest.mark.skipif(BROWSER is None, reason="no chromium installed"),
    pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="no mkdocs"),
]

ROOT = Path(__file__).resolve().parent.parent

MAIN_PAGES = [
    "index.html",
    "tutorial/index.html",
    "how-to/batch-jsonl/index.html",
    "how-to/deadlines/index.html",
    "how-to/embed/index.html",
    "how-to/export-metrics/index.html",
    "how-to/export-otel/index.html",
    "how-to/html-report/index.html",
    "how-to/retries/index.html",
    "how-to/shards/index.html",
    "how-to/testing/index.html",
    "explanation/design/index.html",
    "explanation/performance/index.html",
    "reference/cli/index.html",
    "reference/errors/index.html",
    "reference/testing/index.html",
]

MEASURE = """<script>
window.addEventListener("load", () => {
  const wide = [...document.querySelectorAll(".md-content pre > code")]
    .filter((code) => code.scrollWidth > code.clientWidth + 1)
    .map((code) => code.textContent.split("\\n").sort((a, b) => b.length - a.length)[0]);
  const broken = [...document.querySelectorAll(".md-content img")]
    .filter((img) => !(img.complete && img.naturalWidth > 0))
    .map((img) => img.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({ wide, broken });
  document.body.appendChild(out);
});
</script>"""


def test_main_pages_have_no_cut_off_code(tmp_path: Path) -> None:
    """At 1280 px no code block scrolls sideways and every figure loads."""
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    problems = {}
    for rel in MAIN_PAGES:
        page = site / rel
        probe = page.with_name("probe.html")
        probe.write_text(
            page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"),
            encoding="utf-8",
        )
        assert BROWSER is not None
        result = subprocess.run(
            [
                BROWSER,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--window-size=1280,900",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        found = re.search(r'<pre id="measure">(.*?)</pre>', result.stdout, re.DOTALL)
        assert found is not None, (rel, result.stderr[-2000:])
        measured = json.loads(html.unescape(found.group(1)))
        if measured["wide"] or measured["broken"]:
            problems[rel] = measured
    assert problems == {}
