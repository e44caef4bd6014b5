"""``batchrender webhooks deliveries|replay`` against real Redis."""
from __future__ import annotations

import pytest
import redis as redis_lib
from click.testing import CliRunner

from jobs.names import WEBHOOK_QUEUE
from webhooks.cli import webhooks
from webhooks.signing import generate_secret
from webhooks.store import DeliveryStore, EventRecord

from tests.conftest import TEST_KEYS


@pytest.fixture
def client(redis_url: str, monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHRENDER_REDIS_URL", redis_url)
    monkeypatch.setenv("BATCHRENDER_HOME", str(tmp_path))
    for name, value in TEST_KEYS.items():
        monkeypatch.setenv(name, value)
    c = redis_lib.Redis.from_url(redis_url)
    yield c
    c.close()


def test_deliveries_table_shows_state_and_host_but_no_secret(client) -> None:
    secret = generate_secret()
    store = DeliveryStore(client)
    store.create(EventRecord(id="evt_t", type="job.failed", url="https://hooks.example.com:8443/x", payload="{}",
                             job_id="j9", secrets=(secret,)))
    store.update("evt_t", state="dead", attempts=6, last_status=503)
    out = CliRunner().invoke(webhooks, ["deliveries", "--job", "j9"])
    assert out.exit_code == 0, out.output
    assert "evt_t" in out.output and "dead" in out.output and "503" in out.output
    assert "hooks.example.com:8443" in out.output and secret not in out.output
    assert "no webhook events" in CliRunner().invoke(webhooks, ["deliveries", "--job", "other"]).output


def test_replay_requeues_a_dead_event_with_the_same_id(client) -> None:
    store = DeliveryStore(client)
    store.create(EventRecord(id="evt_d", type="job.failed", url="https://hooks.example.com/x", payload="{}",
                             secrets=(generate_secret(),)))
    store.update("evt_d", state="dead", next_attempt=6)
    out = CliRunner().invoke(webhooks, ["replay", "evt_d"])
    assert out.exit_code == 0, out.output
    rec = store.get("evt_d")
    assert rec and rec.state == "pending" and rec.generation == 2 and rec.next_attempt == 1
    assert client.llen(WEBHOOK_QUEUE) == 1
    assert "no webhook event" in CliRunner().invoke(webhooks, ["replay", "evt_nope"]).output
