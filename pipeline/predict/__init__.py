"""Fold models → probabilities: TTA views, each fold's predict stage, the probability files, seeds merged."""
