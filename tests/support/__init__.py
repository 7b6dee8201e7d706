"""Test support, in one place: the machine (``srunner``, the venv, test images), the reference corpus, job
documents, Celery workers and brokers of a test's own, loopback file servers, tmpfs work roots, a podman harness.

Fixtures live in ``tests/conftest.py`` and in the two plugin modules it registers (``celery_fixtures``,
``data_fixtures``); everything else here is plain functions and classes the tests import.
"""
