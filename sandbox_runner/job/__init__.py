"""One job's way through the worker: the runner, its ordered steps, the job dir, the container spec and ``_run.sh``.

The runner knows nothing of Celery; :mod:`sandbox_runner.worker` and the CLI hand it decoded jobs.
"""
