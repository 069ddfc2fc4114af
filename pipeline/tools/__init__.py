"""Development and tuning tools: preflight checks, Optuna search, the benchmark."""
