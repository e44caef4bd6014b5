"""When a batch should have finished: the ETA of the last of its jobs to render. Torch-free.

A batch is done when its last job is. Its jobs wait in their tenant's lane in order (a batch is
one tenant's, and a job later in the lane goes after the earlier ones), so the batch's ETA is the
ETA of its job that goes last, under the scheduler in use (jobs/fairshare.py: ``queued_place``,
the same figure ``GET /v1/jobs/{id}`` shows): the queued job with the highest lane score (fair),
or the latest in the model's queued index (FIFO, or jobs already dispatched), per model. When
none is queued any more, the running ones finish within the call rendering now and their own.

Cost: one pipelined ``HMGET`` per job of the batch (at most ``BATCHRENDER_MAX_BATCH_JOBS``), a
``ZSCORE``/``ZRANK`` per queued job, then one job placed per model.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any

from jobs.fairshare import NO_TENANT, Place, lane_key, queued_place, snapshot
from jobs.names import job_key, queued_key
from jobs.status import JobStatus


def batch_eta(r: Any, settings: Any, job_ids: list[str]) -> dict[str, Any]:
    """``eta_s``, ``estimated_completion`` (Unix time) and ``eta_basis`` of the batch made of
    ``job_ids``: when its last unfinished job should have finished. ``eta_s`` None with
    ``eta_basis`` saying why (nothing left, no measurement of a model, no live worker)."""
    with r.pipeline(transaction=False) as p:
        for j in job_ids:
            p.hmget(job_key(j), "status", "model", "tenant", "lane")
        rows = p.execute()
    queued: dict[str, list[tuple[str, str | None, str | None]]] = {}  # model -> (id, tenant, lane)
    running: dict[str, str] = {}  # model -> one running job
    for j, (status, model, tenant, lane) in zip(job_ids, rows):
        if status == JobStatus.QUEUED.value and model:
            queued.setdefault(model, []).append((j, tenant or None, lane))
        elif status == JobStatus.RUNNING.value and model:
            running.setdefault(model, j)
    if not queued and not running:
        return {"eta_s": None, "eta_basis": "no job of the batch is queued or running"}
    etas, bases = [], []
    for model in sorted(set(queued) | set(running)):
        if model in queued:
            last = _last_queued(r, model, queued[model])
            req = json.loads(r.hget(job_key(last[0]), "request") or "{}")
            got = queued_place(r, settings, last[0], model, last[1], req)
            basis = f"{len(queued[model])} queued, the last with {got.get('queue_position')} job(s) ahead"
        else:
            req = json.loads(r.hget(job_key(running[model]), "request") or "{}")
            snap = snapshot(r, model, settings.scheduler)
            got = snap.eta(req, Place(0, 0.0, snap.ready))
            basis = "rendering now"
        if got.get("eta_s") is None:
            return {"eta_s": None, "eta_basis": f"{model}: {got.get('eta_basis') or 'not placed'}"}
        etas.append(float(got["eta_s"]))
        bases.append(f"{model}: {basis}; {got['eta_basis']}")
    eta = max(etas)
    return {"eta_s": round(eta, 2), "estimated_completion": round(time.time() + eta, 2),
            "eta_basis": " | ".join(bases)}


def _last_queued(r: Any, model: str, jobs: list[tuple[str, str | None, str | None]]
                 ) -> tuple[str, str | None]:
    """The queued job of ``jobs`` (one model) that goes last: highest lane score among those in a
    lane, else the latest in the model's queued index."""
    in_lane = [x for x in jobs if x[2] == "1"]
    with r.pipeline(transaction=False) as p:
        if in_lane:
            for j, tenant, _ in in_lane:
                p.zscore(lane_key(model, tenant or NO_TENANT), j)
        else:
            for j, _, _ in jobs:
                p.zrank(queued_key(model), job_key(j))
        order = p.execute()
    pool = in_lane or jobs
    ranked = [(o, x) for o, x in zip(order, pool) if o is not None]
    if not ranked:
        return pool[-1][0], pool[-1][1]
    _, (j, tenant, _) = max(ranked, key=lambda t: (float(t[0]), t[1][0]))
    return j, tenant


def completion_at(eta: dict[str, Any]) -> int | None:
    """``estimated_completion`` as whole Unix seconds, rounded up (OpenAI's ``*_at`` fields are ints)."""
    at = eta.get("estimated_completion")
    return None if at is None else int(math.ceil(at))
