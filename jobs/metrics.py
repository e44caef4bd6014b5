"""Prometheus metrics: every name in one place, recorded where the thing happens.

Counters and histograms live in the process that records them (prometheus-client). Processes
that do not serve HTTP themselves (render and webhook workers started by ``batchrender worker``)
run in prometheus-client's multiprocess mode: ``batchrender worker --metrics-port`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before its children start, and serves their
sum. The HTTP API serves ``/metrics`` from its own process. Gauges that describe shared state
(queue depth) are read from Redis when scraped, so any one target reports them correctly.

| metric | labels | where |
|---|---|---|
| ``batchrender_jobs_submitted_total`` | model, tenant | producer (API, CLI, client) |
| ``batchrender_jobs_finished_total`` | status, model | whichever process ends the job |
| ``batchrender_fleet_jobs_finished_total`` | status, model | read from Redis at scrape (API): every process's |
| ``batchrender_job_duration_seconds`` | phase: queue_wait, render, postprocess | render worker |
| ``batchrender_queue_depth`` | queue | read from Redis at scrape (API and worker targets) |
| ``batchrender_render_busy_seconds_total`` | | render worker: seconds inside pipeline calls |
| ``batchrender_pipeline_calls_total``, ``batchrender_pipeline_rows_total`` | kind: image, padding | render worker: calls and the padding they wasted |
| ``batchrender_gpu_busy_ratio`` | | worker target: busy seconds / wall seconds / render processes, between scrapes |
| ``batchrender_webhook_deliveries_total`` | outcome: delivered, retry, gone, dead | webhook worker |
| ``batchrender_moderation_decisions_total`` | action, category | wherever moderation runs |
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "JOBS_SUBMITTED", "JOBS_FINISHED", "JOB_DURATION", "RENDER_BUSY", "RENDER_GAP", "PIPELINE_CALLS", "PIPELINE_ROWS",
           "WEBHOOK_DELIVERIES", "MODERATION_DECISIONS", "QueueDepth", "FinishedJobs", "BusyRatio", "exposition",
           "multiprocess_registry", "combined", "queue_registry", "fleet_registry", "job_submitted", "job_finished", "job_timed", "moderation_decided"]

#: Renders take seconds to minutes; queue waits up to hours.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

JOBS_SUBMITTED = Counter("batchrender_jobs_submitted", "Jobs queued, by model and tenant.", ["model", "tenant"])
JOBS_FINISHED = Counter("batchrender_jobs_finished", "Jobs that reached a terminal status.", ["status", "model"])
JOB_DURATION = Histogram("batchrender_job_duration_seconds",
                         "Seconds per job in each phase (queue_wait: submitted to claimed; render: its share "
                         "of the pipeline call; postprocess: moderation, encoding, signing, upload).",
                         ["phase"], buckets=DURATION_BUCKETS)
RENDER_BUSY = Counter("batchrender_render_busy_seconds", "Seconds render processes spent inside pipeline calls.")
RENDER_GAP = Counter("batchrender_render_gap_seconds",
                     "Seconds between one pipeline call's end and the next call's start within a render session "
                     "(the GPU waiting for the session's own work; near 0 when the next call is prepared in time).")
PIPELINE_CALLS = Counter("batchrender_pipeline_calls", "Pipeline calls made by render processes.")
PIPELINE_ROWS = Counter("batchrender_pipeline_rows", "Rows rendered by pipeline calls: kind=image (a job's image) or "
                        "padding (a throw-away row that keeps the call at its fixed size).", ["kind"])
MESSAGES_DROPPED = Counter("batchrender_render_messages_dropped", "Render messages a worker refused (forged, "
                           "or replayed: the job was deleted, the message expired or belongs to another record), "
                           "by reason.", ["reason"])
WEBHOOK_DELIVERIES = Counter("batchrender_webhook_deliveries", "Webhook delivery attempts by outcome.", ["outcome"])
MODERATION_DECISIONS = Counter("batchrender_moderation_decisions",
                               "Moderation decisions (prompts, reference images, outputs) by action and category "
                               "(category 'none' when allowed).", ["action", "category"])


def job_submitted(model: str, tenant: str | None) -> None:
    JOBS_SUBMITTED.labels(model=model, tenant=tenant or "-").inc()


def job_finished(status: str, model: str) -> None:
    JOBS_FINISHED.labels(status=status, model=model).inc()


def job_timed(*, queue_wait_s: float | None = None, render_s: float | None = None,
              postprocess_s: float | None = None) -> None:
    """The phases of a job that was rendered and delivered."""
    for phase, value in (("queue_wait", queue_wait_s), ("render", render_s), ("postprocess", postprocess_s)):
        if value is not None:
            JOB_DURATION.labels(phase=phase).observe(max(0.0, value))


def moderation_decided(action: str, categories: Iterable[str]) -> None:
    for category in list(categories) or ["none"]:
        MODERATION_DECISIONS.labels(action=action, category=category).inc()


class QueueDepth(Collector):
    """``batchrender_queue_depth{queue}``: messages waiting in each queue, read from Redis at scrape.

    ``queues`` is called at each scrape (the registered models may change). Messages a worker has
    taken but not yet acknowledged are not waiting, so they are not counted.
    """

    def __init__(self, redis_client, queues: Callable[[], list[str]]) -> None:
        self.redis = redis_client
        self.queues = queues

    def collect(self):
        g = GaugeMetricFamily("batchrender_queue_depth", "Messages waiting in each queue.", labels=["queue"])
        try:
            names = self.queues()
            with self.redis.pipeline(transaction=False) as p:
                for q in names:
                    p.llen(q)
                depths = p.execute()
        except Exception:  # noqa: BLE001 - Redis down: no sample, rather than a failed scrape
            return [g]
        for q, n in zip(names, depths):
            g.add_metric([q], int(n))
        return [g]


class FinishedJobs(Collector):
    """``batchrender_fleet_jobs_finished_total{status,model}``: the jobs every process of the fleet
    ended (workers, APIs, CLIs), from the counts the terminal transition keeps in Redis
    (``jobs.names.FINISHED_STATS_KEY``), read at scrape. ``batchrender_jobs_finished_total`` counts
    only the scraped process's own: on the API that is blocked prompts and cancels, not renders.
    Never reset by a restart; the same on every target that serves it."""

    def __init__(self, redis_client) -> None:
        self.redis = redis_client

    def collect(self):
        from jobs.names import FINISHED_STATS_KEY

        c = CounterMetricFamily("batchrender_fleet_jobs_finished",
                                "Jobs that reached a terminal status in any process of the fleet (from Redis).",
                                labels=["status", "model"])
        try:
            counts = self.redis.hgetall(FINISHED_STATS_KEY)
        except Exception:  # noqa: BLE001 - Redis down: no sample, rather than a failed scrape
            return [c]
        for field, n in sorted(counts.items()):
            field = field.decode() if isinstance(field, bytes) else field
            status, _, model = field.partition("|")
            c.add_metric([status, model or "-"], int(n))
        return [c]


def fleet_registry(redis_client) -> CollectorRegistry:
    """A registry holding ``FinishedJobs`` (the API's /metrics)."""
    out = CollectorRegistry(auto_describe=True)
    out.register(FinishedJobs(redis_client))
    return out


class BusyRatio(Collector):
    """``batchrender_gpu_busy_ratio``: the share of wall time render processes spent inside
    pipeline calls since the previous scrape (since start for the first one), from the summed
    ``batchrender_render_busy_seconds_total`` of ``source``."""

    def __init__(self, source: CollectorRegistry, processes: int, clock=time.monotonic) -> None:
        self.source = source
        self.processes = max(1, processes)
        self.clock = clock
        self._lock = threading.Lock()
        self._last = (clock(), self._busy())

    def _busy(self) -> float:
        return sum(s.value for m in self.source.collect() if m.name == "batchrender_render_busy_seconds"
                   for s in m.samples if s.name == "batchrender_render_busy_seconds_total")

    def collect(self):
        with self._lock:
            now, busy = self.clock(), self._busy()
            then, before = self._last
            self._last = (now, busy)
        wall = max(1e-9, (now - then) * self.processes)
        g = GaugeMetricFamily("batchrender_gpu_busy_ratio",
                              "Share of wall time render processes spent in pipeline calls since the last scrape.")
        g.add_metric([], min(1.0, max(0.0, (busy - before) / wall)))
        return [g]


def queue_registry(redis_client, registry) -> CollectorRegistry:
    """A registry holding ``QueueDepth`` for every registered model's queue and the webhook queue."""
    from jobs.names import WEBHOOK_QUEUE, render_queue

    out = CollectorRegistry(auto_describe=True)
    out.register(QueueDepth(redis_client, lambda: sorted(render_queue(m) for m in registry.all()) + [WEBHOOK_QUEUE]))
    return out


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def combined(*registries: CollectorRegistry) -> CollectorRegistry:
    """One registry serving the metrics of several."""
    out = CollectorRegistry(auto_describe=True)
    for r in registries:
        out.register(_Forward(r))
    return out


def multiprocess_registry() -> CollectorRegistry:
    """The sum of every process writing under ``PROMETHEUS_MULTIPROC_DIR``."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
