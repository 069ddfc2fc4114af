"""The chain's steps, each ``fit(rows) -> fitted`` with ``fitted.transform(probs)`` (:mod:`pipeline.ensemble.chain`):

``selection``    which predictions: the TTA view subset, the checkpoints
``factors``      per-class factors fitted on OOF rows: logit adjustment, class bias
``prior_shift``  the per-class factor fitted on the test predictions: the label-shift correction
``combine``      several experiments into one: blend weights, the stacking meta-model
"""
