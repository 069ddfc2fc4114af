"""Reading the data: tables, image checks, folds, sampling, transforms and the decode cache."""
