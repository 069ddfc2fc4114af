"""The offline inference bundle: a finished experiment as a folder to upload where the test images are hidden.

`build_bundle` writes it (weights, decisions, a standalone predict.py), `check_bundle` runs it as the
competition would and compares its submission with the ensemble's, `select_within_budget` keeps the folds
and views that fit a time limit. predict_template.py is the predict.py every bundle carries.
"""

from pipeline.bundle.budget import BudgetError, Selection, Timing, select_within_budget
from pipeline.bundle.build import build_bundle
from pipeline.bundle.check import check_bundle
from pipeline.bundle.decisions import decisions_from_ensemble
from pipeline.bundle.sources import BundleRefused

__all__ = ["build_bundle", "check_bundle", "decisions_from_ensemble", "select_within_budget", "Timing",
           "Selection", "BudgetError", "BundleRefused"]
