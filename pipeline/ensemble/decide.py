"""Which steps the submission applies: each step scored nested against the chain without it, then kept by its setting.

A :class:`Choice` is one step of the plan with its setting: ``on`` applies it, ``off`` does not, ``auto``
applies it when its nested gain exceeds its noise (:func:`pipeline.ensemble.gain.exceeds_noise`). Every
step is scored whatever its setting, so the record shows what a forced or refused step would have earned.
Steps are decided in order, each against the chain of the steps already kept (forward selection): a
step's gain is what it adds to what comes before it.

A step that cannot be scored on the OOF rows' own mix (the prior-shift correction, fitted on the test
predictions) brings its own `evaluate`; every other step is scored by the paired bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.ensemble.chain import Nested, Rows
from pipeline.ensemble.gain import Gain, exceeds_noise, paired_gain

__all__ = ["SETTINGS", "Choice", "Decision", "scored", "decide"]

SETTINGS = ("auto", "on", "off")


@dataclass(frozen=True)
class Choice:
    """One step of the plan: `step` is what `on` (or a successful `auto`) adds; `baseline` what stands when it
    is not applied (None: nothing; e.g. every TTA view when no subset is chosen). `key` and `value` are the
    config setting as written, for the record; `fixed` says why the setting could not be honoured."""
    name: str
    setting: str
    step: object
    baseline: object | None = None
    key: str = ""
    value: object = None
    fixed: str = ""
    evaluate: Callable[[Nested, Nested, str], tuple[Gain, dict]] | None = None
    veto: Callable[[Gain, dict], str | None] | None = None   # auto: a reason not to apply it whatever its gain
    gain_kind: str = "nested"      # how the gain was measured, for the record's words


@dataclass
class Decision:
    """What happened to one step: applied or not and why, its nested gain and noise, what it fitted."""
    name: str
    setting: str
    key: str
    value: object
    applied: bool
    why: str
    gain: Gain
    fitted: dict                   # the step fitted on every OOF row (what the test set gets when applied)
    per_fold: dict                 # each fold's nested fit of it
    baseline: dict | None = None   # what stands instead (fitted on every row), when there is one
    extra: dict = field(default_factory=dict)
    oof: np.ndarray | None = field(default=None, repr=False)   # the step's nested OOF rows (for the CV table)
    metric: str = ""               # the metric of `gain` (signed so that higher is better)

    def as_dict(self) -> dict:
        return {"step": self.name, "setting": self.setting, "key": self.key, "value": self.value,
                "applied": self.applied, "why": self.why, "metric": self.metric, **self.gain.as_dict(),
                "fitted": self.fitted,
                "nested_per_fold": self.per_fold, "baseline": self.baseline,
                **{k: v for k, v in self.extra.items() if not k.startswith("_")}}   # _name: for the tables only


def scored(probs: np.ndarray) -> np.ndarray:
    """What a chain's output is scored as: (N, C), any axes before the rows averaged (the checkpoints while the
    views are chosen).

    >>> scored(np.ones((2, 3, 4))).shape
    (3, 4)
    """
    return probs.reshape(-1, *probs.shape[-2:]).mean(axis=0) if probs.ndim > 2 else probs


def _default_evaluate(base: Nested, candidate: Nested, metric: str) -> tuple[Gain, dict]:
    rows = base.rows
    return paired_gain(metric, rows.y, rows.folds, scored(candidate.oof()), scored(base.oof())), {}


def _why(choice: Choice, applied: bool, gain: Gain, margin: float) -> str:
    setting = f"{choice.key}: {choice.value}" if choice.key else choice.setting
    if choice.fixed:
        return choice.fixed
    if choice.setting == "on":
        return f"forced on ({setting})"
    if choice.setting == "off":
        return f"not applied ({setting})"
    kind = choice.gain_kind
    if applied:
        return f"auto: its {kind} gain exceeds {margin:g} x its noise"
    if gain.gain <= 0:
        return f"auto: its {kind} gain is not positive"
    return f"auto: its {kind} gain is within {margin:g} x its noise"


def decide(plan: list[Choice], rows: Rows, metric: str, margin: float = 2.0,
           start: Nested | None = None) -> tuple[list[Nested], list[Decision]]:
    """Decide `plan` in order on `rows` (after the chain `start`, when given): the chain after each choice (the
    last is the submission's, nested and fitted on every row) and one :class:`Decision` per choice."""
    chain, states, decisions = (start if start is not None else Nested(rows)), [], []
    for choice in plan:
        candidate = chain.add(choice.step)
        base = chain.add(choice.baseline) if choice.baseline is not None else chain
        gain, extra = (choice.evaluate or _default_evaluate)(base, candidate, metric)
        vetoed = choice.veto(gain, extra) if choice.setting == "auto" and choice.veto else None
        applied = choice.setting == "on" or (choice.setting == "auto" and not vetoed and exceeds_noise(gain, margin))
        why = f"auto: {vetoed}" if vetoed else _why(choice, applied, gain, margin)
        decisions.append(Decision(
            choice.name, choice.setting, choice.key, choice.value, applied, why, gain,
            candidate.fitted[-1].params(), candidate.per_fold(),
            base.fitted[-1].params() if choice.baseline is not None else None, extra, scored(candidate.oof()), metric))
        chain = candidate if applied else base
        states.append(chain)
    return states, decisions
