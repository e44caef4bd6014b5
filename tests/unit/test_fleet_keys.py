"""Keys that must match across hosts (jobs/fleet.py, jobs/signing.py, provenance/c2pa_sign.py),
without services: fingerprints, how disagreements are named, and what a shared Redis refuses."""
from __future__ import annotations

import pytest

from jobs.errors import ConfigurationError
from jobs.fleet import FleetKeyMismatch, check_against, disagreements, key_fingerprint
from jobs.settings import Settings

SHARED = "redis://127.0.0.1:1/0"  # a real Redis URL: nothing here connects to it


def test_a_fingerprint_is_short_stable_and_says_nothing_of_the_key():
    key = b"a-message-signing-key-of-the-deployment"
    fp = key_fingerprint(key, "signing")
    assert fp == key_fingerprint(key, "signing") and len(fp) == 16 and int(fp, 16) >= 0
    assert key.hex()[:8] not in fp and key.decode() not in fp
    assert fp != key_fingerprint(key, "secrets"), "each key has its own label"
    assert fp != key_fingerprint(key + b"!", "signing")


def member(label: str, **prints: str) -> dict[str, str]:
    return {"id": label, "label": label, **prints}


def test_disagreements_name_the_members_on_each_side_and_the_setting_that_fixes_it():
    fleet = [member("api@a:1", signing="aaaa", secrets="ssss"), member("worker@b:2", signing="aaaa", secrets="ssss", c2pa="cccc"),
             member("worker@c:3", signing="bbbb", secrets="ssss", c2pa="cccc")]
    (found,) = disagreements(fleet)
    assert found.key == "signing"
    assert found.groups == (("aaaa", ("api@a:1", "worker@b:2")), ("bbbb", ("worker@c:3",)))
    text = found.describe()
    assert "api@a:1, worker@b:2 have aaaa" in text and "worker@c:3 has bbbb" in text
    assert "BATCHRENDER_MESSAGE_SIGNING_KEY" in text and "batchrender keys signing-key" in text


def test_a_member_without_a_key_takes_no_side():
    """The API has no C2PA signer: its missing anchor is no disagreement."""
    fleet = [member("api@a:1", signing="aaaa"), member("worker@b:2", signing="aaaa", c2pa="cccc")]
    assert disagreements(fleet) == []
    fleet.append(member("worker@c:3", signing="aaaa", c2pa="dddd"))
    (found,) = disagreements(fleet)
    assert found.key == "c2pa" and "same CA" in found.describe()


def test_a_differing_key_is_refused_naming_the_live_members_that_hold_the_other_one():
    live = [{**member("api@a:1", signing="aaaa", secrets="ssss"), "age_s": "3"}]
    check_against(live, {"signing": "aaaa", "secrets": "ssss"}, "this worker")  # agrees: no error
    with pytest.raises(FleetKeyMismatch) as e:
        check_against(live, {"signing": "aaaa", "secrets": "tttt"}, "this worker (worker@b:2)")
    text = e.value.message
    assert "secrets key" in text and "api@a:1 seen 3 s ago" in text and "BATCHRENDER_SECRETS_KEY" in text
    assert "tttt" in text and "ssss" in text
    assert isinstance(e.value, ConfigurationError), "a worker stops at start-up on it"


def test_a_shared_redis_without_shared_keys_is_refused_naming_both_settings(tmp_path):
    from jobs.secretbox import SecretBox
    from jobs.signing import Signer, require_shared_keys

    settings = Settings(home=tmp_path, redis_url=SHARED)
    for make in (lambda: require_shared_keys(settings), lambda: Signer.for_settings(settings),
                 lambda: SecretBox.for_settings(settings)):
        with pytest.raises(ConfigurationError) as e:
            make()
        text = e.value.message
        assert "BATCHRENDER_MESSAGE_SIGNING_KEY and BATCHRENDER_SECRETS_KEY" in text
        assert "batchrender keys signing-key" in text and "batchrender keys secrets-key" in text
    assert not (tmp_path / "keys").exists(), "no per-host key file is made"
    half = Settings(home=tmp_path, redis_url=SHARED, message_signing_key="k" * 32)
    with pytest.raises(ConfigurationError, match="BATCHRENDER_SECRETS_KEY is not"):
        SecretBox.for_settings(half)
    require_shared_keys(Settings(home=tmp_path))  # the embedded broker: key files under the home are fine


def test_a_short_message_signing_key_is_a_configuration_error_not_a_traceback(tmp_path):
    from jobs.signing import Signer

    with pytest.raises(ConfigurationError, match="shorter than 16 bytes.*batchrender keys signing-key"):
        Signer.for_settings(Settings(home=tmp_path, message_signing_key="short"))


def test_development_c2pa_keys_are_refused_with_a_shared_redis_unless_asked_for(tmp_path):
    from provenance.c2pa_sign import ImageSigner
    from provenance.devkeys import init_dev_keys

    with pytest.raises(ConfigurationError) as e:
        ImageSigner.from_settings(Settings(home=tmp_path / "a", redis_url=SHARED))
    assert "BATCHRENDER_C2PA_ALLOW_DEV_KEYS" in e.value.message and "BATCHRENDER_C2PA_CERT_CHAIN" in e.value.message
    assert not (tmp_path / "a" / "keys").exists(), "refused before a development CA is made"

    made = init_dev_keys(tmp_path / "made")  # `batchrender keys init`: development keys too
    configured = dict(c2pa_cert_chain=made.cert_chain, c2pa_private_key=made.private_key)
    with pytest.raises(ConfigurationError, match="BATCHRENDER_C2PA_ALLOW_DEV_KEYS"):
        ImageSigner.from_settings(Settings(home=tmp_path / "b", redis_url=SHARED, **configured))

    allowed = ImageSigner.from_settings(Settings(home=tmp_path / "b", redis_url=SHARED, c2pa_allow_dev_keys=True,
                                                 **configured))
    embedded = ImageSigner.from_settings(Settings(home=tmp_path / "c"))  # one host: allowed as before
    try:
        assert allowed.development and embedded.development
        assert allowed.anchor and embedded.anchor and allowed.anchor != embedded.anchor, \
            "two development CAs with the same name have different anchors"
    finally:
        allowed.close()
        embedded.close()


def test_the_anchor_is_the_chains_last_certificate(tmp_path):
    from provenance.c2pa_sign import ImageSigner
    from provenance.devkeys import init_dev_keys

    keys = init_dev_keys(tmp_path / "keys")
    one = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    two = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        from jobs.fleet import anchor_fingerprint

        ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
        assert one.anchor == two.anchor == anchor_fingerprint(ca.public_bytes(Encoding.DER))
    finally:
        one.close()
        two.close()


def test_redis_away_at_start_skips_the_check_and_leaves_the_beats_to_publish_later(monkeypatch, caplog):
    """A worker starting while Redis restarts is not refused for it (readyz and doctor compare later)."""
    import logging

    import redis

    from jobs import fleet

    beats = []
    monkeypatch.setattr(fleet, "keep_alive", lambda redis_for, member, prints: beats.append(member))
    away = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="jobs.fleet"):
        fleet.enter(lambda: away, fleet.Member("worker", host="h", pid=1), {"signing": "aaaa"})
    assert "could not compare keys with the fleet" in caplog.text and len(beats) == 1
