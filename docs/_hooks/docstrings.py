"""mkdocs hook: render the reStructuredText habits of shardline's docstrings.

shardline's docstrings are Google style, but they cross-reference the way
Sphinx does (``:class:`Deadlines```, ``:meth:`Pipeline.complete```,
``:meth:`delay``` for a sibling method) and introduce examples with
``Example::``. Markdown shows these literally, so this hook rewrites the
rendered HTML of each page:

* ``:role:`Name``` becomes an optional autorefs cross-reference: a link when the
  object is documented on the site, plain code when it is not, and no warning
  either way. A bare lowercase name (``delay``) is looked up first on the class
  being documented, then in its package; other names in the package of the
  object being documented (``shardline``, ``shardline.testing`` …), then in
  ``shardline``.
* ``:role:`~a.b.Name``` shows only ``Name``, as in Sphinx.
* A paragraph ending in ``::`` (the reST literal-block marker) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|data|attr|exc|mod|obj|const):<code>(~?)([\w.]+?)(\(\))?</code>"
)
_OBJECT_ID = re.compile(r'id="(shardline(?:\.\w+)+)"')
_LITERAL_MARKER = re.compile(r"(\S)::</p>")


def _class_of(path: str) -> str:
    """``shardline.RetryPolicy.delay`` -> ``shardline.RetryPolicy``."""
    parts = path.split(".")
    while len(parts) > 1 and not parts[-1][:1].isupper():
        parts.pop()
    return ".".join(parts)


def _candidates(target: str, context: str | None) -> tuple[str, str]:
    if target.startswith("shardline."):
        return target, target
    owner = _class_of(context) if context else "shardline"
    module = owner.rsplit(".", 1)[0] if owner[-1:] and owner.split(".")[-1][:1].isupper() else owner
    if "." not in target and target[:1].islower():
        return f"{owner}.{target}", f"{module}.{target}"  # a sibling, then a module function
    return f"{module}.{target}", f"shardline.{target}"


def on_page_content(html: str, **_kwargs: Any) -> str:
    objects = [(m.start(), m.group(1)) for m in _OBJECT_ID.finditer(html)]

    def autoref(match: re.Match[str]) -> str:
        tilde, target, call = match.group(1), match.group(2), match.group(3) or ""
        context = None
        for position, path in objects:
            if position > match.start():
                break
            context = path
        shown = target.rsplit(".", 1)[-1] if tilde else target
        first, second = _candidates(target, context)
        return (
            f'<autoref identifier="{first}" slug="{second}" optional>'
            f"<code>{shown}{call}</code></autoref>"
        )

    html = _ROLE.sub(autoref, html)
    return _LITERAL_MARKER.sub(r"\1:</p>", html)
