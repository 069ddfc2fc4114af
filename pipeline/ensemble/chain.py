"""The post-processing chain: every step fitted on out-of-fold rows, scored nested, applied to the test set.

The model is scikit-learn's ``Pipeline`` with ``cross_val_predict``. Every step has one shape:
``step.fit(rows) -> fitted`` learns from labelled out-of-fold (OOF) rows, ``fitted.transform(probs)``
applies what it learned to any probabilities whose last two axes are (rows, classes): the OOF rows, or
every fold's test rows at once. A chain is a list of steps, each fitted on the rows as the steps before it
left them.

:class:`Nested` is the one honest estimate of a chain, the only nested loop in the package: each fold's
rows are transformed by the chain fitted on the *other* folds' rows, so no row helps choose what is
then scored on it; the chain fitted on every row is what the test set gets. Steps are added one at a
time (:meth:`Nested.add`), so a choice can be scored with and without the next step at the cost of
fitting that step alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from pipeline.ensemble.nested import apply_per_fold, fit_per_fold
from pipeline.ensemble.steps.factors import apply_log_factor

__all__ = ["Rows", "Fitted", "Step", "Nested", "nested_chain"]


@dataclass(frozen=True)
class Rows:
    """What a step is fitted on: the OOF probabilities (..., N, C), their labels and folds, and (for a step
    fitted on the test predictions, such as the prior shift) the test probabilities (F, ..., T, C), both as
    the steps before it left them. `log_factor` is the sum of the per-class factors the steps so far applied
    (None: none), which a step that needs the probabilities as the models gave them divides out."""
    probs: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    test: np.ndarray | None = None
    log_factor: np.ndarray | None = None

    def take(self, mask: np.ndarray) -> "Rows":
        """The rows of `mask` (a boolean mask over the N rows); the test rows are kept whole."""
        return replace(self, probs=self.probs[..., mask, :], y=self.y[mask], folds=self.folds[mask])


class Fitted(Protocol):
    """A fitted step: a transform of probabilities (any leading shape; rows and classes last) and its record."""

    def transform(self, probs: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict: ...


class Step(Protocol):
    """A step of the chain: a name, and a fit on rows that returns the fitted transform."""
    name: str

    def fit(self, rows: Rows) -> Fitted: ...


def _advance(fitted: Fitted, rows: Rows) -> Rows:
    test = None if rows.test is None else fitted.transform(rows.test)
    log_factor = rows.log_factor
    if getattr(fitted, "log_factor", None) is not None:   # a per-class factor: remember it
        log_factor = np.asarray(fitted.log_factor) + (0.0 if log_factor is None else log_factor)
    return replace(rows, probs=fitted.transform(rows.probs), test=test, log_factor=log_factor)


@dataclass(frozen=True)
class _Fold:
    """One fold's state: the chain fitted on the other folds' rows, those rows as it left them, and the
    fold's own rows transformed by it."""
    fitted: tuple
    rest: Rows
    held: np.ndarray


class Nested:
    """A chain fitted once per fold on the other folds' rows (its :meth:`oof` rows are honest) and once on
    every row (:attr:`fitted`, :meth:`test`: what the submission gets).

    >>> from pipeline.ensemble.steps.factors import ClassBiasStep
    >>> y = np.array([0] * 6 + [1] * 2 + [0] * 6 + [1] * 2)
    >>> p = np.array([[0.9, 0.1]] * 6 + [[0.6, 0.4]] * 2 + [[0.9, 0.1]] * 6 + [[0.6, 0.4]] * 2)
    >>> chain = Nested(Rows(p, y, np.repeat([0, 1], 8))).add(ClassBiasStep("f1_macro"))
    >>> chain.oof().argmax(axis=1).tolist() == y.tolist(), len(chain.fitted)
    (True, 1)
    """

    def __init__(self, rows: Rows, folds: dict | None = None, fitted: tuple = (), full: Rows | None = None):
        self.rows = rows                                    # every OOF row as it entered the chain
        self.folds = folds if folds is not None else fit_per_fold(
            rows.folds, lambda rest: _Fold((), replace(rows.take(rest), test=None), rows.probs[..., ~rest, :]))
        self.fitted = fitted                                # the chain fitted on every row
        self.full = full if full is not None else rows      # every row (and the test rows) as it left them

    def add(self, step: Step) -> "Nested":
        """This chain followed by `step`, fitted on every fold's other rows and on every row."""
        folds = {k: self._add_to_fold(f, step) for k, f in self.folds.items()}
        one = step.fit(self.full)
        return Nested(self.rows, folds, (*self.fitted, one), _advance(one, self.full))

    @staticmethod
    def _add_to_fold(fold: _Fold, step: Step) -> _Fold:
        one = step.fit(fold.rest)
        return _Fold((*fold.fitted, one), _advance(one, fold.rest), one.transform(fold.held))

    def oof(self, factors: bool = True) -> np.ndarray:
        """Every OOF row transformed by the chain fitted on the other folds, in row order; without `factors`,
        with the per-class factors of each fold's chain divided out (the probabilities as the models gave them,
        after the steps that choose them)."""
        def held(fold: _Fold, _) -> np.ndarray:
            if factors or fold.rest.log_factor is None:
                return fold.held
            return apply_log_factor(fold.held, -np.asarray(fold.rest.log_factor))
        return apply_per_fold(self.rows.folds, self.folds, held, axis=-2)

    def test(self) -> np.ndarray | None:
        """The test rows transformed by the chain fitted on every OOF row."""
        return self.full.test

    def per_fold(self, index: int = -1) -> dict:
        """``{fold: params}`` of step `index` as each fold's chain fitted it (the nested choices)."""
        return {k: f.fitted[index].params() for k, f in self.folds.items()}


def nested_chain(steps: list[Step], rows: Rows) -> np.ndarray:
    """The OOF rows of `steps` scored honestly (cross_val_predict): each fold through the chain fitted on the
    other folds' rows."""
    chain = Nested(rows)
    for step in steps:
        chain = chain.add(step)
    return chain.oof()
