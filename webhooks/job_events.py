"""Job lifecycle → webhook events: what the worker and the producer both send.

Torch-free, so the producer can emit events for jobs it ends itself (blocked at submission,
canceled while queued) with the same ids and payloads as the worker.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import redis
from kombu.exceptions import OperationalError

from jobs.errors import BrokerUnavailable, PermanentError, TransientError
from jobs.names import tenant_key
from jobs.schemas import JobMessage, JobResult

Sender = Callable[[str, JobMessage, dict[str, Any], "int | None"], None]
log = logging.getLogger(__name__)


class Events:
    def __init__(self, sender: Sender | None = None, progress_interval_s: float = 2.0) -> None:
        self.sender = sender
        self.progress_interval_s = progress_interval_s
        self._last_progress: dict[str, float] = {}

    def emit(self, event_type: str, msg: JobMessage, data: dict[str, Any] | None = None,
             batch_done: int | None = None) -> None:
        if self.sender is None:
            return
        try:
            self.sender(event_type, msg, data or {}, batch_done)
        except PermanentError:
            # Configuration (no webhook secret) or a target the SSRF guard refuses: retrying
            # cannot help and the job's own outcome stands. Logged loudly.
            log.exception("cannot send %s for job %s", event_type, msg.job_id)
        except TransientError:
            raise
        except (redis.exceptions.RedisError, OperationalError, OSError) as e:
            # Not recorded, not sent: the caller retries (a render task is redelivered and sends
            # the terminal events of its already-ended job again; ids make duplicates no-ops).
            raise BrokerUnavailable(f"could not enqueue {event_type} for job {msg.job_id}: {e}") from e

    def progress(self, msg: JobMessage, step: int, total: int) -> None:
        now = time.monotonic()
        if step < total and now - self._last_progress.get(msg.job_id, 0.0) < self.progress_interval_s:
            return
        self._last_progress[msg.job_id] = now
        self.emit("job.progress", msg, {"step": step, "total": total})

    def finished(self, msg: JobMessage, result: JobResult, batch_done: int | None) -> None:
        self._last_progress.pop(msg.job_id, None)
        self.emit(f"job.{result.status.value}", msg, result.model_dump(mode="json"), batch_done)



#: Items listed inline in ``batch.completed``; larger batches get a link to the results instead.
BATCH_MANIFEST_INLINE = 100


def tenant_secrets(redis_client, tenant: str | None, box) -> list[str] | None:
    """A tenant's webhook signing secret(s) (several during rotation), decrypted with ``box``
    (``jobs.secretbox.SecretBox``), or None for the default."""
    if not tenant:
        return None
    raw = redis_client.hget(tenant_key(tenant), "webhook_secrets")
    if isinstance(raw, bytes):
        raw = raw.decode()
    return [s for s in box.open(raw).split(" ") if s] if raw else None


def secrets_resolver(settings, redis_client) -> Callable[[Any], tuple[str, ...]]:
    """For the deliverer: the secrets that sign an event, looked up at each attempt: the ones
    given with the event (kept encrypted in its record), else its tenant's current ones, else
    ``BATCHRENDER_WEBHOOK_SECRET``. Secrets are kept once per tenant, never copied into events,
    so a rotation takes effect at the next attempt."""
    from jobs.secretbox import SecretBox
    from webhooks.signing import normalize_secrets

    box = SecretBox.for_settings(settings)

    def secrets_for(rec) -> tuple[str, ...]:
        if rec.secrets:
            return tuple(box.open(s) for s in rec.secrets)
        return normalize_secrets(tenant_secrets(redis_client, rec.tenant, box) or settings.webhook_secret)

    return secrets_for


def webhook_sender(settings, redis_url: str, store, app=None) -> Sender:
    """A Sender that records and enqueues webhook deliveries for jobs that asked for them."""
    from jobs.celery_app import make_app
    from webhooks import events as ev
    from webhooks.tasks import enqueue_event

    app = app or make_app(settings, redis_url)
    r = store.r
    state: dict[str, Any] = {}

    def links():
        if "links" not in state:
            from storage.links import open_links

            state["links"] = open_links(settings)
        return state["links"]

    def send(event_type: str, msg: JobMessage, data: dict[str, Any], batch_done: int | None) -> None:
        req = msg.request
        if not req.webhook:
            return
        common = {"custom_id": req.custom_id, "metadata": req.metadata or None}
        if event_type == ev.JOB_STARTED:
            body = ev.job_started(msg.job_id, msg.batch_id, **common)
        elif event_type == ev.JOB_PROGRESS:
            body = ev.job_progress(msg.job_id, data["step"], data["total"], msg.batch_id, **common)
        else:
            outputs = links().refresh(data.get("images", []), msg.job_id, stable=msg.tenant is not None)
            body = ev.job_finished(msg.job_id, data.get("status", event_type.split(".")[1]), msg.batch_id,
                                   outputs=outputs or None, error=data.get("error"),
                                   moderation=data.get("moderation"), timings=data.get("timings"), **common)
        # No secret in the event: the deliverer signs with the tenant's (or the default) at each attempt.
        kw = dict(url=req.webhook, secret=None, job_id=msg.job_id, batch_id=msg.batch_id, tenant=msg.tenant,
                  event_filter=req.webhook_events_filter)
        enqueue_event(app, settings, r, event_type=event_type, data=body, **kw)
        if msg.batch_id and batch_done is not None:
            info = store.batch_info(msg.batch_id)
            if info["done"] >= info["total"]:
                enqueue_event(app, settings, r, event_type=ev.BATCH_COMPLETED,
                              data=batch_completed_data(store, links(), msg.batch_id, info), **kw)
                campaign = (info.get("meta") or {}).get("campaign_id")
                if campaign:  # a campaign's apply: its own event, once per apply
                    from webhooks.campaign_events import enqueue_campaign_completed

                    enqueue_campaign_completed(app, settings, store, campaign, info)

    return send


def batch_completed_data(store, links, batch_id: str, info: dict[str, Any]) -> dict[str, Any]:
    from webhooks import events as ev

    counts = {k: v for k, v in info["counts"].items() if k != "pending"}
    if info["total"] > BATCH_MANIFEST_INLINE:
        return ev.batch_completed(batch_id, counts, results_url=f"/v1/batches/{batch_id}/results")
    items = []
    for rec in store.get_many(store.batch_job_ids(batch_id)):
        items.append({"job_id": rec.job_id, "custom_id": rec.custom_id, "status": rec.status.value,
                      "outputs": [links.view(rec.job_id, i, stable=rec.tenant is not None) for i in rec.result.images]
                      if rec.result else [],
                      "error": rec.error})
    return ev.batch_completed(batch_id, counts, items=items)


def link_refresher(settings) -> Callable[[str], str]:
    """For the webhook deliverer: a stored event body with its output links made anew, so an
    event delivered days after it was recorded (retries, replays) carries links that work."""
    state: dict[str, Any] = {}

    def refresh(payload: str) -> str:
        if '"outputs"' not in payload:
            return payload
        if "links" not in state:
            from storage.links import open_links

            state["links"] = open_links(settings)
        links = state["links"]
        body = json.loads(payload)
        data = body.get("data") or {}
        if data.get("outputs") and data.get("job_id"):
            data["outputs"] = links.refresh(data["outputs"], data["job_id"])
        for item in data.get("items") or []:
            if item.get("outputs") and item.get("job_id"):
                item["outputs"] = links.refresh(item["outputs"], item["job_id"])
        return json.dumps(body, separators=(",", ":"))

    return refresh
