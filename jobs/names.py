"""Task and queue names: the producer sends tasks by these names and never imports worker code."""
from __future__ import annotations

import hashlib
import re

RENDER_TASK = "batchrender.render"
WEBHOOK_TASK = "batchrender.webhook.deliver"

#: One render queue per model, so workers are routed to the models they hold.
RENDER_QUEUE_PREFIX = "render."
WEBHOOK_QUEUE = "webhooks"

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def render_queue(model: str) -> str:
    """The queue that carries render jobs for ``model``."""
    return RENDER_QUEUE_PREFIX + model


def is_valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


# Redis key layout, in one place so every process agrees.
KEY_PREFIX = "br:"


#: Jobs ended, fleet-wide: "status|model" -> count, kept by the one terminal transition in whichever
#: process ends the job (jobs/store.py); never reset. The API's /metrics reads it (jobs/metrics.py).
FINISHED_STATS_KEY = f"{KEY_PREFIX}stats:jobs_finished"


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def batch_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}"


def batch_jobs_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}:jobs"


def cancel_key(job_id: str) -> str:
    return f"{KEY_PREFIX}cancel:{job_id}"


def events_channel(job_id: str) -> str:
    return f"{KEY_PREFIX}events:{job_id}"


def tenant_key(tenant: str) -> str:
    return f"{KEY_PREFIX}tenant:{tenant}"


def queued_key(model: str) -> str:
    return f"{KEY_PREFIX}queued:{model}"


def running_key(model: str) -> str:
    """Zset: the model's running jobs (job key -> when it was last claimed, Redis time)."""
    return f"{KEY_PREFIX}running:{model}"


# Listing indexes. Job and batch listings are lexicographic sorted sets (all scores 0) whose
# members are "<created_at, fixed width>|<id>": one total order, newest last, so a cursor is a
# member and pages never skip or repeat an entry however many share a timestamp.
def tenant_jobs_key(tenant: str | None) -> str:
    return f"{KEY_PREFIX}idx:jobs:{tenant or '-'}"


def tenant_batches_key(tenant: str | None) -> str:
    return f"{KEY_PREFIX}idx:batches:{tenant or '-'}"


def batch_index_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}idx:batch:{batch_id}"


#: Every job by creation time (score), for retention: ``prune`` reads the oldest first.
ALL_JOBS_KEY = f"{KEY_PREFIX}idx:all-jobs"
ALL_BATCHES_KEY = f"{KEY_PREFIX}idx:all-batches"


def idem_key(tenant: str, key: str) -> str:
    """An ``Idempotency-Key`` of a tenant (hashed: keys are client text of any shape)."""
    return f"{KEY_PREFIX}idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"


def deleted_key(job_id: str) -> str:
    """A tombstone: the job was deleted (its tenant), so a later read says ``deleted``."""
    return f"{KEY_PREFIX}deleted:{job_id}"


def index_member(created_at: float, ident: str) -> str:
    return f"{created_at:017.6f}|{ident}"


def input_key(job_id: str) -> str:
    """Where a job's reference image is kept (private: never presigned or listed in results)."""
    return f"_inputs/{job_id}"


def reference_key(job_id: str, index: int) -> str:
    """Where a job's ``index``-th reference image (IP-Adapter) is kept, beside its other inputs."""
    return f"_inputs/{job_id}.ref{index}"


def mask_key(job_id: str) -> str:
    """Where a job's inpainting mask is kept, beside its reference."""
    return f"_inputs/{job_id}.mask"
