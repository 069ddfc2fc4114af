"""Probabilities → fitted decisions: voting, the nested fits, and the chain of post-processing steps."""
