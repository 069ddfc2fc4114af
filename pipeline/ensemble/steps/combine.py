"""Several experiments into one: the blend's weighted vote and the stack's meta-model, as steps of the chain.

Both take the members' probabilities (M members, ..., rows, classes) and return (..., rows, classes):
:class:`BlendStep` a vote with weights fitted on the rows it is given (or uniform), :class:`StackStep` a
logistic regression on the members' log-probabilities. Scored nested like every step
(:class:`pipeline.ensemble.chain.Nested`): each fold's rows combined by what the other folds fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.ensemble.voting import fit_weights, vote, vote_scores

__all__ = ["WEIGHT_KINDS", "BlendStep", "Blended", "StackStep", "Stacked", "C_GRID", "stack_features", "fit_meta",
           "chosen_C", "meta_proba"]

WEIGHT_KINDS = ("fitted", "uniform")
# A hard vote's tied classes go to the soft favourite (pipeline.ensemble.voting.hard_vote); its scores (the vote
# shares) carry that choice as a nudge this much above the tie, so that their argmax is the vote.
_NUDGE = 2e-9
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_PROB_FLOOR = 1e-6   # log(0) is -inf; a member's "impossible" costs at most log(1e-6) ≈ -13.8


def _scores(probs: np.ndarray, voting: str, weights: np.ndarray) -> np.ndarray:
    scores = vote_scores(probs, voting, weights)
    if voting == "hard":
        scores = scores.copy()
        scores[np.arange(len(scores)), vote(probs, voting, weights)] += _NUDGE
    return scores


@dataclass(frozen=True)
class Blended:
    """Fitted blend: the members' weights; the vote's (N, C) scores of (M, N, C) probabilities."""
    weights: np.ndarray
    voting: str

    def transform(self, probs: np.ndarray) -> np.ndarray:
        return _scores(np.asarray(probs, dtype=np.float64), self.voting, self.weights)

    def params(self) -> dict:
        return {"weights": self.weights.tolist(), "voting": self.voting}


@dataclass(frozen=True)
class BlendStep:
    """A `voting` vote of the members, weights ``fitted`` by `objective` (:func:`pipeline.ensemble.voting.fit_weights`)
    on the rows it is given, or ``uniform``."""
    voting: str = "soft"
    weights: str = "fitted"
    objective: str = "logloss"
    metric: str = "f1_macro"
    name: str = "blend"

    def fit(self, rows) -> Blended:
        n_members = rows.probs.shape[0]
        if self.weights == "uniform":
            return Blended(np.full(n_members, 1.0 / n_members), self.voting)
        return Blended(fit_weights(rows.probs, rows.y, self.objective, self.metric), self.voting)


@dataclass(frozen=True)
class Stacked:
    """Fitted stack: a scikit-learn meta-model; (M, N, C) probabilities → its (N, C) probabilities."""
    model: object
    n_classes: int

    def transform(self, probs: np.ndarray) -> np.ndarray:
        return meta_proba(self.model, stack_features(probs), self.n_classes)

    def params(self) -> dict:
        return {"C": chosen_C(self.model)}


@dataclass(frozen=True)
class StackStep:
    """A multinomial logistic regression on the members' log-probabilities, its inverse strength `C` a number or
    ``auto`` (chosen by leave-one-fold-out log-loss within the rows it is fitted on)."""
    C: object = "auto"
    name: str = "stack"

    def fit(self, rows) -> Stacked:
        return Stacked(fit_meta(stack_features(rows.probs), rows.y, self.C, rows.folds), rows.probs.shape[-1])



# ---- the stack's meta-model ------------------------------------------------------------------------------

def stack_features(probs) -> np.ndarray:
    """(M members, N rows, C classes) probabilities → (N, M·C) log-probabilities, floored at 1e-6.

    >>> stack_features([[[0.5, 0.5]], [[1.0, 0.0]]]).round(2)      # member 0's two columns, then member 1's
    array([[ -0.69,  -0.69,   0.  , -13.82]])
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"member probabilities must be (members, rows, classes), got shape {p.shape}")
    return np.log(np.clip(p, _PROB_FLOOR, 1.0)).transpose(1, 0, 2).reshape(p.shape[1], -1)


def fit_meta(features: np.ndarray, y: np.ndarray, C: float | str = "auto", folds: np.ndarray | None = None):
    """The meta-model: scikit-learn's multinomial logistic regression (lbfgs, L2 with strength 1/C).

    ``C="auto"`` chooses C from :data:`C_GRID` by the log-loss of leave-one-fold-out fits over the
    given rows' own `folds` (``LogisticRegressionCV``), then refits on all of them: the other folds'
    OOF rows come from other fold models, so C is chosen for predicting a model it was not fitted on.
    """
    import warnings

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    if len(set(y.tolist())) < 2:
        raise ValueError("stacking needs out-of-fold rows of two or more classes to fit on")
    if C == "auto":
        if folds is None or len(np.unique(folds)) < 2:
            raise ValueError("--C auto chooses C by cross-validation over the training rows' folds, which needs "
                             "3 or more folds (folds.n_splits) for a nested score; pass a number, e.g. --C 0.1")
        with warnings.catch_warnings():   # scikit-learn 1.9 announces new defaults that do not change this fit
            warnings.simplefilter("ignore", FutureWarning)
            return LogisticRegressionCV(Cs=list(C_GRID), cv=PredefinedSplit(folds), scoring="neg_log_loss",
                                        max_iter=2000).fit(features, y)
    if not isinstance(C, (int, float)) or not C > 0:
        raise ValueError(f"--C must be a positive number or 'auto', got {C!r}")
    return LogisticRegression(C=C, max_iter=2000).fit(features, y)


def chosen_C(model) -> float:
    """The C the meta-model was fitted with (chosen by cross-validation for ``C="auto"``)."""
    return float(np.ravel(model.C_)[0]) if hasattr(model, "C_") else float(model.C)   # C_: array or float


def meta_proba(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities of `model`; a class absent from its training rows gets 0."""
    out = np.zeros((len(features), n_classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out
