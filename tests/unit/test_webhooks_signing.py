"""Our signer, verified by the standardwebhooks library (the receivers' reference)."""
from __future__ import annotations

import json
import time

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from jobs.errors import ConfigurationError
from webhooks.signing import generate_secret, normalize_secrets, signed_headers

BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "j1", "prompt": "ünïcode"}}, ensure_ascii=False).encode()


def test_delivery_signed_by_us_verifies_with_standardwebhooks() -> None:
    secret = generate_secret()
    headers = signed_headers("evt_1", BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_two_secrets_sign_twice_so_either_verifies_during_rotation() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signed_headers("evt_2", BODY, [old, SecretStr(new)])
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(BODY, headers)
    assert Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)


def test_changed_body_or_id_fails_verification() -> None:
    secret = generate_secret()
    headers = signed_headers("evt_3", BODY, [secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt_other"})


def test_timestamp_is_per_attempt_and_id_is_kept() -> None:
    secret = generate_secret()
    a = signed_headers("evt_4", BODY, [secret], timestamp=int(time.time()) - 10)
    b = signed_headers("evt_4", BODY, [secret])
    assert a["webhook-id"] == b["webhook-id"] and a["webhook-timestamp"] != b["webhook-timestamp"]
    assert a["webhook-signature"] != b["webhook-signature"]


def test_bad_secrets_are_refused_without_echoing_them() -> None:
    for bad in ["nope", "whsec_***", "whsec_" + "QUJD"]:
        with pytest.raises(ConfigurationError) as e:
            normalize_secrets(bad)
        assert bad not in str(e.value)
    assert generate_secret().startswith("whsec_")
