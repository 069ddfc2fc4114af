"""How the folds' predictions become the submission: the competition, TTA, ensemble and pseudo-label sections."""

from typing import Literal

from pydantic import Field

from pipeline.config.base import COMPETITION_METRICS, SUBMISSION_FORMATS, Float, Section

__all__ = ["CompetitionConfig", "TTAConfig", "EnsembleConfig", "PseudoConfig"]


class CompetitionConfig(Section):
    """What the competition scores and the submission it wants: the metric decides every fitted choice."""
    metric: Literal[tuple(COMPETITION_METRICS)] = "f1_macro"
    # auto: read from the sample submission (one column per class -> class_probabilities; a target column
    # of fractions such as 0.5 -> probability; otherwise labels).
    submission: Literal[SUBMISSION_FORMATS] = "auto"
    positive_class: str | None = None   # probability format: the class whose probability is written


class TTAConfig(Section):
    views: list = ["identity", "hflip"]   # the candidate views: each is predicted; `select` keeps a subset
    # auto: the subset (all, identity alone, each leave-one-out) with the best nested OOF score when its gain
    # exceeds the noise; all: every view; [identity, ...]: exactly these
    select: Literal["auto", "all"] | list = "auto"
    merge: Literal["mean", "geometric_mean", "max", "logit_mean"] = "mean"
    batch_size: int = Field(256, ge=1)

    def _rules(self):
        chosen = self.select
        return [("select", not isinstance(chosen, list) or (chosen and all(isinstance(v, str) and v for v in chosen)
                                                              and len(set(chosen)) == len(chosen)),
                 "must be auto, all, or a non-empty list of distinct view names from tta.views")]


class EnsembleConfig(Section):
    voting: Literal["soft", "hard", "geometric", "rank"] = "soft"
    # [best] | [last] | [best, last] (averaged) | auto: both are predicted, the chain keeps best, last or both
    checkpoints: Literal["auto"] | list = ["best"]
    # Each step: auto (applied when its nested gain exceeds auto_margin x its noise), on, off (true/false: on/off)
    logit_adjust: Literal["auto", "on", "off"] = "auto"   # p / prior^tau, tau chosen on the OOF competition.metric
    class_bias: Literal["auto", "on", "off"] = "auto"     # p * exp(b), one b per class fitted out of fold
    tau_grid: list = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    # Re-weight to the test class mix estimated on the test predictions. auto: calibrated EM, applied when a shift
    # is found (p < prior_shift_alpha), its estimate is reliable and its simulated gain exceeds the noise;
    # em | bbse | calibrated_em: forced on with that estimator
    prior_shift: Literal["off", "auto", "em", "bbse", "calibrated_em"] = "auto"
    prior_shift_alpha: Float = Field(0.01, gt=0, lt=1)         # auto: a shift is found when the test's p < alpha
    # auto: a step is applied when its nested gain exceeds this many times its noise (pipeline.ensemble.gain)
    auto_margin: Float = Field(2.0, ge=0)

    def _rules(self):
        names = [str(n) for n in self.checkpoints] if isinstance(self.checkpoints, list) else ["auto"]
        return [("checkpoints", self.checkpoints == "auto" or (names and len(set(names)) == len(names)
                                                               and set(names) <= {"best", "last"}),
                 "must be auto or a non-empty list of distinct checkpoints from: best, last"),
                ("tau_grid", self.tau_grid and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                   and 0 <= t < float("inf") for t in self.tau_grid),
                 "must be a non-empty list of numbers >= 0")]


class PseudoConfig(Section):
    # A second round: confident test images of a finished experiment join every fold's training part.
    source: str | None = None          # the finished experiment whose voted test probabilities label them
    threshold: Float = Field(0.9, gt=0, le=1)   # keep images whose voted probability is at least this
    max_per_class: Float | None = Field(None, gt=0, le=1)   # per class at most this fraction of the test set

    def _rules(self):
        src = self.source
        return [("source", src is None or src.replace("-", "").replace("_", "").isalnum(),
                 "must name an experiment folder (letters, digits, '-' or '_')")]
