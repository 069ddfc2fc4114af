"""The prior-shift sentence: the demo's priors, shift test and corrected scores."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.tools.docs.tables import read_run

__all__ = ["blocks", "prior_shift_block"]


def _span(values) -> str:
    """'low–high' of `values` (3 decimals)."""
    return f"{min(values):.3f}–{max(values):.3f}"


def prior_shift_block(figures: Path) -> str:
    """The demo's priors, shift test and corrected scores, from its ensemble.json, score.csv and cv.csv."""
    record = json.loads((figures / "ensemble.json").read_text())["prior_shift"]
    cv, score, metric = read_run(figures)
    test = score.rename(index=lambda name: name.removesuffix(" (submission)"))

    def simulated(mix: str, what: str) -> float:
        return cv[next(part for part in cv.index if part.startswith(f"simulated {mix} mix: {what}"))]

    def mix_text(mix: str) -> str:
        return (f"{simulated(mix, 'no correction'):.3f} without and {simulated(mix, 'EM correction'):.3f} with the "
                f"EM correction (`auto`: {simulated(mix, 'auto'):.3f})")

    chosen = f"soft vote + prior-shift correction ({record['method']})"
    applied = (f", {record['method'].upper()}-corrected (the submission) {test[chosen]:.3f}"
               if record["applied"] and record["method"] not in ("em", "bbse") and chosen in test.index else "")
    decision = (f"and `auto` applies the {record['method'].upper()} correction" if record["applied"]
                else "and `auto` leaves the submission unchanged")
    if record.get("why"):
        decision += f": {record['why'].rstrip('.')}"
    estimates = record["estimates"]
    return (f"The G-test of out-of-fold against test predicted classes gives G={record['g_statistic']:.0f}, "
            f"p={record['p_value']:.1g}, {decision}. The models' effective prior spans {_span(record['model_prior'])} "
            f"against raw label shares of {_span(record['training_labels'])}; the EM estimate of the test mix spans "
            f"{_span(estimates['em'])}, BBSE's {_span(estimates['bbse'])}. On the test set ({metric}): the soft vote "
            f"{test['soft vote']:.3f}, EM-corrected {test['soft vote + prior-shift correction (em)']:.3f}, "
            f"BBSE-corrected {test['soft vote + prior-shift correction (bbse)']:.3f}{applied}, the rank vote "
            f"{test['rank vote']:.3f}. Out of fold, resampled to a balanced mix: {mix_text('balanced')}; to the "
            f"reversed mix: {mix_text('reversed')}; to their own training mix: {mix_text('training')}.\n")


def blocks(figures: Path) -> dict[str, str]:
    """The prior-shift sentence, where the demo's ensemble.json exists."""
    return {"prior_shift": prior_shift_block(figures)} if (figures / "ensemble.json").is_file() else {}
