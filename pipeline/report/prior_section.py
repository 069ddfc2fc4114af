"""The report's prior-shift section: the training, effective and estimated test class priors as bars."""

from __future__ import annotations

import json

from pipeline.config import Config
from pipeline.report.plots import bar_chart, data_uri, esc, new_figure, png_bytes

__all__ = ["prior_shift_section"]


def prior_shift_figure(record: dict, classes: list):
    fig = new_figure(max(6, 0.7 * len(classes) + 2), 4)
    bars = {"training labels": record["training_labels"], "effective (model)": record["model_prior"],
            "test, EM estimate": record["estimates"]["em"], "test, BBSE estimate": record["estimates"]["bbse"]}
    if "calibrated_em" in record["estimates"]:
        bars["test, calibrated EM estimate"] = record["estimates"]["calibrated_em"]
    bar_chart(fig.subplots(), [str(c) for c in classes], bars,
              ylabel="share of the class", title="Class priors: training, what the models learned, test (estimated)")
    return fig


def prior_shift_section(cfg: Config, classes: list) -> str:
    """The section's HTML, or "" for a run ensembled before the prior shift was recorded."""
    path = cfg.exp_dir / "ensemble.json"
    record = json.loads(path.read_text()).get("prior_shift") if path.is_file() else None
    if not record:
        return ""
    names = {"em": "EM", "bbse": "BBSE", "calibrated_em": "calibrated EM"}
    decision = (f"the {names.get(record['method'], record['method'])} correction was applied to the submission"
                if record["applied"] else "the submission was left unchanged")
    why = f" ({record['why']})" if record.get("why") else ""
    caption = (f"G-test of out-of-fold against test predicted classes: G={record['g_statistic']:.1f}, "
               f"p={record['p_value']:.2g} (alpha {record['alpha']:g}); ensemble.prior_shift={record['mode']}: "
               f"{decision}{why}. The test priors are estimated from the test predictions alone.")
    img = data_uri(png_bytes(prior_shift_figure(record, classes)))
    return (f'<h2 id="prior">Class priors and prior shift</h2><figure><img src="{img}" alt="class priors">'
            f'<figcaption class="note">{esc(caption)}</figcaption></figure>')
