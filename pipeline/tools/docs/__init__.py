"""The documentation's figures, generated: `make docs-run` measures, `make docs` writes the tables.

``make docs-run`` (:mod:`.recording`) runs the demo from scratch (``make clean``, then ``make folds train ensemble
score``), ``make bench``, a second experiment on the same folds with its blend and stack, the extra runs
(:data:`.commands.EXTRA_RUNS`) and the leak evaluation, times them, and copies what the pages quote into
``docs/figures/`` (with ``run.json``: the commands, their seconds, the CPU, the commit). ``make docs``
(:mod:`.pages`) rewrites every block between ``<!-- docs:NAME -->`` and ``<!-- /docs -->`` of README.md and of
each page under docs/ from those files; one module per topic renders its blocks (``demo_blocks``,
``rounds_blocks``, ``shift_blocks``, ``leak_blocks``). The prose around a block interprets it without repeating
its numbers; a test checks that every page holds exactly what ``make docs`` writes from the committed figures.
"""

from pathlib import Path

from pipeline.tools.docs.commands import FIGURES
from pipeline.tools.docs.pages import pages, render_blocks, rewrite_blocks, rewrite_pages
from pipeline.tools.docs.recording import record_run

__all__ = ["FIGURES", "pages", "render_blocks", "rewrite_blocks", "rewrite_pages", "record_run", "main"]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pipeline.tools.docs.commands import EXTRA_RUNS
    from pipeline.tools.docs.recording import record_extras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="first run the demo and the bench from scratch (slow)")
    parser.add_argument("--extra", nargs="+", metavar="NAME", help=f"rerun only these extra runs: {list(EXTRA_RUNS)}")
    parser.add_argument("--figures", type=Path, default=FIGURES)
    args = parser.parse_args(argv)
    if args.run:
        record_run(args.figures)
    elif args.extra:
        record_extras(args.extra, args.figures)
    for page, changed in rewrite_pages(Path("."), args.figures).items():
        print(f"[docs] {page}: {'rewritten' if changed else 'already up to date'} from {args.figures}/")
    return 0
