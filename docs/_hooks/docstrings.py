"""mkdocs hook: render the reStructuredText habits of shardline's docstrings.

shardline's docstrings are Google style, but they cross-reference the way
Sphinx does (``:class:`Deadlines```, ``:meth:`Pipeline.complete```) and
introduce examples with ``Example::``. Markdown shows these literally, so this
hook rewrites the rendered HTML of each page:

* ``:role:`Name``` becomes an optional autorefs cross-reference to
  ``shardline.Name`` (or ``shardline.testing.Name``): a link when that object is
  documented on the site, plain code when it is not. No warning either way.
* ``:role:`~a.b.Name``` shows only ``Name``, as in Sphinx.
* A paragraph ending in ``::`` (the reST literal-block marker) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|data|attr|exc|mod|obj|const):<code>(~?)([\w.]+?)(\(\))?</code>"
)
_LITERAL_MARKER = re.compile(r"(\S)::</p>")


def _autoref(match: re.Match[str]) -> str:
    tilde, target, call = match.group(1), match.group(2), match.group(3) or ""
    shown = target.rsplit(".", 1)[-1] if tilde else target
    if target.startswith("shardline."):
        first, second = target, target
    else:
        first, second = f"shardline.{target}", f"shardline.testing.{target}"
    return (
        f'<autoref identifier="{first}" slug="{second}" optional>'
        f"<code>{shown}{call}</code></autoref>"
    )


def on_page_content(html: str, **_kwargs: Any) -> str:
    html = _ROLE.sub(_autoref, html)
    return _LITERAL_MARKER.sub(r"\1:</p>", html)
