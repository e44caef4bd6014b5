"""``campaign.completed``: one signed event per apply of a campaign that has a ``webhook``.

Sent when the apply's batch has ended (beside that batch's ``batch.completed``, from the same
place: ``webhooks.job_events.webhook_sender``), or at once by ``send_campaign_completed`` when the
apply had nothing to render (every cell reused or refused). Its id is derived from the campaign id
and the apply's number, so a redelivered last job, or both paths racing, send it once.

``data``: ``campaign_id``, ``name``, ``apply``, ``counts`` (cells per state, reused ones as
``reused_<state>``), ``progress`` (cells done of total, GPU-seconds spent against planned) and
``results_url`` (the manifest). Reused cells whose job is still running are counted as such: the
event says the apply's own renders have ended.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from jobs.campaign_records import campaign_key, progress as campaign_progress
from jobs.errors import PermanentError

log = logging.getLogger(__name__)
#: ``producer.campaigns`` names an apply's batch ``bat_<campaign id hex>_<apply>``.
_APPLY = re.compile(r"_(\d+)$")


def apply_of(batch_id: str | None) -> int | None:
    m = _APPLY.search(batch_id or "")
    return int(m.group(1)) if m else None


def subject(campaign_id: str, apply: int) -> str:
    """What the event is about (its id derives from this): one campaign's one apply."""
    return f"{campaign_id}/apply/{int(apply)}"


def completed_data(settings, store, campaign_id: str, apply: int, batch: dict[str, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, str]] | None:
    """(``data`` of the event, the campaign's record) or None when the campaign is gone.

    Progress is read the way ``GET /v1/campaigns/{id}`` reads it (``jobs.campaign_records``).
    While the apply that made ``batch`` is still writing
    its cells (a batch can end before its producer has written them), counts come from the batch
    and progress is null."""
    h = store.r.hgetall(campaign_key(campaign_id))
    if not h:
        return None
    base = (settings.public_base_url or "").rstrip("/")
    results_url = f"{base}/v1/campaigns/{campaign_id}/results"
    written = batch is None or h.get("batch_id") == batch.get("id")
    if written:
        plan = json.loads(h.get("plan") or "{}")
        progress, counts = campaign_progress(store.r, campaign_id, (plan.get("gpu_seconds") or {}).get("total"))
    else:
        counts = {k: v for k, v in (batch or {}).get("counts", {}).items() if k not in ("pending", "total") and v}
        progress = None
    from webhooks import events as ev

    extra = {"batch_id": batch.get("id")} if batch else {}
    return ev.campaign_completed(campaign_id, h.get("name") or "", apply, counts, progress, results_url, **extra), h


def enqueue_campaign_completed(app, settings, store, campaign_id: str, batch: dict[str, Any] | None = None,
                               apply: int | None = None) -> str | None:
    """Record and send ``campaign.completed`` for one apply (the one that made ``batch``, else
    ``apply``) to the campaign's webhook; the event id, or None when there is nothing to send."""
    from webhooks.tasks import enqueue_event

    apply = apply if apply is not None else apply_of((batch or {}).get("id"))
    if apply is None:
        return None
    built = completed_data(settings, store, campaign_id, apply, batch)
    if built is None:
        return None
    data, h = built
    url = (json.loads(h.get("document") or "{}")).get("webhook")
    if not url:
        return None
    return enqueue_event(app, settings, store.r, url=url, secret=None, event_type="campaign.completed", data=data,
                         batch_id=(batch or {}).get("id"), tenant=h.get("tenant") or None,
                         subject=subject(campaign_id, apply))


def send_campaign_completed(client, campaign_id: str) -> str | None:
    """The producer's call when an apply had nothing to render: ``campaign.completed`` for the
    campaign's latest apply, at once. A webhook that cannot be sent for good (no secret, a target
    the SSRF guard refuses) is logged: the apply itself stands."""
    applies = client.store.r.hget(campaign_key(campaign_id), "applies")
    if not applies:
        return None
    try:
        return enqueue_campaign_completed(client.app, client.settings, client.store, campaign_id, None, int(applies))
    except PermanentError:
        log.exception("cannot send campaign.completed for %s", campaign_id)
        return None


__all__ = ["send_campaign_completed", "enqueue_campaign_completed", "completed_data", "subject", "apply_of"]
