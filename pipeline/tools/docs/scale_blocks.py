"""The scale benchmark's table: each stage's seconds, images/s and peak memory against N, its slope, the targets
(docs/figures/bench_scale.json, written by `make bench-scale BENCH_SCALE_ARGS=--docs`)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.tools.bench_scale import STAGES

__all__ = ["blocks", "bench_scale_block", "BENCH_SCALE"]

BENCH_SCALE = "bench_scale.json"


def _cell(stage: dict) -> str:
    return f"{stage['seconds']:.1f} s · {stage['images_per_s']:,.0f}/s · {stage['peak_mb']:,.0f} MB"


def bench_scale_block(figures: Path) -> str:
    """The measured table (a row per stage, a column per generated set, the log-log slope), then the targets."""
    result = json.loads((figures / BENCH_SCALE).read_text())
    runs = sorted(result["runs"], key=lambda r: (r["kind"] != "png", r["n"]))
    head = "| stage | " + " | ".join(f"{r['kind'].upper()} {r['n']:,}" for r in runs) + " | slope |"
    lines = [f"Measured by `make bench-scale` on {result['started']}, {result['machine']['cores']} cores "
             f"({result['machine']['cpu']}), load average {result['load_average_before'][0]:.1f} before and "
             f"{result['load_average_after'][0]:.1f} after. Each cell: wall seconds · images/s · peak memory "
             "(all the stage's processes).", "", head, "| --- " * (len(runs) + 2) + "|"]
    for stage in STAGES:
        slope = result["slopes"].get(stage)
        slope_text = f"{slope:.2f}" if slope is not None else "–"
        lines.append(f"| {stage} | " + " | ".join(_cell(r["stages"][stage]) for r in runs) + f" | {slope_text} |")
    targets = result.get("targets", {})
    met = [f"{name} {t['value']:,.1f} ({t['target']}: {'met' if t['met'] else '**missed**'})"
           for name, t in targets.items() if name not in ("at_images", "slopes")]
    missed = [s for s, t in targets.get("slopes", {}).items() if not t["met"]]
    if targets:
        lines += ["", f"At {targets['at_images']:,} images: " + "; ".join(met) + "; slopes ≤ 1.1: "
                  + ("all met." if not missed else f"**missed** by {', '.join(missed)}.")]
    return "\n".join(lines) + "\n"


def blocks(figures: Path) -> dict[str, str]:
    """The scale table, where the benchmark's figure exists."""
    return {"bench_scale": bench_scale_block(figures)} if (figures / BENCH_SCALE).is_file() else {}
