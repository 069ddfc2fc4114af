"""What a person looks at: EDA pages, the run report, plots."""
