"""Rewrite the generated blocks of the docs: `python -m lab.docs_blocks` (or `make docs`).

Two tables in the docs are views of declarations in the code, and the tests compare them:

- docs/proxy.md, between `<!-- settings:begin -->` and `<!-- settings:end -->`: the proxy's own
  settings (`serving.config.markdown_table`) then the shared ones (`rl_lb.control.markdown_table`);
- docs/scenarios.md, between `<!-- control:begin -->` and `<!-- control:end -->`: the shared
  settings as scenario keys.

Only the tables are replaced; the prose around them between the markers stays as written.
It lives in the lab because it reads both the core and the proxy (the core never imports a wing).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from rl_lb import control
from serving import config

__all__ = ["main", "replace_tables"]

DOCS = Path(__file__).resolve().parents[1] / "docs"
_TABLE = re.compile(r"(?:^\|.*\n?)+", re.MULTILINE)


def replace_tables(text: str, begin: str, end: str, tables: list[str]) -> str:
    """`text` with the Markdown tables between `begin` and `end` replaced, in order, by `tables`.

    The block must hold exactly as many tables as given: a block someone edited into another shape
    is an error to fix by hand, not something to guess at.
    """
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"error: expected one {begin} and one {end}; restore the markers")
    head, rest = text.split(begin)
    block, tail = rest.split(end)
    found = _TABLE.findall(block)
    if len(found) != len(tables):
        raise SystemExit(
            f"error: {len(found)} tables between {begin} and {end}, expected {len(tables)}; "
            "restore the block's shape (one table per heading)"
        )
    pieces = iter(table.rstrip("\n") + "\n" for table in tables)
    new_block = _TABLE.sub(lambda _: next(pieces), block)
    return head + begin + new_block + end + tail


def main() -> int:
    """Rewrite both blocks; print which files changed."""
    targets = [
        (
            DOCS / "proxy.md",
            "<!-- settings:begin -->",
            "<!-- settings:end -->",
            [config.markdown_table(), control.markdown_table()],
        ),
        (
            DOCS / "scenarios.md",
            "<!-- control:begin -->",
            "<!-- control:end -->",
            [control.markdown_table(scenario=True)],
        ),
    ]
    for path, begin, end, tables in targets:
        old = path.read_text(encoding="utf-8")
        new = replace_tables(old, begin, end, tables)
        if new != old:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {path.relative_to(DOCS.parent)}")
        else:
            print(f"{path.relative_to(DOCS.parent)} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
