"""Every generated block by name, and the pages (README.md, docs/*.md) with each block's body replaced."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.tools.docs import (amp_blocks, auto_blocks, bundle_blocks, demo_blocks, leak_blocks, rounds_blocks,
                                 scale_blocks, shift_blocks)
from pipeline.tools.docs.commands import FIGURES

__all__ = ["render_blocks", "rewrite_blocks", "pages", "rewrite_pages"]

_BLOCK = re.compile(r"(<!-- docs:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /docs -->)", re.S)
# One module per topic renders its blocks from the figures folder (a topic's blocks appear once its files do).
_TOPICS = (demo_blocks, rounds_blocks, shift_blocks, leak_blocks, auto_blocks, scale_blocks, amp_blocks, bundle_blocks)


def render_blocks(figures: Path = FIGURES) -> dict[str, str]:
    """Every generated block, by name, from the files in `figures`."""
    found: dict[str, str] = {}
    for topic in _TOPICS:
        found.update(topic.blocks(figures))
    return found


def rewrite_blocks(text: str, blocks: dict[str, str], page: str = "README.md") -> str:
    """`text` with each ``<!-- docs:NAME -->`` block's body replaced; every block must be known.

    >>> rewrite_blocks("a\\n<!-- docs:x -->\\nold\\n<!-- /docs -->\\nb", {"x": "new\\n"})
    'a\\n<!-- docs:x -->\\nnew\\n<!-- /docs -->\\nb'
    """
    unknown = sorted({m["name"] for m in _BLOCK.finditer(text)} - set(blocks))
    if unknown:
        raise ValueError(f"{page}: blocks with no generator, or whose files are missing from the figures folder "
                         f"(commit them, or run `make docs-run`): {unknown}; rendered: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m["name"]] + m.group(4), text)


def pages(root: Path = Path(".")) -> list[Path]:
    """The pages that may hold generated blocks: the README and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def rewrite_pages(root: Path = Path("."), figures: Path = FIGURES) -> dict[Path, bool]:
    """Rewrite every page's blocks from `figures` (relative to `root`); {page: whether it changed}. Every page is
    rendered before any is written, so an unknown block on one page leaves all of them as they were."""
    blocks = render_blocks(root / figures)
    old = {page: page.read_text() for page in pages(root)}
    new = {page: rewrite_blocks(text, blocks, str(page.relative_to(root))) for page, text in old.items()}
    for page, text in new.items():
        if text != old[page]:
            page.write_text(text)
    return {page: new[page] != old[page] for page in old}
