"""``sandbox-runner workers``: worker states read from worker documents."""

from __future__ import annotations

from sandbox_runner.cli.workers import worker_states


def test_worker_states() -> None:
    def doc(host: str, status: str, ts: float) -> dict:
        return {"resource": "worker", "celery_hostname": host, "status": status,
                "event": {"timestamp": ts, "freq": 2.0, "active": 1, "processed": 3}}

    now = 1000.0
    docs = [doc("a", "worker-online", 990), doc("a", "worker-heartbeat", 998), doc("b", "worker-heartbeat", 995),
            doc("c", "worker-heartbeat", 999), doc("c", "worker-offline", 999.5), {"resource": "job"}]
    states = {r["hostname"]: (r["state"], r["reason"]) for r in worker_states(docs, now=now)}
    assert states == {"a": ("online", "worker-heartbeat"), "b": ("offline", "missed beats"),
                      "c": ("offline", "worker-offline")}
