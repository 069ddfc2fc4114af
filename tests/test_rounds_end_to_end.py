"""A first round, then a pseudo-label round with two seeds on its folds: the real stages, tiny models.

The stages Make runs, in this process (the Make rules themselves are the ones of the plain run:
`make -n` shows them); 2 folds, 1 epoch of timm's test_resnet on a slice of the demo.
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline import stages
from pipeline.config import load_config, seed_config
from pipeline.fileio import read_table
from pipeline.train.parallel import fold_is_done

pytestmark = pytest.mark.slow


def _quiet(*_args, **_kwargs):
    return None


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    from tests.conftest import tiny_config_dict
    from pipeline.competitions.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("rounds")
    make_demo_dataset(root / "data", seed=0, scale=0.05, test_per_class=3)
    base = tiny_config_dict(root, root / "data")
    base["folds"]["n_splits"] = 2
    base["report"] = {"progress": "off"}
    first = load_config(None, base)
    stages.resolve(first)
    stages.folds(first, log=_quiet)
    stages.train(first)
    stages.predict(first, log=_quiet)
    stages.ensemble(first, log=_quiet)
    stages.score(first, log=_quiet)
    second = load_config(None, {**base, "experiment": "round2", "seeds": [0, 1],
                                "folds": {**base["folds"], "name": "demo"},
                                "pseudo": {"source": "demo", "threshold": 0.05}})
    stages.resolve(second)
    stages.pseudo(second, log=_quiet)
    stages.train(second)
    stages.predict(second, log=_quiet)
    stages.ensemble(second, log=_quiet)
    stages.score(second, log=_quiet)
    return first, second


def test_the_pseudo_labelled_images_never_reach_a_seed_s_validation_rows(rounds):
    first, second = rounds
    listed = read_table(second.exp_dir / "pseudo_labels.csv")
    assert len(listed) > 0
    folds = read_table(first.folds_file)
    for s in second.seeds:
        for k in range(2):
            oof = read_table(seed_config(second, s).fold_dir(k) / "oof.csv")
            assert sorted(oof["row"]) == folds.index[folds["fold"] == k].tolist()


def test_the_cv_table_shows_each_seed_alone_and_the_first_round(rounds):
    first, second = rounds
    cv = read_table(second.exp_dir / "cv.csv").set_index("part")
    source = read_table(first.exp_dir / "cv.csv").set_index("part")
    assert {"seed 0 alone: out-of-fold, TTA", "seed 1 alone: out-of-fold, TTA"} <= set(cv.index)
    assert cv.loc["round 1 (demo): out-of-fold, TTA (mean)", "f1_macro"] == source.loc["out-of-fold, TTA (mean)",
                                                                                       "f1_macro"]


def test_make_score_scores_each_seed_and_the_first_round_s_submission(rounds):
    first, second = rounds
    score = pd.read_csv(second.exp_dir / "score.csv").set_index("model")
    source = pd.read_csv(first.exp_dir / "score.csv").set_index("model")
    assert {"seed 0 alone, soft vote", "seed 1 alone, soft vote"} <= set(score.index)
    assert score.loc["round 1 (demo): submission.csv", "accuracy"] == source.loc["submission.csv", "accuracy"]


def test_another_pseudo_label_list_makes_the_folds_stale(rounds):
    _, second = rounds
    one = seed_config(second, 0)
    assert fold_is_done(one, 0)
    path = second.exp_dir / "pseudo_labels.csv"
    text = path.read_text()
    try:
        path.write_text("\n".join(text.splitlines()[:-1]) + "\n")    # one image fewer
        assert not fold_is_done(one, 0)
    finally:
        path.write_text(text)
