"""Triage: a failed job's dir published as a ``triaged_job`` dataset, so the reason it failed outlives the node."""
