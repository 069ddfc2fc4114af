"""K-fold ensemble and test-time-augmentation pipeline for image-classification competitions.

Stages (each reads files and writes files): folds → train → predict (TTA) → ensemble.
Run them with `make folds train ensemble` or `python -m pipeline <stage>`.
"""

__version__ = "0.1.0"
