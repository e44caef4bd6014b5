"""``batchrender webhooks``: look at deliveries and replay events.

Attach with ``cli.add_command(webhooks)``. Secrets are never printed.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import click

from jobs.settings import Settings
from webhooks.store import DeliveryStore, EventRecord


def _connect() -> tuple[Settings, Any]:
    from jobs.redisconn import for_settings

    settings = Settings.from_env()
    return settings, for_settings(settings, decode_responses=False)


def _row(r: EventRecord) -> list[str]:
    when = datetime.fromtimestamp(r.updated_at or time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return [r.id, r.type, r.state, str(r.attempts), str(r.last_status or "-"),
            urlsplit(r.url).netloc.rpartition("@")[2], when]


def format_table(records: list[EventRecord]) -> str:
    """A plain-text table of event records (no secrets, no payloads)."""
    head = ["EVENT", "TYPE", "STATE", "ATTEMPTS", "LAST", "HOST", "UPDATED (UTC)"]
    rows = [head] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


@click.group("webhooks")
def webhooks() -> None:
    """Webhook deliveries: list them, replay one."""


@webhooks.command("deliveries")
@click.option("--job", "job_id", help="Only this job's events.")
@click.option("--tenant", help="Only this tenant's events.")
@click.option("--dead", is_flag=True, help="Only dead-lettered events.")
@click.option("--limit", default=50, show_default=True, help="Newest N events.")
def deliveries(job_id: str | None, tenant: str | None, dead: bool, limit: int) -> None:
    """Table of events: id, type, state, attempts, last HTTP status, URL host."""
    settings, client = _connect()
    store = DeliveryStore(client, settings.record_ttl_s)
    if job_id:
        records = store.by_job(job_id, limit)
    elif tenant:
        records = store.by_tenant(tenant, limit)
    elif dead:
        records = store.dead_letters(limit)
    else:
        records = store.recent(limit)
    click.echo(format_table(records) if records else "no webhook events")


@webhooks.command("replay")
@click.argument("event_id")
def replay_cmd(event_id: str) -> None:
    """Send EVENT_ID again (same webhook-id, new timestamp and signature)."""
    from jobs.celery_app import make_app
    from webhooks.tasks import replay

    settings, client = _connect()
    app = make_app(settings)
    try:
        rec = replay(app, settings, client, event_id)
    except (KeyError, ValueError) as e:
        raise click.ClickException(str(e.args[0])) from None
    click.echo(f"replaying {rec.id} ({rec.type}) to {urlsplit(rec.url).netloc.rpartition('@')[2]}")


@webhooks.command("sweep")
@click.option("--overdue", type=float, default=None,
              help="Seconds past due (default: BATCHRENDER_WEBHOOK_SWEEP_OVERDUE_S, 120).")
def sweep_cmd(overdue: float | None) -> None:
    """Send a new message for every pending event whose attempt is overdue (workers do this
    themselves at start-up and every BATCHRENDER_WEBHOOK_SWEEP_EVERY_S seconds)."""
    from jobs.celery_app import make_app
    from webhooks.store import DeliveryStore
    from webhooks.tasks import sweep

    settings, client = _connect()
    sent = sweep(make_app(settings), settings, DeliveryStore(client, settings.record_ttl_s),
                 settings.webhook_sweep_overdue_s if overdue is None else overdue)
    click.echo(f"re-sent {len(sent)} overdue event(s)")
