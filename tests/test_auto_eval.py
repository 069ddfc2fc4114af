"""The auto-versus-plain comparison (pipeline.tools.auto_eval) on synthetic probability files with held-back labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.results.ensemble_stage import ensemble
from pipeline.results.score import score
from pipeline.tools.auto_eval import evaluate
from tests.test_prior_shift import CLASSES, _experiment

QUIET = dict(log=lambda *_: None)


def test_every_variant_is_scored_and_the_plain_vote_is_make_scores_soft_vote(tmp_path):
    cfg, test_y = _experiment(tmp_path, [0.05, 0.2, 0.75])
    pd.DataFrame({"id": [f"t{i:04d}" for i in range(len(test_y))], "label": np.array(CLASSES)[test_y]}).to_csv(
        cfg.data.test_labels, index=False)
    found = evaluate(cfg, **QUIET)
    variants = found["variants"]
    assert set(variants) == {"plain vote", "auto", "views forced", "checkpoints forced", "logit adjustment on",
                             "class bias on", "prior shift em", "prior shift calibrated_em"}
    assert variants["plain vote"]["applied"] == [] and "prior_shift" in variants["prior shift em"]["applied"]
    assert "logit_adjust" in variants["logit adjustment on"]["applied"]
    cfg.ensemble.prior_shift = "off"             # the experiment's own plain vote, through the stage and make score
    ensemble(cfg, **QUIET)
    table = score(cfg, **QUIET).set_index("model")
    assert variants["plain vote"]["test"] == table.loc["soft vote (submission)", "f1_macro"]
    assert found["auto_minus_plain_test"] == variants["auto"]["test"] - variants["plain vote"]["test"]
    assert not list(cfg.exp_dir.glob("auto*"))   # the evaluation wrote nothing into the experiment
