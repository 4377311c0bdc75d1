"""The demo's HTML report in a real browser: offline, every chart drawn, nothing cut off.

Headless Chromium opens a copy of the page with a check script appended (the
report itself has no script); the script lays the page out at 1000 px and
writes what it found into the DOM, which ``--dump-dom`` prints. Every network
request is refused (``--host-resolver-rules``), and the script counts the
resources the page loaded: none. Skipped when no Chromium is installed
(``apt-get install chromium``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shardline._cli import main

pytestmark = pytest.mark.browser

BROWSER = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
        if (found := shutil.which(name))
    ),
    None,
)

CHECK = """<script>
(() => {
  const charts = [...document.querySelectorAll("svg[data-chart]")];
  const drawn = charts.filter((svg) => {
    const box = svg.getBoundingClientRect();
    const marks = [...svg.querySelectorAll("path, rect:not(.bg), line")].filter((el) => {
      const b = el.getBBox();
      return b.width > 0 || b.height > 0;
    });
    return box.width > 100 && box.height > 50 && marks.length > 0;
  });
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({
    charts: charts.map((svg) => svg.dataset.chart),
    drawn: drawn.map((svg) => svg.dataset.chart),
    resources: performance.getEntriesByType("resource").length,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  });
  document.body.appendChild(out);
})();
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: every lookup fails
        "--window-size=1000,1400",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed")
def test_demo_report_renders_offline_with_every_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every chart of the demo's report has a size and drawn marks; nothing is fetched."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    page = tmp_path / "demo.html"
    status = main(["demo", "--items", "300", "--no-progress", "--html", str(page)])
    assert status == 0, capsys.readouterr().err
    html = page.read_text(encoding="utf-8")
    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("</body>", CHECK + "</body>"), encoding="utf-8")

    result = _chromium("--dump-dom", checked.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found is not None, result.stdout[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["charts"] == re.findall(r'<svg [^>]*data-chart="([^"]+)"', html)
    assert len(check["charts"]) == 6 + 8  # six charts and one per shard
    assert check["drawn"] == check["charts"]
    assert check["resources"] == 0
    assert check["scrollWidth"] <= check["innerWidth"]  # nothing wider than the window

    shot = tmp_path / "report.png"
    result = _chromium(f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
