"""Second models and second rounds: blend and stack, seeds, pseudo-labels, the binary variant's rounds."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.fileio import read_text_csv
from pipeline.tools.docs.commands import STACK_FIGURES
from pipeline.tools.docs.tables import oof_tta, read_run, runs_block, soft_vote

__all__ = ["blocks", "stack_block", "seeds_block", "odd_rounds_block", "pseudo_list_block"]


def _stack_rows(cv: pd.DataFrame, stack_score: pd.DataFrame, blend_score: pd.DataFrame,
                metric: str = "f1_macro") -> list[tuple[str, float, float]]:
    """(row, out-of-fold `metric` with fitted choices nested, held-back test `metric`) of each member, the plain
    vote, the blend and the stack (their submissions)."""
    test = stack_score.set_index("model")[metric]
    blend_sub = blend_score[blend_score["model"].str.endswith("submission.csv (submission)")][metric].iloc[0]
    stack_sub = test[test.index.str.endswith("submission.csv (submission)")].iloc[0]
    oof = cv.set_index("part")[metric]
    members = [p.rsplit(" (", 1)[0] for p in cv["part"] if p.endswith(".csv)")]
    rows = [(f"{m} alone", oof[oof.index.str.startswith(f"{m} (")].iloc[0], test[f"{m} (soft vote of its folds)"])
            for m in members]
    return rows + [("plain vote (soft, uniform weights)", oof["plain vote (soft, uniform weights)"],
                    test["plain vote (soft, uniform weights)"]),
                   ("blend, fitted weights (`make ensemble EXPS=`)", oof["blend soft, fitted weights, nested"],
                    blend_sub),
                   ("**stack (`make stack EXPS=`)**", oof[oof.index.str.startswith("stack:")].iloc[0], stack_sub)]


def _gains_text(rows: list[tuple[str, float, float]]) -> str:
    """The blend's and the stack's gain over the plain vote (the last three of `_stack_rows`)."""
    (_, vote_oof, vote_test), (_, blend_oof, blend_test), (_, stack_oof, stack_test) = rows[-3:]
    return (f"Against the plain vote, out of fold: the blend {blend_oof - vote_oof:+.3f}, the stack "
            f"{stack_oof - vote_oof:+.3f}; on the test set: the blend {blend_test - vote_test:+.3f}, the stack "
            f"{stack_test - vote_test:+.3f}.")


def _table(header: list[str], rows: list[tuple[str, float, float]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
            + [f"| {name} | {o:.3f} | {t:.3f} |" for name, o, t in rows])


def stack_block(cv: pd.DataFrame, stack_score: pd.DataFrame, blend_score: pd.DataFrame) -> str:
    """Out-of-fold (nested) and held-back test macro-F1 of each member, the plain vote, the blend and the stack."""
    rows = _stack_rows(cv, stack_score, blend_score)
    lines = _table(["`demo` + `demo2`", "out-of-fold macro-F1 (fitted choices nested)", "test macro-F1"], rows)
    return "\n".join(lines + ["", _gains_text(rows)]) + "\n"


def _seed_rows(base: Path, seeds: Path, base_label: str) -> list[tuple[str, float, float]]:
    """(row, OOF TTA, test soft vote) of the one-seed run, each seed alone and the seeds averaged in each fold."""
    base_cv, base_score, _ = read_run(base)
    cv, score, _ = read_run(seeds)
    alone = [re.fullmatch(r"seed (\S+) alone: out-of-fold, TTA", part) for part in cv.index]
    names = [m[1] for m in alone if m]
    return ([(base_label, oof_tta(base_cv), soft_vote(base_score))]
            + [(f"seed {s} alone", cv[f"seed {s} alone: out-of-fold, TTA"], score[f"seed {s} alone, soft vote"])
               for s in names]
            + [(f"**seeds {' + '.join(names)} averaged within each fold**", oof_tta(cv), soft_vote(score))])


def seeds_block(base: Path, seeds: Path) -> str:
    rows = _seed_rows(base, seeds, "`demo` (one seed, 42)")
    lines = _table(["`demo-seeds` (folds of `demo`)", "out-of-fold macro-F1 (TTA)", "test macro-F1 (soft vote)"], rows)
    best = max(rows[1:-1], key=lambda r: r[1])
    lines += ["", f"Averaged seeds against the best single seed out of fold ({best[0]}): {rows[-1][1] - best[1]:+.3f} "
              f"out of fold, {rows[-1][2] - best[2]:+.3f} on the test set; single seeds span "
              f"{min(r[2] for r in rows[:-1]):.3f} – {max(r[2] for r in rows[:-1]):.3f} on the test set."]
    return "\n".join(lines) + "\n"


def odd_rounds_block(figures: Path) -> str:
    """The binary variant: every fitted choice and second round beside its plain vote, in its metric."""
    cv, score, metric = read_run(figures / "odd")
    plain = ("plain: soft vote of the folds (`demo-odd`)", oof_tta(cv), soft_vote(score))
    bias = ("class bias (a threshold), fitted on the other folds",
            cv[cv.index.str.startswith("out-of-fold, TTA + class bias")].iloc[0],
            score[score.index.str.contains("class bias")].iloc[0])
    stack = figures / "odd_stack"
    stacked = _stack_rows(*(pd.read_csv(stack / n) for n in ("cv.csv", "score.csv", "blend_score.csv")), metric)
    pl_cv, pl_score, _ = read_run(figures / "odd_pl")
    pseudo = ("pseudo-labels (`demo-odd-pl`)", oof_tta(pl_cv), soft_vote(pl_score))
    seeds = _seed_rows(figures / "odd", figures / "odd_seeds", "one seed (`demo-odd`, 42)")[1:]
    rows = [plain, bias, *stacked, pseudo, *seeds]
    lines = _table([f"odd/even demo, {metric}", f"out-of-fold {metric} (fitted choices nested)",
                    f"test {metric}"], rows)
    return "\n".join(lines + ["", _gains_text(stacked)]) + "\n"


def pseudo_list_block(folder: Path) -> str:
    """How many test images the list held, per class, and how many of their labels were right (checked against
    the held-back labels afterwards; the pipeline never reads them for the list)."""
    listed = read_text_csv(folder / "pseudo_labels.csv")
    truth = read_text_csv(folder / "test_labels.csv").set_index("id")["label"]
    per_class = listed["label"].value_counts()
    right = int((listed["label"].to_numpy() == truth.loc[listed["id"]].to_numpy()).sum())
    return (f"The list held {len(listed)} of the {len(truth)} test images ({per_class.min()} to {per_class.max()} "
            f"per class), {right} of them correctly labelled (checked afterwards against the held-back labels, "
            "which the pipeline never read for it).\n")


def blocks(figures: Path) -> dict[str, str]:
    """Blend and stack, seeds, pseudo-labels and the binary variant's rounds, where their runs' files exist."""
    found = {}
    if all((figures / name).is_file() for name in STACK_FIGURES):
        found["stack"] = stack_block(*(pd.read_csv(figures / name) for name in STACK_FIGURES))
    if (figures / "seeds" / "cv.csv").is_file():
        found["seeds_runs"] = seeds_block(figures, figures / "seeds")
    if all((figures / name / "cv.csv").is_file() for name in ("odd", "odd_stack", "odd_pl", "odd_seeds")):
        found["odd_rounds"] = odd_rounds_block(figures)
    if (figures / "pseudo" / "cv.csv").is_file():
        found["pseudo_runs"] = runs_block([("round 1 (`demo`)", figures), ("pseudo-labels (`demo-pl`)",
                                                                           figures / "pseudo")])
        found["pseudo_list"] = pseudo_list_block(figures / "pseudo")
    return found
