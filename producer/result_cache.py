"""``cache: "reuse"`` for plain jobs: answer with an earlier job of the same content instead of
rendering again.

A request's content key (``jobs.campaign.content_key``: the model's registry entry, prompt, every
parameter that changes pixels, seed, shape, renditions) is looked up in the tenant's result cache,
the one campaigns fill too (``cache_key``, ``REUSABLE``: one cache, one rule). A job of the same tenant that succeeded,
or is still queued or running, is the answer; anything else (failed, blocked, canceled, expired,
another tenant's) is not, and the request renders and becomes the cached job for its key, for as
long as job records are kept. Never by default: only a request that asks for it, with a seed.

Best effort under concurrency: two identical requests arriving together may both render (the
later one is then the cached job). An ``image`` or reference given as a URL is keyed by the URL,
not by what it points at; a data URI is keyed by its bytes.
"""
from __future__ import annotations

from jobs.campaign import content_key
from jobs.names import KEY_PREFIX
from jobs.errors import JobNotFound
from jobs.schemas import RenderRequest, resolve
from jobs.status import JobStatus
from jobs.store import JobRecord

REUSABLE = frozenset({JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.RUNNING})


def cache_key(tenant: str | None, key: str) -> str:
    """Where the tenant's job for content ``key`` is recorded."""
    return f"{KEY_PREFIX}cache:{tenant or '-'}:{key}"


def key_for(client, req: RenderRequest) -> str:
    """The request's content key, as the campaign planner computes it for a cell."""
    spec = client.registry.get(req.model)
    return content_key(resolve(req, spec, client.settings), spec)


def lookup(client, tenant: str | None, req: RenderRequest) -> tuple[JobRecord | None, str | None]:
    """(the job to answer with, or None; the content key) for a request with ``cache: "reuse"``;
    (None, None) for any other request."""
    if req.cache != "reuse":
        return None, None
    key = key_for(client, req)
    job_id = client.store.r.get(cache_key(tenant, key))
    if not job_id:
        return None, key
    try:
        rec = client.store.get(job_id)
    except JobNotFound:
        return None, key
    if (rec.tenant or None) != (tenant or None) or rec.status not in REUSABLE:
        return None, key
    return rec, key


def remember(client, tenant: str | None, key: str | None, job_id: str) -> None:
    """``job_id`` renders the content ``key`` (kept as long as job records are)."""
    if key:
        client.store.r.set(cache_key(tenant, key), job_id, ex=client.settings.record_ttl_s)


__all__ = ["lookup", "remember", "key_for", "cache_key", "REUSABLE"]
