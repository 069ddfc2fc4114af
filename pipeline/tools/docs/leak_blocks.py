"""The leak detector's blocks: its evaluation against true groups, its scale, the three leak runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.tools.docs.commands import LEAK_BENCH_COMMAND, LEAK_EVAL_COMMAND, LEAK_SOURCES_COMMAND
from pipeline.tools.docs.tables import oof_and_test, runs_block

__all__ = ["blocks", "leak_eval_block", "leak_bench_block", "leak_optimism_block"]


_AUTO = "auto_groups (before the split)"


def _leak_eval_row(name: str, found: dict) -> str:
    given, withheld, auto = found["groups given"], found["groups withheld"], found[_AUTO]
    share = given["flagged"] / withheld["true_pairs"] if withheld["true_pairs"] else float("nan")
    probe = [found[case]["probe_oof_f1"] for case in ("groups given", "groups withheld", _AUTO)]
    return (f"| {name} | {withheld['true_pairs']} | {withheld['precision']:.3f} | {withheld['recall']:.3f} | "
            f"{given['flagged']} ({share:.1%}) | {auto['precision']:.3f} / {auto['recall']:.3f} | "
            f"{probe[0]:.3f} / {probe[1]:.3f} / {probe[2]:.3f} |")


def leak_eval_block(demo: dict, sources: dict | None = None) -> str:
    """One row per data set: the scan's precision/recall with the groups withheld, its flags with them given
    (and as a share of the true cross-fold pairs), auto_groups' pairs, and the probe's OOF macro-F1."""
    lines = ["| data set | true cross-fold copy pairs | precision, groups withheld | recall | flags with groups "
             "given (share of true pairs) | auto_groups precision / recall | probe OOF macro-F1: grouped / "
             "no groups / auto_groups |", "| --- | --- | --- | --- | --- | --- | --- |",
             _leak_eval_row("demo (digits, 4 copies, shift + tint)", demo)]
    for name, found in (sources or {}).items():
        if name != "seconds":
            lines.append(_leak_eval_row(f"{name} (3 copies)", found))
    command = f"`{' '.join(LEAK_EVAL_COMMAND)}` ({demo['seconds']:.0f} s)" if "seconds" in demo else \
        f"`{' '.join(LEAK_EVAL_COMMAND)}`"
    if sources:
        command += f" and `{' '.join(LEAK_SOURCES_COMMAND)}` ({sources['seconds'] / 60:.0f} min)"
    auto = demo[_AUTO]
    lines += ["", f"{command}. On the demo auto_groups' pairs form {auto['components']} components for the "
              f"{auto['true_groups']} true groups; {auto['components_mixing_true_groups']} join two or more true "
              f"groups and {auto['true_groups_split_across_folds']} true groups still span two folds."]
    return "\n".join(lines) + "\n"


def leak_bench_block(found: dict) -> str:
    cpu = (f", {found['cpu_seconds']:.0f} s of CPU on {found['cpus']} cores at load average "
           f"{found['load_average_before']:.1f} before it" if "cpu_seconds" in found else "")
    planted = (f", {found['planted_pairs_flagged']:,} of them planted copies" if "planted_pairs_flagged" in found
               else "")
    pairs = (f"{found['candidate_pairs']:,} candidate pairs, {found['aligned_pairs']:,} of them" if "candidate_pairs"
             in found else f"{found['aligned_pairs']:,} candidate pairs")
    return (f"`{' '.join(LEAK_BENCH_COMMAND)}`: one class of {found['images']:,} images ({found['source']}, "
            f"{found['size']} px, {found['copies_planted']:,} of them planted copies) scans in {found['seconds']:.0f} s"
            f"{cpu} ({pairs} aligned, {found['pairs_flagged']:,} flagged{planted}) "
            f"and needs {found['scan_memory_mb']:,} MB beyond the {found['rss_before_scan_mb']:,} MB the process held "
            "before it (Python, torch, the images).\n")


def _leak_rows(folder: Path) -> tuple[int, float, int, float]:
    """(rows with a cross-fold near-duplicate, their accuracy, the other rows, theirs) from a run's cv.csv."""
    cv = pd.read_csv(folder / "cv.csv").set_index("part")
    rest = cv.loc["OOF rows without one"]
    if "OOF rows with a cross-fold near-duplicate" not in cv.index:      # the check flagged nothing
        return 0, float("nan"), int(rest["rows"]), rest["accuracy"]
    flagged = cv.loc["OOF rows with a cross-fold near-duplicate"]
    return int(flagged["rows"]), flagged["accuracy"], int(rest["rows"]), rest["accuracy"]


def _left_after_auto(pairs: pd.Series, rows: int, accuracy: float, accuracy_rest: float) -> str:
    if not len(pairs):
        return "no pair (every pair the split's scan found is inside one fold)"
    return (f"{len(pairs)} pairs of similarity {pairs.min():.4f}–{pairs.max():.4f} ({rows} rows, accuracy "
            f"{accuracy:.3f} against {accuracy_rest:.3f} for the rest)")


def leak_optimism_block(figures: Path) -> str:
    """What the three leak runs' OOF and test scores and their CV leak rows say, from their files."""
    oof, test, low, high = oof_and_test(figures / "nogroups")
    auto_oof, auto_test, _, _ = oof_and_test(figures / "autogroups")
    grouped_oof = oof_and_test(figures)[0]
    n_with, acc_with, n_rest, acc_rest = _leak_rows(figures / "nogroups")
    auto_with, auto_acc, _, auto_acc_rest = _leak_rows(figures / "autogroups")
    given_with, given_acc, _, given_acc_rest = _leak_rows(figures)
    pairs = pd.read_csv(figures / "autogroups" / "leaks.csv")["similarity"]
    return (f"Without groups the OOF macro-F1 ({oof:.3f}) is {oof - high:.2f}–{oof - low:.2f} above what one fold "
            f"model scores on the test set and {oof - test:.3f} above the submission; with auto_groups it is "
            f"{auto_oof:.3f} against the grouped run's {grouped_oof:.3f}, and {abs(auto_oof - auto_test):.3f} "
            f"{'below' if auto_oof < auto_test else 'above'} its own test score. The CV table's leak rows: in the run "
            f"without groups {n_with} of {n_with + n_rest} OOF rows have a copy in another fold (accuracy "
            f"{acc_with:.3f}; the {n_rest} others: {acc_rest:.3f}); after auto_groups the check still flags "
            f"{_left_after_auto(pairs, auto_with, auto_acc, auto_acc_rest)}; with the groups given, "
            f"{_given_flags(len(pd.read_csv(figures / 'leaks.csv')), given_with, given_acc, given_acc_rest)}.\n")


def _given_flags(pairs: int, rows: int, accuracy: float, accuracy_rest: float) -> str:
    if not pairs:
        return "it flags no pair"
    return (f"the {pairs} look-alike pairs ({rows} rows) score accuracy {accuracy:.3f} against {accuracy_rest:.3f} "
            "for the other rows")


def blocks(figures: Path) -> dict[str, str]:
    """The leak evaluation, its scale and the three leak runs, where their files exist."""
    found = {}
    if (figures / "leak_eval.json").is_file():
        sources = figures / "leak_sources.json"
        found["leak_eval"] = leak_eval_block(json.loads((figures / "leak_eval.json").read_text()),
                                             json.loads(sources.read_text()) if sources.is_file() else None)
    if (figures / "leak_bench.json").is_file():
        found["leak_bench"] = leak_bench_block(json.loads((figures / "leak_bench.json").read_text()))
    if all((figures / name / "cv.csv").is_file() for name in ("nogroups", "autogroups")):
        found["leak_runs"] = runs_block([("groups withheld (`demo-nogroups`)", figures / "nogroups"),
                                         ("`folds.auto_groups` (`demo-autogroups`)", figures / "autogroups"),
                                         ("groups given (`demo`)", figures)])
    if all((figures / name).is_file() for name in ("leak_eval.json", "leaks.csv", "autogroups/leaks.csv",
                                                   "nogroups/cv.csv")):
        found["leak_optimism"] = leak_optimism_block(figures)
    return found
