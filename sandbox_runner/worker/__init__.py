"""The Celery worker around the JobRunner: naming, leases, reconciliation, time limits, signals, worker events.

``sandbox_runner.celery_app`` is the thin Celery edge; everything here is plain Python it calls into.
"""
