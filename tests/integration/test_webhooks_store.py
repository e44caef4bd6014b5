"""The Redis delivery log, and enqueue_event's idempotency and filtering (no worker: the queue is
inspected directly)."""
from __future__ import annotations

import pytest
import redis as redis_lib

from jobs.celery_app import make_app
from jobs.errors import InvalidRequest, WebhookTargetRefused
from jobs.names import WEBHOOK_QUEUE
from jobs.settings import Settings
from webhooks.events import event_id
from webhooks.signing import generate_secret
from webhooks.store import DeliveryStore, EventRecord
from webhooks.tasks import enqueue_event

from tests.conftest import TEST_KEY_SETTINGS

SECRET = generate_secret()


@pytest.fixture
def env(redis_url: str, tmp_path):
    settings = Settings(home=tmp_path, redis_url=redis_url, webhook_allow_hosts=["127.0.0.1"],
                        webhook_progress_interval_s=60, **TEST_KEY_SETTINGS)
    client = redis_lib.Redis.from_url(redis_url)
    yield settings, make_app(settings), client
    client.close()


def send(settings, app, client, event_type="job.succeeded", **kw):
    args = dict(url="http://127.0.0.1:9/hook", secret=SECRET, event_type=event_type,
                data={"job_id": "j1"}, job_id="j1", batch_id="b1", tenant="acme", event_filter=None)
    args.update(kw)
    return enqueue_event(app, settings, client, **args)


def test_same_event_twice_gives_one_record_and_one_task(env) -> None:
    settings, app, client = env
    first = send(settings, app, client)
    assert first == send(settings, app, client) == event_id("j1", "job.succeeded")
    assert client.llen(WEBHOOK_QUEUE) == 1
    store = DeliveryStore(client)
    assert [r.id for r in store.by_job("j1")] == [first] == [r.id for r in store.by_tenant("acme")]


def test_secrets_given_with_an_event_are_kept_encrypted_and_never_in_reprs(env) -> None:
    from webhooks.job_events import secrets_resolver

    settings, app, client = env
    eid = send(settings, app, client)
    rec = DeliveryStore(client).get(eid)
    assert rec and len(rec.secrets) == 1 and SECRET not in rec.secrets[0], "encrypted at rest"
    assert SECRET.encode() not in b"".join(v for v in client.hgetall(DeliveryStore.key(eid)).values())
    assert secrets_resolver(settings, client)(rec) == (SECRET,), "the deliverer gets it back"
    assert SECRET not in repr(rec) and SECRET not in repr(settings)


def test_tenant_secrets_are_kept_once_and_rotation_applies_to_pending_events(env) -> None:
    """A tenant's secret is not copied into its events: the deliverer reads the current one."""
    from producer.tenants import Tenants
    from webhooks.job_events import secrets_resolver

    settings, app, client = env
    tenants = Tenants(client, settings)
    acme = tenants.create("acme-co")
    eid = send(settings, app, client, secret=None, tenant=acme.tenant_id)
    rec = DeliveryStore(client).get(eid)
    assert rec.secrets == (), "no per-event copy"
    resolve = secrets_resolver(settings, client)
    assert resolve(rec) == (acme.webhook_secret,)
    new = tenants.rotate_webhook_secret(acme.tenant_id)
    assert resolve(rec) == (new, acme.webhook_secret), "the pending event signs with the rotated secrets"


def test_filter_and_progress_throttle(env) -> None:
    settings, app, client = env
    assert send(settings, app, client, "job.progress", data={"job_id": "j1", "step": 1}) is None  # not opted in
    wanted = ["job.progress", "job.succeeded"]
    assert send(settings, app, client, "job.progress", data={"job_id": "j1", "step": 1}, event_filter=wanted)
    assert send(settings, app, client, "job.progress", data={"job_id": "j1", "step": 2}, event_filter=wanted) is None
    assert send(settings, app, client, "job.started", event_filter=wanted) is None
    with pytest.raises(InvalidRequest, match="allowed values"):
        send(settings, app, client, event_filter=["job.done"])


def test_refused_url_is_rejected_at_enqueue(env) -> None:
    settings, app, client = env
    with pytest.raises(WebhookTargetRefused):
        send(settings, app, client, url="http://169.254.169.254/")


def test_endpoint_known_gone_records_event_as_gone_without_sending(env) -> None:
    settings, app, client = env
    store = DeliveryStore(client)
    store.disable_endpoint("http://127.0.0.1:9/hook", "evt_old")
    eid = send(settings, app, client)
    assert store.get(eid).state == "gone"  # type: ignore[union-attr]
    assert client.llen(WEBHOOK_QUEUE) == 0


def test_claim_admits_one_runner_per_attempt(env) -> None:
    _, _, client = env
    store = DeliveryStore(client)
    store.create(EventRecord(id="evt_c", type="job.started", url="http://x/", payload="{}"))
    assert store.claim("evt_c", 1, 1, 60) is not None
    assert store.claim("evt_c", 1, 1, 60) is None  # held
    assert store.claim("evt_c", 1, 2, 60) is None and store.claim("evt_c", 2, 1, 60) is None  # wrong message
