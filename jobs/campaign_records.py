"""Where a campaign lives in Redis, and its progress: shared by the producer (which writes it) and
the webhook sender (which reports it in ``campaign.completed``), so neither reaches into the other.

``campaign:{id}`` (a hash: document, last plan, counters), ``campaign:{id}:cells`` (cell id →
JSON: row, key, sweep, content key, job, reused-from, refusal) and ``campaign:{id}:order`` (cell
ids in catalog order); ``idx:campaigns:{tenant}`` lists a tenant's campaigns.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from jobs.names import KEY_PREFIX, job_key

#: Cells read per Redis round trip.
CHUNK = 256
_ENDED = ("succeeded", "failed", "blocked", "canceled", "refused", "expired")


def campaign_id(tenant: str | None, name: str) -> str:
    return "cmp_" + hashlib.sha256(f"{tenant or '-'}\0{name}".encode()).hexdigest()[:24]


def campaign_key(cid: str) -> str:
    return f"{KEY_PREFIX}campaign:{cid}"


def tenant_campaigns_key(tenant: str | None) -> str:
    return f"{KEY_PREFIX}idx:campaigns:{tenant or '-'}"


def iter_cells(r, cid: str) -> Iterator[list[dict[str, Any]]]:
    """The campaign's cells in catalog order, a chunk at a time."""
    order = f"{campaign_key(cid)}:order"
    start = 0
    while True:
        ids = r.lrange(order, start, start + CHUNK - 1)
        if not ids:
            return
        raws = r.hmget(f"{campaign_key(cid)}:cells", ids)
        yield [json.loads(x) for x in raws if x]
        start += CHUNK


def progress(r, cid: str, planned_gpu_s: float | None) -> tuple[dict[str, Any], dict[str, int]]:
    """(progress, counts): cells done of total, GPU-seconds spent by the cells' own renders against
    ``planned_gpu_s``; counts per state, a reused cell's as ``reused_<state>``."""
    counts: dict[str, int] = {}
    done = total = 0
    spent = 0.0
    for cells in iter_cells(r, cid):
        jobs = [c["job_id"] for c in cells if c.get("job_id")]
        with r.pipeline(transaction=False) as p:
            for j in jobs:
                p.hmget(job_key(j), "status", "result")
            states = dict(zip(jobs, p.execute()))
        for c in cells:
            total += 1
            if c.get("refused"):
                state = "refused"
            else:
                status, result = states.get(c.get("job_id"), (None, None))
                state = status or "expired"
                if result and not c.get("reused_from"):
                    try:
                        spent += float(json.loads(result).get("timings", {}).get("render_s") or 0.0)
                    except ValueError:
                        pass
            key = f"reused_{state}" if c.get("reused_from") and state != "refused" else state
            counts[key] = counts.get(key, 0) + 1
            if state in _ENDED:
                done += 1
    return ({"cells_done": done, "cells_total": total, "gpu_seconds_spent": round(spent, 3),
             "gpu_seconds_planned": planned_gpu_s}, counts)
