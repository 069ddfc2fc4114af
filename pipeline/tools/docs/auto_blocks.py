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
    """One column per experiment, one row per variant: its held-back score (its nested OOF estimate in brackets),
    then auto minus the plain vote and what auto applied."""
    found = json.loads((figures / AUTO_STEPS).read_text())
    runs = list(found.items())
    lines = ["| variant | " + " | ".join(f"{name} ({run['metric']}, {run['test_rows']} test rows)" for name, run in runs)
             + " |", "| --- " * (len(runs) + 1) + "|"]
    for variant in _COLUMNS:
        cells = [f"{run['variants'][variant]['test']:.4f} ({run['variants'][variant]['oof']:.4f})" for _, run in runs]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("| **auto − plain vote** | " + " | ".join(f"**{run['auto_minus_plain_test']:+.4f}**" for _, run in runs)
                 + " |")
    lines.append("| auto kept | " + " | ".join(_applied(run["variants"]["auto"]) for _, run in runs) + " |")
    return "\n".join(lines) + "\n"


def blocks(figures: Path) -> dict[str, str]:
    """The auto table, where auto_eval's figure exists."""
    return {"auto_steps": auto_steps_block(figures)} if (figures / AUTO_STEPS).is_file() else {}
