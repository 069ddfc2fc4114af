"""Training one fold: the loop, models, losses, tracking, and running folds in parallel."""
