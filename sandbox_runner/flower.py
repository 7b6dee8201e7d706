"""The Celery app Flower needs to read our workers' events: ``celery -A sandbox_runner.flower flower``.

HySDS's workers -- and ours -- send events msgpack-serialized. A Celery event receiver accepts only the app's
``event_serializer`` and JSON, so ``celery flower`` with Celery's default app (JSON) refuses every event
("Refusing to deserialize untrusted content of type msgpack") and shows no task and no worker. This app has the
worker's serializers (:func:`sandbox_runner.celery_app.celery_config`: msgpack for tasks, results and events,
msgpack and JSON accepted) and its broker and result backend, from the same settings
(``SANDBOX_RUNNER_BROKER_URL``, ``SANDBOX_RUNNER_RESULT_BACKEND``), and none of the worker's tasks or bootstep
(the worker module is imported for its configuration; its signal handlers do nothing outside a worker).

    SANDBOX_RUNNER_BROKER_URL=amqp://... celery -A sandbox_runner.flower flower --port=5555 --basic-auth=u:p
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from sandbox_runner.settings import Settings, load_settings

#: the worker's options that mean nothing to a monitor (and would make Flower import our pool)
_WORKER_ONLY = ("worker_pool", "worker_hijack_root_logger", "worker_cancel_long_running_tasks_on_connection_loss")


def make_flower_app(settings: Settings) -> Celery:
    from sandbox_runner.celery_app import celery_config

    conf: dict[str, Any] = {k: v for k, v in celery_config(settings).items() if k not in _WORKER_ONLY}
    app = Celery("sandbox_runner-flower", set_as_current=False)
    app.conf.update(conf)
    return app


app = make_flower_app(load_settings())
