"""Does `auto` earn its place? Every trained experiment given, ensembled as the plain vote, with everything on
`auto`, and with each step forced on; out-of-fold and held-back test scores → docs/figures/auto_steps.json.

    python -m pipeline.tools.auto_eval --config configs/demo.yaml --config configs/demo-odd.yaml \\
        --config data/fashion-lt/config.yaml --out docs/figures/auto_steps.json

Each experiment must be trained and predicted with ``ensemble.checkpoints: auto`` (best and last) and its
views predicted; the chain is run in memory (:func:`pipeline.results.ensemble_stage.run_chain`), so nothing in
the experiment's folder changes. The held-back labels (``data.test_labels``) are read only to score.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from pipeline.config import Config, load_config
from pipeline.ensemble.plan import Settings
from pipeline.ensemble.record import apply_submission
from pipeline.fileio import write_json_atomic
from pipeline.results.ensemble_stage import chain_settings, read_inputs, run_chain
from pipeline.results.score import true_labels, vote_metrics

__all__ = ["PLAIN", "variants", "evaluate", "main"]

PLAIN = dict(views="all", logit_adjust="off", class_bias="off", prior_shift="off")
AUTO = dict(views="auto", checkpoints="auto", logit_adjust="auto", class_bias="auto", prior_shift="auto")


def variants(base: Settings, auto_record: dict, predicted: tuple) -> dict[str, Settings]:
    """The plain vote (every view, the best checkpoint of the `predicted` ones), everything on auto, and each step
    forced on alone (a selection step forced to what auto's fit chose on every OOF row, applied or not)."""
    plain = replace(base, **PLAIN, checkpoints=["best"] if "best" in predicted else "listed")
    fitted = {s["step"]: s["fitted"] for s in auto_record["chain"]}
    return {"plain vote": plain, "auto": replace(base, **AUTO),
            "views forced": replace(plain, views=fitted["views"]["views"]),
            "checkpoints forced": replace(plain, checkpoints=fitted["checkpoints"]["checkpoints"]),
            "logit adjustment on": replace(plain, logit_adjust="on"),
            "class bias on": replace(plain, class_bias="on"),
            "prior shift em": replace(plain, prior_shift="em"),
            "prior shift calibrated_em": replace(plain, prior_shift="calibrated_em")}


def _outcome(record: dict, inputs, y, metric: str) -> dict:
    probs, _, _ = apply_submission(record["submission"], inputs.test_frames)
    steps = {s["step"]: s for s in record["chain"]}
    return {"oof": record["estimate"]["oof"], "test": vote_metrics(y, probs, record["voting"])[metric],
            "applied": [name for name, s in steps.items() if s["applied"]],
            "views": record["submission"]["views"], "checkpoints": record["submission"]["checkpoints"],
            "gains": {name: {"gain": s["gain"], "noise": s["noise"], "applied": s["applied"], "why": s["why"]}
                      for name, s in steps.items()}}


def evaluate(cfg: Config, log=print) -> dict:
    """One experiment: each variant's OOF estimate and held-back score, and auto's margin over the plain vote."""
    inputs = read_inputs(cfg, log=lambda *_: None)
    metric, voting = cfg.competition.metric, cfg.ensemble.voting
    y = true_labels(cfg, inputs.ids, inputs.classes)
    base = replace(chain_settings(cfg), checkpoints="auto")
    auto = run_chain(inputs, replace(base, **AUTO), metric, voting).record
    out = {}
    for name, settings in variants(base, auto, inputs.candidates.checkpoints).items():
        record = auto if name == "auto" else run_chain(inputs, settings, metric, voting).record
        out[name] = _outcome(record, inputs, y, metric)
        log(f"[auto-eval] {cfg.experiment}: {name}: OOF {out[name]['oof']:.4f}, test {out[name]['test']:.4f} "
            f"(applied: {', '.join(out[name]['applied']) or 'nothing'})")
    return {"config": str(cfg.exp_dir / "config.yaml"), "metric": metric, "test_rows": len(y),
            "oof_rows": len(inputs.y), "variants": out,
            "auto_minus_plain_test": out["auto"]["test"] - out["plain vote"]["test"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="a trained experiment's config (repeat)")
    parser.add_argument("--out", default="docs/figures/auto_steps.json")
    args = parser.parse_args(argv)
    found = {}
    for path in args.config:
        cfg = load_config(path)
        resolved = cfg.exp_dir / "config.yaml"     # what the experiment ran with (SET= overrides included)
        cfg = load_config(resolved) if resolved.is_file() else cfg
        found[cfg.experiment] = evaluate(cfg)
    write_json_atomic(Path(args.out), found)
    print(json.dumps({k: round(v["auto_minus_plain_test"], 4) for k, v in found.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
