"""Standard Webhooks signing: ``v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>``.

Secrets are ``whsec_<base64>``. A delivery is signed with every current secret (space-separated
signatures) so an endpoint can rotate: add the new secret, let receivers switch, drop the old one.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from typing import Iterable, Sequence

from pydantic import SecretStr

from jobs.errors import ConfigurationError

SECRET_PREFIX = "whsec_"
#: Secrets shorter than this are refused: an HMAC key is only as strong as its entropy.
MIN_SECRET_BYTES = 24

SecretLike = str | SecretStr


def generate_secret(nbytes: int = 32) -> str:
    """A new random endpoint secret, ``whsec_`` + base64 of ``nbytes`` random bytes."""
    if nbytes < MIN_SECRET_BYTES:
        raise ValueError(f"nbytes must be at least {MIN_SECRET_BYTES}")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def _plain(secret: SecretLike) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def decode_secret(secret: SecretLike, min_bytes: int = MIN_SECRET_BYTES) -> bytes:
    """The HMAC key inside a ``whsec_...`` secret. The error never echoes the secret itself.

    ``min_bytes`` guards secrets we create or accept for sending; receivers may pass 1 to accept
    whatever key a sender chose.
    """
    raw = _plain(secret)
    if not raw.startswith(SECRET_PREFIX):
        raise ConfigurationError("a webhook secret must look like 'whsec_<base64>' (see generate_secret())")
    body = raw[len(SECRET_PREFIX):]
    try:
        # Padding may be missing in hand-written secrets; the standardwebhooks library accepts that too.
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("a webhook secret's part after 'whsec_' is not valid base64") from None
    if len(key) < max(min_bytes, 1):
        raise ConfigurationError(f"a webhook secret must hold at least {max(min_bytes, 1)} bytes of key")
    return key


def normalize_secrets(secrets: SecretLike | Iterable[SecretLike] | None) -> tuple[str, ...]:
    """One secret or several, as a tuple of validated plain ``whsec_`` strings (order kept)."""
    if secrets is None:
        return ()
    items = [secrets] if isinstance(secrets, (str, SecretStr)) else list(secrets)
    out: list[str] = []
    for s in items:
        decode_secret(s)  # validate early, at enqueue time, not at the first attempt
        plain = _plain(s)
        if plain not in out:
            out.append(plain)
    return tuple(out)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    """Raw HMAC-SHA256 over the Standard Webhooks signed content."""
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[SecretLike]) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` entry per secret, space-separated."""
    if not secrets:
        raise ConfigurationError("no webhook secret: pass one per request or set BATCHRENDER_WEBHOOK_SECRET")
    parts = [
        "v1," + base64.b64encode(signature(decode_secret(s), msg_id, timestamp, body)).decode("ascii")
        for s in secrets
    ]
    return " ".join(parts)


def signed_headers(
    msg_id: str, body: bytes, secrets: Sequence[SecretLike], timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt; the timestamp is taken per attempt."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(msg_id, ts, body, secrets),
    }
