"""The answer first: what the submission is, what it is expected to score, what was left out and why, warnings.

Built from ensemble.json alone (the chain's record), so cv.md, `make score` and the run report open with the
same summary; each renders it as Markdown, plain text or HTML.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["NAMES", "submission_text", "summary_items", "steps_frame", "folded_rows", "score_items", "as_markdown",
           "as_text"]

NAMES = {"views": "TTA views", "checkpoints": "checkpoints", "logit_adjust": "logit adjustment",
         "class_bias": "class bias", "prior_shift": "prior-shift correction", "blend": "blend weights"}


def _applied_text(step: dict) -> str:
    fitted = step["fitted"]
    if step["step"] == "logit_adjust":
        return f"logit adjustment (tau={fitted['tau']:g})"
    if step["step"] == "prior_shift":
        return f"prior-shift correction ({fitted['method']})"
    return NAMES.get(step["step"], step["step"])


def submission_text(record: dict) -> str:
    """'soft vote of 5 folds; TTA views identity+scale_0.9 of 3 (tta.select: auto); checkpoint best; + logit
    adjustment (tau=1)'."""
    entry, steps = record["submission"], {s["step"]: s for s in record.get("chain", [])}
    parts = [f"{entry['voting']} vote of {len(entry['files'])} folds"]
    views = steps.get("views")
    if entry["views"] != ["all"]:
        predicted = len(views["baseline"]["views"]) if views and views.get("baseline") else len(entry["views"])
        of = f" of {predicted} predicted" if predicted != len(entry["views"]) else ""
        setting = f" (tta.select: {views['value']})" if views else ""
        parts.append(f"TTA views {'+'.join(entry['views'])}{of}{setting}")
    if entry["checkpoints"] != ["all"]:
        parts.append(f"checkpoint{'s' if len(entry['checkpoints']) > 1 else ''} {'+'.join(entry['checkpoints'])}")
    factors = [_applied_text(s) for s in steps.values() if s["applied"] and "log_factor" in s["fitted"]]
    return "; ".join(parts) + "".join(f"; + {f}" for f in factors)


def _estimate_text(record: dict) -> str:
    e = record.get("estimate")
    if not e:
        return ""
    folds = np.asarray(e["folds"], dtype=np.float64)
    shifted = any(s["step"] == "prior_shift" and s["applied"] for s in record.get("chain", []))
    return (f"{e['oof']:.4f} {e['metric']} on {e['rows']} OOF rows, every fitted choice nested; folds "
            f"{folds.min():.4f}–{folds.max():.4f} (sd {folds.std(ddof=1) if len(folds) > 1 else 0:.4f})"
            + ("; before the prior-shift correction, which the OOF rows (the training mix) cannot score: see its "
               "simulated gain" if shifted else ""))


def _gain_text(step: dict) -> str:
    return f"{step['gain']:+.4f} ± {step['noise']:.4f}"


def summary_items(record: dict) -> list[tuple[str, str]]:
    """(label, text) pairs: the submission, its OOF estimate, what was not applied and why, warnings."""
    items = [("Submission", submission_text(record))]
    estimate = _estimate_text(record)
    if estimate:
        items.append(("Out-of-fold estimate", estimate))
    left = [f"{NAMES.get(s['step'], s['step'])} (gain {_gain_text(s)}): {s['why']}"
            for s in record.get("chain", []) if not s["applied"] and not _trivial(s)]
    if left:
        items.append(("Not applied", "; ".join(left)))
    for warning in record.get("warnings", []):
        items.append(("Warning", warning))
    return items


def _trivial(step: dict) -> bool:
    """A selection step with nothing to choose (one view, one checkpoint): not worth a line."""
    return (step["step"] in ("views", "checkpoints") and "candidates" not in step["fitted"]
            and step.get("baseline") in (None, step["fitted"]))


def steps_frame(record: dict) -> pd.DataFrame:
    """One row per step: its setting, applied or not, its nested gain ± noise, why."""
    rows = [{"step": NAMES.get(s["step"], s["step"]),
             "setting": f"{s['key']}: {s['value']}" if s["key"] else s["setting"],
             "applied": "yes" if s["applied"] else "no", "gain ± noise": _gain_text(s),
             "chosen": _chosen(s), "why": s["why"]}
            for s in record.get("chain", []) if not _trivial(s)]
    return pd.DataFrame(rows, columns=["step", "setting", "applied", "gain ± noise", "chosen", "why"])


def _chosen(step: dict) -> str:
    fitted = step["fitted"]
    if step["step"] in ("views", "checkpoints"):
        return "+".join(fitted[step["step"]])
    if step["step"] == "logit_adjust":
        return f"tau={fitted['tau']:g}"
    if step["step"] == "class_bias":
        return "b=[" + ", ".join(f"{b:.2f}" for b in fitted["bias"]) + "]"
    if step["step"] == "prior_shift":
        return "q=[" + ", ".join(f"{v:.3f}" for v in fitted["estimate"]) + "]"
    return ""


def folded_rows(cv: pd.DataFrame, record: dict) -> dict[str, list[str]]:
    """``{why: [part, ...]}``: the CV rows that carry nothing here, shown folded. The simulated mixes when no
    shift was found; 'the rest' of the leak check when no row has a near-duplicate (it repeats the OOF row)."""
    parts, out = cv["part"], {}
    shift = record.get("prior_shift") or {}
    if shift.get("p_value") is not None and shift["p_value"] >= shift["alpha"]:
        out[f"simulated mixes (no prior shift was found, p={shift['p_value']:.2g})"] = \
            parts[parts.str.startswith("simulated ")].tolist()
    if "OOF rows with a cross-fold near-duplicate" not in set(parts):
        out["the leak check found no cross-fold near-duplicate"] = parts[parts == "OOF rows without one"].tolist()
    return {why: rows for why, rows in out.items() if rows}


def score_items(record: dict, table: pd.DataFrame, metric: str) -> list[tuple[str, str]]:
    """`make score`'s summary: the submission's held-back score against its OOF estimate and the plain vote, and
    what each step did on the held-back labels (its toggled row against the submission)."""
    by = table.set_index("model")[metric]
    submitted = by["submission.csv"]
    items = [("Submission", f"held-back {metric} {submitted:.4f}: {submission_text(record)}")]
    e = record.get("estimate")
    if e:
        items.append(("Out-of-fold estimate", f"{e['oof']:.4f} (held-back minus estimate {submitted - e['oof']:+.4f})"))
    plain = f"{record['submission']['voting']} vote"
    plain_score = by.get(plain, by.get(f"{plain} (submission)"))
    if plain_score is not None:
        items.append(("Plain vote", f"{plain_score:.4f} (the chain's gain on the held-back labels "
                                    f"{submitted - plain_score:+.4f})"))
    effects = []
    toggled = table.dropna(subset=["step"]).set_index("step")[metric] if "step" in table.columns else {}
    for s in record.get("chain", []):
        if s["step"] in toggled:   # the submission with the step toggled: what the step did
            delta = submitted - toggled[s["step"]] if s["applied"] else toggled[s["step"]] - submitted
            effects.append(f"{NAMES.get(s['step'], s['step'])} {'applied' if s['applied'] else 'not applied'}: "
                           f"{delta:+.4f}")
    if effects:
        items.append(("Each step on the held-back labels", "; ".join(effects)))
    return items


def as_markdown(items: list[tuple[str, str]]) -> str:
    return "\n".join(f"- **{label}**: {text}" for label, text in items)


def as_text(items: list[tuple[str, str]]) -> str:
    return "\n".join(f"{label}: {text}" for label, text in items)
