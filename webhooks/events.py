"""The event envelope, deterministic event ids and the per-request event filter.

Envelope (schema version 1), the body of every delivery::

    {"version": 1, "type": "job.succeeded", "timestamp": "2025-01-01T00:00:00Z", "data": {...}}

An event id is a hash of what the event is about, never of when it was sent: a job redelivered
after a worker crash emits the same id again, the store keeps one record, and receivers that
dedupe on ``webhook-id`` see the event once.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Iterable

from jobs.errors import InvalidRequest

SCHEMA_VERSION = 1

JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_BLOCKED = "job.blocked"
JOB_CANCELED = "job.canceled"
BATCH_COMPLETED = "batch.completed"
CAMPAIGN_COMPLETED = "campaign.completed"

EVENT_TYPES: tuple[str, ...] = (
    JOB_STARTED,
    JOB_PROGRESS,
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_BLOCKED,
    JOB_CANCELED,
    BATCH_COMPLETED,
    CAMPAIGN_COMPLETED,
)
#: Progress is opt-in: it is chatty and most receivers only want outcomes.
DEFAULT_EVENTS: frozenset[str] = frozenset(t for t in EVENT_TYPES if t != JOB_PROGRESS)


def parse_event_filter(values: Iterable[str] | None, field: str = "webhook_events_filter") -> frozenset[str]:
    """Validate a request's list of wanted event types; ``None`` means the default set.

    Raises ``InvalidRequest`` naming every unknown value and the allowed ones, rather than
    silently dropping a typo that would leave the user waiting for events that never come.
    """
    if values is None:
        return DEFAULT_EVENTS
    if isinstance(values, str):
        raise InvalidRequest(f"{field} must be a list of event types, not a string",
                             [{"field": field, "message": f"allowed values: {', '.join(EVENT_TYPES)}"}])
    wanted = [str(v) for v in values]
    if len(wanted) > len(EVENT_TYPES):
        msg = (f"{len(wanted)} entries; list at most {len(EVENT_TYPES)} event types, each once, of: "
               f"{', '.join(EVENT_TYPES)}")
        raise InvalidRequest(f"{field}: {msg}", [{"field": field, "message": msg}])
    unknown = [v for v in wanted if v not in EVENT_TYPES]
    if unknown:
        # Named, but never echoed whole: a refusal stays small whatever was sent.
        named = ", ".join(repr(v[:40]) + ("..." if len(v) > 40 else "") for v in unknown[:3])
        msg = f"unknown event type(s) {named}; allowed values: {', '.join(EVENT_TYPES)}"
        raise InvalidRequest(f"{field}: {msg}", [{"field": field, "message": msg}])
    if not wanted:
        raise InvalidRequest(f"{field} is empty; omit it for the default or list at least one of: "
                             f"{', '.join(EVENT_TYPES)}", [{"field": field, "message": "empty list"}])
    return frozenset(wanted)


def subject_of(event_type: str, job_id: str | None, batch_id: str | None, subject: str | None = None) -> str:
    """What an event is about: the batch for ``batch.*`` events, ``subject`` (a campaign's id and
    apply) for ``campaign.*`` events, else the job."""
    if event_type.startswith("campaign."):
        if not subject:
            raise ValueError(f"{event_type} needs a subject: the campaign id and its apply")
        return subject
    subject = batch_id if event_type.startswith("batch.") else job_id
    if not subject:
        raise ValueError(f"{event_type} needs a {'batch_id' if event_type.startswith('batch.') else 'job_id'}")
    return subject


def event_id(subject: str, event_type: str, step: int | None = None) -> str:
    """Deterministic id ``evt_<32 hex>`` from (job or batch id, or campaign and apply; event
    type[, progress step])."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; allowed: {', '.join(EVENT_TYPES)}")
    if event_type == JOB_PROGRESS and step is None:
        raise ValueError("job.progress events need a step, so each step gets its own id")
    material = f"v{SCHEMA_VERSION}\x1f{subject}\x1f{event_type}\x1f{'' if step is None else int(step)}"
    return "evt_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def envelope(event_type: str, data: dict[str, Any], timestamp: datetime | None = None) -> dict[str, Any]:
    """The versioned JSON body of an event."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; allowed: {', '.join(EVENT_TYPES)}")
    ts = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "version": SCHEMA_VERSION,
        "type": event_type,
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "data": data,
    }


# -- builders: the data each event type carries; the worker passes these to enqueue_event -------
def job_started(job_id: str, batch_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """``data`` for ``job.started``."""
    return {"job_id": job_id, "batch_id": batch_id, "status": "running", **extra}


def job_progress(job_id: str, step: int, total_steps: int, batch_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """``data`` for ``job.progress``; ``step`` is part of the event id."""
    return {"job_id": job_id, "batch_id": batch_id, "step": int(step), "total_steps": int(total_steps), **extra}


def job_finished(job_id: str, status: str, batch_id: str | None = None, *, outputs: list[Any] | None = None,
                 error: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """``data`` for ``job.succeeded|failed|blocked|canceled`` (``status`` is the job status)."""
    data: dict[str, Any] = {"job_id": job_id, "batch_id": batch_id, "status": status, **extra}
    if outputs is not None:
        data["outputs"] = outputs
    if error is not None:
        data["error"] = error
    return data


def batch_completed(batch_id: str, counts: dict[str, int], **extra: Any) -> dict[str, Any]:
    """``data`` for ``batch.completed``: counts per final job status."""
    return {"batch_id": batch_id, "counts": dict(counts), **extra}


def campaign_completed(campaign_id: str, name: str, apply: int, counts: dict[str, int],
                       progress: dict[str, Any] | None, results_url: str, **extra: Any) -> dict[str, Any]:
    """``data`` for ``campaign.completed``: sent once per apply, when its batch has ended (or at
    once when the apply had nothing to render). ``counts``: cells per state (reused ones as
    ``reused_<state>``); ``progress``: cells done of total, GPU-seconds spent against planned."""
    return {"campaign_id": campaign_id, "name": name, "apply": int(apply), "counts": dict(counts),
            "progress": progress, "results_url": results_url, **extra}
