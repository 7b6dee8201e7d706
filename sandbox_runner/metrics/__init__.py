"""Operators' numbers: per-phase durations of each job (:mod:`.phases`, on every job's path, imports nothing
heavy), live in-process counts (:mod:`.live`), and the Prometheus view of them (:mod:`.prom`: ``/metrics`` on a
worker, a node_exporter textfile for run-job and pilots; imports prometheus_client only when switched on)."""
