"""From fold models to a submission: TTA, voting, blending, the CV table, the submission file."""
