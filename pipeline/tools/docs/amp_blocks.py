"""Whether `train.amp: auto` and `train.channels_last: auto` change what the demo learns: three seeds each way
(docs/figures/amp_eval.json, written by `python -m pipeline.tools.amp_eval`)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["blocks", "amp_eval_block", "AMP_EVAL"]

AMP_EVAL = "amp_eval.json"


def amp_eval_block(figures: Path) -> str:
    """One row per run (setting, seed, OOF score, seconds per epoch, what auto resolved to), then the verdict."""
    result = json.loads((figures / AMP_EVAL).read_text())
    runs = sorted(result["runs"], key=lambda r: (r["seed"], r["setting"] != "off"))
    metric = runs[0]["metric"] if runs else "score"
    lines = [f"Measured by `{result['command']}` on {result['date']} ({result['cpu_count']} CPUs; each run "
             "`make folds train ensemble` of the demo, one at a time):", "",
             f"| setting | seed | out-of-fold {metric} (no TTA) | with TTA | s / epoch | resolved to |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        resolved = r["resolved"]
        tta = f"{r['oof_tta']:.4f}" if r.get("oof_tta") is not None else "–"
        lines.append(f"| {r['setting']} | {r['seed']} | {r['oof']:.4f} | {tta} | {r['seconds_per_epoch']:.2f} | "
                     f"{resolved.get('device')}, amp {resolved.get('amp')}, channels_last "
                     f"{resolved.get('channels_last')} |")
    v = result.get("verdict")
    if v:
        lines += ["", f"Paired differences auto − off: {', '.join(f'{d:+.4f}' for d in v['paired_differences'])} "
                      f"(mean {v['mean_difference']:+.4f}) against a spread over seeds of {v['noise']:.4f}: "
                      + ("**unchanged within noise**" if v["unchanged_within_noise"] else "**changed beyond noise**")
                      + f"; seconds per epoch off / auto = {v['speedup']:.2f}."]
    return "\n".join(lines) + "\n"


def blocks(figures: Path) -> dict[str, str]:
    """The amp table, where amp_eval's figure exists."""
    return {"amp_eval": amp_eval_block(figures)} if (figures / AMP_EVAL).is_file() else {}
