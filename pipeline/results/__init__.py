"""Decisions → what a person and the competition read: the CV table, the submission, the scores."""
