"""Our receiver helper, checked against deliveries signed by the standardwebhooks library."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from webhooks.receiver import MemoryDeduper, WebhookVerificationError, verify
from webhooks.signing import generate_secret, signed_headers

BODY = json.dumps({"version": 1, "type": "job.started", "data": {"job_id": "j1"}}).encode()


def their_headers(secret: str, msg_id: str = "evt_x", ts: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), BODY.decode())
    return {"Webhook-Id": msg_id, "Webhook-Timestamp": str(ts), "Webhook-Signature": sig}


def test_delivery_signed_by_standardwebhooks_verifies_with_ours() -> None:
    secret = generate_secret()
    assert verify(BODY, their_headers(secret), secret) == json.loads(BODY)


def test_any_of_several_secrets_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    assert verify(BODY, their_headers(old), [new, old])["type"] == "job.started"


def test_wrong_secret_is_a_clear_error() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        verify(BODY, their_headers(generate_secret()), generate_secret())


def test_timestamp_outside_five_minutes_is_refused_both_ways() -> None:
    secret = generate_secret()
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(BODY, their_headers(secret, ts=int(time.time()) - 301), secret)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(BODY, their_headers(secret, ts=int(time.time()) + 301), secret)


def test_missing_header_and_tampered_body_are_refused() -> None:
    secret = generate_secret()
    headers = signed_headers("evt_y", BODY, [secret])
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        verify(BODY, {k: v for k, v in headers.items() if k != "webhook-signature"}, secret)
    with pytest.raises(WebhookVerificationError):
        verify(BODY.replace(b"j1", b"j2"), headers, secret)


def test_deduper_passes_each_webhook_id_once() -> None:
    d = MemoryDeduper(max_items=2)
    assert d.first_time("a") and not d.first_time("a")
    assert d.first_time("b") and d.first_time("c")
    assert d.first_time("a")  # evicted: the window is bounded
