"""Does `auto` earn its place? The held-back scores of the plain vote, everything on auto and each step forced on
(docs/figures/auto_steps.json, written by `python -m pipeline.tools.auto_eval`)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["blocks", "auto_steps_block", "AUTO_STEPS"]

AUTO_STEPS = "auto_steps.json"
# The variants in the order the table shows them (auto_eval.variants' names).
_COLUMNS = ("plain vote", "auto", "views forced", "checkpoints forced", "logit adjustment on", "class bias on",
            "prior shift em", "prior shift calibrated_em")


def _applied(variant: dict) -> str:
    """What auto applied, with the chosen views and checkpoints."""
    steps = [s for s in variant["applied"] if s not in ("views", "checkpoints")]
    chosen = f"views {'+'.join(variant['views'])}; {'+'.join(variant['checkpoints'])}"
    return chosen + ("; " + ", ".join(steps) if steps else "")


def auto_steps_block(figures: Path) -> str:
    """One row per experiment: each variant's held-back score (its nested OOF estimate in brackets), auto minus
    the plain vote, and what auto applied."""
    found = json.loads((figures / AUTO_STEPS).read_text())
    head = "| experiment (metric, test rows) | " + " | ".join(_COLUMNS) + " | auto − plain | auto applied |"
    lines = [head, "| --- " * (len(_COLUMNS) + 3) + "|"]
    for name, run in found.items():
        cells = [f"{run['variants'][c]['test']:.4f} ({run['variants'][c]['oof']:.4f})" for c in _COLUMNS]
        lines.append(f"| {name} ({run['metric']}, {run['test_rows']}) | " + " | ".join(cells)
                     + f" | {run['auto_minus_plain_test']:+.4f} | {_applied(run['variants']['auto'])} |")
    return "\n".join(lines) + "\n"


def blocks(figures: Path) -> dict[str, str]:
    """The auto table, where auto_eval's figure exists."""
    return {"auto_steps": auto_steps_block(figures)} if (figures / AUTO_STEPS).is_file() else {}
