"""The Celery side: the delivery task, ``enqueue_event`` (what the worker/API call) and ``replay``.

Each task message carries ``(event_id, generation, attempt)``. The store's record says which
attempt is due, so duplicates (a Redis visibility-timeout redelivery, a crash between "logged"
and "acked") find nothing to do, and a crashed worker's claim simply expires. Long delays hop:
a message never waits longer than half the visibility timeout inside a worker, which would make
Redis hand it out again.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import replace
from typing import Any, Callable, Iterable

from celery import Celery
from celery.exceptions import Reject

from jobs.errors import ConfigurationError
from jobs.logs import job_context
from jobs.metrics import WEBHOOK_DELIVERIES
from jobs.names import WEBHOOK_QUEUE, WEBHOOK_TASK, tenant_key
from jobs.retry import RetryPolicy, transient
from jobs.secretbox import SecretBox
from jobs.periodic import start_periodic, take_turn
from jobs.settings import WEBHOOK_CLAIM_SLACK_S, Settings
from webhooks import events as ev
from webhooks.delivery import Deliverer
from webhooks.job_events import secrets_resolver
from webhooks.signing import SecretLike, normalize_secrets
from webhooks.ssrf import Resolver, check_url
from webhooks.store import DEAD, DELIVERED, GONE, PENDING, PREFIX, DeliveryStore, EventRecord

log = logging.getLogger(__name__)
#: Margin on top of the HTTP timeout before another worker may take over a claimed attempt.
CLAIM_SLACK_S = WEBHOOK_CLAIM_SLACK_S
#: Defaults of ``webhook_sweep_overdue_s`` / ``webhook_sweep_every_s``: an event still pending
#: this long after its attempt was due has lost its task message, and the sweep sends a new one.
SWEEP_OVERDUE_S = Settings.model_fields["webhook_sweep_overdue_s"].default
SWEEP_EVERY_S = Settings.model_fields["webhook_sweep_every_s"].default
#: How long the deliverer's Redis commands keep retrying (a restart, a failover) before the task
#: is retried instead, and how many times it is (with backoff; the sweep catches what is left).
REDIS_PATIENCE_S = 30.0
REDIS_RETRIES = 20


def _send(app: Celery, rec: EventRecord, countdown: float, max_wait_s: float) -> None:
    # Not a child of the render task that sends it (jobs.celery_app.publish_render says why).
    app.send_task(WEBHOOK_TASK, args=[rec.id, rec.generation, rec.next_attempt], queue=WEBHOOK_QUEUE,
                  countdown=max(0.0, min(countdown, max_wait_s)) or None, add_to_parent=False)


def _max_wait(settings: Settings) -> float:
    return settings.visibility_timeout_s / 2


def enqueue_event(app: Celery, settings: Settings, redis: Any, *, url: str,
                  secret: SecretLike | Iterable[SecretLike] | None, event_type: str, data: dict[str, Any],
                  job_id: str | None = None, batch_id: str | None = None, tenant: str | None = None,
                  event_filter: Iterable[str] | None = None, subject: str | None = None) -> str | None:
    """Record an event for ``url`` and send its first delivery task; returns the event id.

    Returns None when the request's ``event_filter`` does not want this type, or a
    ``job.progress`` event falls inside ``webhook_progress_interval_s`` of the previous one.
    Idempotent: the id is derived from (job/batch, type[, step]), so calling again for the same
    event (a redelivered job) sends nothing; ``campaign.*`` events pass their ``subject``
    (campaign id and apply). ``secret`` defaults to ``settings.webhook_secret``;
    several secrets sign with each (rotation). Raises ``WebhookTargetRefused`` for a URL the
    SSRF guard refuses without DNS (scheme, credentials, IP literals); DNS is checked per attempt.
    """
    if event_type not in ev.parse_event_filter(event_filter):
        return None
    explicit = normalize_secrets(secret) if secret is not None else ()
    has_tenant_secret = bool(tenant) and bool(redis.hexists(tenant_key(tenant), "webhook_secrets"))
    if not explicit and not has_tenant_secret and not settings.webhook_secret:
        raise ConfigurationError("no webhook secret: pass one with the request or set BATCHRENDER_WEBHOOK_SECRET")
    # Only secrets given with this event are kept in its record, encrypted; tenant and default
    # secrets are looked up at each attempt (webhooks.job_events.secrets_resolver).
    secrets = tuple(SecretBox.for_settings(settings).seal(s) for s in explicit)
    check_url(url, settings.webhook_allow_hosts, resolve=False)
    subject = ev.subject_of(event_type, job_id, batch_id, subject)
    step = data.get("step") if event_type == ev.JOB_PROGRESS else None
    event_id = ev.event_id(subject, event_type, step)
    store = DeliveryStore(redis, settings.record_ttl_s)
    if store.get(event_id) is not None:
        return event_id  # already recorded (and sent) by an earlier run of the same job
    if event_type == ev.JOB_PROGRESS and not store.progress_slot(subject, settings.webhook_progress_interval_s):
        return None
    body = ev.envelope(event_type, data)
    rec = EventRecord(id=event_id, type=event_type, url=url, payload=json.dumps(body, separators=(",", ":")),
                      job_id=job_id or "", batch_id=batch_id or "", tenant=tenant or "", secrets=secrets,
                      not_before=store.now() + float(settings.webhook_schedule_s[0]))
    disabled = store.is_disabled(url)
    if disabled:
        rec = replace(rec, state=GONE, last_error="not attempted: endpoint answered 410 Gone earlier")
    if not store.create(rec):
        return event_id
    if not disabled:
        _send(app, rec, float(settings.webhook_schedule_s[0]), _max_wait(settings))
        store.update(event_id, scheduled_attempt=1)
    return event_id


def replay(app: Celery, settings: Settings, redis: Any, event_id: str) -> EventRecord:
    """Send a delivered, dead or gone event again: same ``webhook-id``, fresh timestamp, a full
    new schedule. Replaying a gone event re-enables its endpoint (the operator says it is back)."""
    store = DeliveryStore(redis, settings.record_ttl_s)
    rec = store.get(event_id)
    if rec is None:
        raise KeyError(f"no webhook event {event_id!r} (unknown or expired)")
    if rec.state == PENDING and rec.scheduled_attempt >= rec.next_attempt:
        raise ValueError(f"event {event_id} is still being delivered (attempt {rec.next_attempt} pending)")
    if rec.state == GONE:
        store.enable_endpoint(rec.url)
    generation = rec.generation + 1
    store.update(event_id, state=PENDING, generation=generation, next_attempt=1, scheduled_attempt=1,
                 claimed_until=0, not_before=store.now())
    fresh = store.get(event_id)
    assert fresh is not None
    _send(app, fresh, 0.0, _max_wait(settings))
    return fresh


def register(app: Celery, settings: Settings, *, resolver: Resolver | None = None, redis: Any = None,
             refresh: Callable[[str], str] | None = None) -> Any:
    """Register the delivery task (``WEBHOOK_TASK`` on ``WEBHOOK_QUEUE``) on ``app``; returns it.

    ``redis`` defaults to a client for the configured Redis, created on first use in the worker
    process (after fork). ``resolver`` is for tests. ``refresh`` rewrites each stored body before
    an attempt (``webhooks.job_events.link_refresher``: output links made at delivery time).
    """
    app.conf.task_routes = {**(app.conf.task_routes or {}), WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE}}
    state: dict[str, Any] = {"redis": redis}
    policy = RetryPolicy.from_settings(settings)

    def deliverer() -> Deliverer:
        if state.get("deliverer") is None:
            client = state["redis"]
            if client is None:
                from jobs.redisconn import for_settings

                # Rides out a restart or a failover (~30 s) inside one attempt, so the outcome of a
                # request already sent is recorded rather than the event sent twice.
                client = for_settings(settings, decode_responses=False, patience_s=REDIS_PATIENCE_S)
            state["deliverer"] = Deliverer(DeliveryStore(client, settings.record_ttl_s),
                                           timeout_s=settings.webhook_timeout_s, schedule=settings.webhook_schedule_s,
                                           allow_hosts=settings.webhook_allow_hosts, resolver=resolver,
                                           refresh=refresh, secrets_for=secrets_resolver(settings, client))
        return state["deliverer"]

    from celery.signals import worker_ready

    @worker_ready.connect(weak=False)
    def _sweep_at_start(sender=None, **_kw) -> None:
        # A worker (re)starting is when lost messages are most likely: look once right away.
        try:
            sweep(app, settings, deliverer().store, settings.webhook_sweep_overdue_s)
        except Exception:  # noqa: BLE001 - never stop a worker from starting over a sweep
            log.exception("webhook sweep at start-up failed")
        # Then keep looking while the worker lives: an idle fleet runs no deliveries, so a sweep
        # tied to deliveries alone would leave a lost event pending forever.
        start_periodic("webhook-sweep", settings.webhook_sweep_every_s,
                       lambda: maybe_sweep(app, settings, deliverer().store))

    @app.task(name=WEBHOOK_TASK, queue=WEBHOOK_QUEUE, ignore_result=True, acks_late=True, bind=True,
              max_retries=REDIS_RETRIES)
    def deliver(self, event_id: str, generation: int, attempt: int) -> str:
        """Run attempt ``attempt`` of an event and schedule the next one when it failed.

        Redis away (down, restarting, a failover) is transient here as everywhere: the task is
        retried with backoff (the record's attempt number and claim make a repeat harmless)
        instead of failing and leaving the event to the sweep, minutes later."""
        try:
            return _deliver(event_id, generation, attempt)
        except Exception as e:
            t = transient(e)
            if t is None:
                raise
            log.warning("webhook %s attempt %d: %s; the task is retried", event_id, attempt, t.message)
            try:
                raise self.retry(exc=t, countdown=policy.backoff(self.request.retries))
            except Reject as r:  # Celery could not publish the retry (Redis still away): keep this message
                raise Reject(r.reason, requeue=True) from None

    def _deliver(event_id: str, generation: int, attempt: int) -> str:
        d = deliverer()
        store = d.store
        rec = store.get(event_id)
        if rec is None or rec.generation != generation or rec.state != PENDING:
            return "stale"
        if rec.next_attempt > attempt and rec.scheduled_attempt < rec.next_attempt:
            # The run that logged this attempt died before sending the next message: send it now.
            _send(app, rec, rec.not_before - store.now(), _max_wait(settings))
            store.update(event_id, scheduled_attempt=rec.next_attempt)
            return "recovered"
        if rec.next_attempt != attempt:
            return "duplicate"
        early = rec.not_before - store.now()  # schedules and claims are on Redis's clock (jobs/clock.py)
        if early > 1.0:
            _send(app, rec, early, _max_wait(settings))  # a long delay, hopping; see module doc
            return "waiting"
        token = f"{event_id}:{generation}:{attempt}"
        if not store.acquire_slot(rec.tenant, settings.webhook_tenant_concurrency, settings.webhook_lease_s, token):
            # This tenant already has its share of deliveries in flight (a slow receiver, say):
            # come back shortly rather than take a thread other tenants' events need.
            _send(app, rec, 1.0 + random.random(), _max_wait(settings))
            return "throttled"
        try:
            with job_context(*([rec.job_id] if rec.job_id else [])):
                return _attempt(d, store, rec, event_id, generation, attempt)
        finally:
            store.release_slot(rec.tenant, token)

    def _attempt(d: Deliverer, store: DeliveryStore, rec: EventRecord, event_id: str, generation: int,
                 attempt: int) -> str:
        claimed = store.claim(event_id, generation, attempt, settings.webhook_lease_s)
        if claimed is None:
            held, now = store.get(event_id), store.now()
            if (held is not None and held.state == PENDING and held.generation == generation
                    and held.next_attempt == attempt and held.claimed_until > now):
                # Another worker holds this attempt, or held it and died (this message is its
                # redelivery). Come back when the claim ends: if that worker finished, the
                # attempt number has moved on and this is a duplicate then; if it died, this runs it.
                _send(app, held, held.claimed_until - now + 1.0, _max_wait(settings))
                return "held"
            return "duplicate"
        decision = d.attempt(claimed)
        WEBHOOK_DELIVERIES.labels(outcome=decision.outcome).inc()
        if decision.outcome == "retry":
            nxt = store.get(event_id)
            if nxt is not None and nxt.state == PENDING:
                _send(app, nxt, decision.delay_s, _max_wait(settings))
                store.update(event_id, scheduled_attempt=nxt.next_attempt)
        maybe_sweep(app, settings, store)
        return decision.outcome

    return deliver


def sweep(app: Celery, settings: Settings, store: DeliveryStore, overdue_s: float = SWEEP_OVERDUE_S,
          limit: int = 1000) -> list[str]:
    """Send a new task message for every pending event whose attempt is overdue and unclaimed.

    A lost message (a worker died after recording an event but before sending it, or after
    logging an attempt but before scheduling the next) would otherwise leave the event pending
    forever. A message that was not lost after all is harmless: the record's attempt number and
    claim make the extra one a duplicate. Returns the ids that got a message.
    """
    now = store.now()
    sent = []
    for event_id in store.pending_ids(limit):
        rec = store.get(event_id)
        if rec is None or rec.state != PENDING:
            store.forget_pending(event_id)
            continue
        if rec.claimed_until > now or rec.not_before > now - overdue_s or rec.updated_at > now - overdue_s:
            continue
        _send(app, rec, 0.0, _max_wait(settings))
        store.update(event_id, scheduled_attempt=rec.next_attempt)
        sent.append(event_id)
    if sent:
        log.warning("webhook sweep re-sent %d overdue event(s): %s", len(sent), ", ".join(sent[:10]))
    return sent


def maybe_sweep(app: Celery, settings: Settings, store: DeliveryStore) -> list[str]:
    """Run ``sweep`` if no worker ran one in the last ``webhook_sweep_every_s`` seconds."""
    if not take_turn(store.redis, f"{PREFIX}sweep-lock", settings.webhook_sweep_every_s):
        return []
    return sweep(app, settings, store, settings.webhook_sweep_overdue_s)


__all__ = ["enqueue_event", "register", "replay", "sweep", "maybe_sweep", "DELIVERED", "DEAD", "GONE", "PENDING"]
