"""Deleting jobs and what they left behind: by request (``DELETE /v1/jobs/{id}``) and by age
(``prune``: hourly in one worker, or ``batchrender prune --older-than 30d``).

A job's images, their thumbnails and renditions, its reference image, its provenance entries and its record go
together. Every step is idempotent, so a delete interrupted half-way is finished by the next one.
The same sweep deletes files (``/v1/files``) older than the retention time (storage/files.py).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from jobs.errors import JobNotEnded, JobNotFound
from jobs.periodic import take_turn
from jobs.store import JobRecord, JobStore
from storage.base import Storage

log = logging.getLogger(__name__)
PRUNE_LOCK = "br:prune-lock"


def delete_job(store: JobStore, storage: Storage, provenance: Any, job_id: str, *,
               tombstone: bool = True) -> JobRecord:
    """Delete an ended job; ``JobNotEnded`` while it is queued or running (cancel it first)."""
    rec = store.get(job_id)
    if not rec.status.terminal:
        raise JobNotEnded(f"job {job_id} is {rec.status.value}; cancel it and delete it once it has ended")
    for image in rec.result.images if rec.result else []:
        for key in (image.key, image.thumbnail_key, *(r.key for r in image.renditions)):
            if key:
                storage.delete(key)
        for sha in (image.sha256, *(r.sha256 for r in image.renditions)):
            provenance.remove(sha)
    msg = store.message(job_id)
    for reference in (msg.input_key, msg.mask_key):
        if reference:
            storage.delete(reference)
    store.delete(job_id, tombstone=tombstone)
    return rec


def prune(store: JobStore, storage: Storage, provenance: Any, older_than_s: float, *,
          limit: int = 100_000) -> dict[str, int]:
    """Delete ended jobs, batches and files created more than ``older_than_s`` ago; jobs in flight stay."""
    from storage import files

    cutoff = time.time() - older_than_s
    counts = {"jobs": 0, "kept_in_flight": 0, "batches": 0, "files": 0}
    for job_id in store.created_before(cutoff, limit):
        try:
            delete_job(store, storage, provenance, job_id, tombstone=False)
            counts["jobs"] += 1
        except JobNotFound:
            store.delete(job_id, tombstone=False)  # the record expired already: drop its index entries
        except JobNotEnded:
            counts["kept_in_flight"] += 1
    for batch_id in store.batches_created_before(cutoff, limit):
        store.delete_batch(batch_id)
        counts["batches"] += 1
    counts["files"] = files.prune(store.r, storage, cutoff, limit)
    return counts


def maybe_prune(store: JobStore, storage: Storage, provenance: Any, retention_s: float,
                every_s: float = 3600.0) -> dict[str, int] | None:
    """``prune`` at ``retention_s`` if no process of the fleet ran it in the last ``every_s``."""
    if not take_turn(store.r, PRUNE_LOCK, every_s):
        return None
    counts = prune(store, storage, provenance, retention_s)
    if counts["jobs"] or counts["batches"] or counts["files"]:
        log.info("retention: pruned %d jobs, %d batches and %d files older than %ds", counts["jobs"],
                 counts["batches"], counts["files"], retention_s)
    return counts
