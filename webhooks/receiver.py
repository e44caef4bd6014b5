"""Verify batchrender webhooks on the receiving side (Standard Webhooks compatible).

    from webhooks.receiver import verify, MemoryDeduper
    event = verify(request.body, request.headers, "whsec_...")   # raises WebhookVerificationError
    if dedupe.first_time(request.headers["webhook-id"]):
        handle(event)

Deliveries are at-least-once: the same ``webhook-id`` can arrive more than once (retries, a
worker crash), so receivers should dedupe by it.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping

from pydantic import SecretStr

from jobs.errors import ConfigurationError, PermanentError
from webhooks.signing import SecretLike, decode_secret, signature

#: Standard Webhooks recommends five minutes either way, against replay of captured requests.
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(PermanentError):
    """A delivery failed verification; the message says which check failed (never a secret)."""

    code = "webhook_verification_failed"


def _header(headers: Mapping[str, Any], name: str) -> str:
    for k, v in headers.items():
        if str(k).lower() == name:
            return v.decode() if isinstance(v, bytes) else str(v)
    raise WebhookVerificationError(f"missing header {name!r}")


def verify(
    payload: bytes | str,
    headers: Mapping[str, Any],
    secrets: SecretLike | Iterable[SecretLike],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and timestamp and return the parsed JSON event.

    ``secrets`` may be one ``whsec_`` secret or several (during rotation any one may match).
    Raises ``WebhookVerificationError`` when a header is missing, the timestamp is outside
    ``tolerance_s`` or no signature matches.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    msg_id = _header(headers, "webhook-id")
    ts_raw = _header(headers, "webhook-timestamp")
    sig_header = _header(headers, "webhook-signature")
    try:
        ts = int(ts_raw)
    except ValueError:
        raise WebhookVerificationError("header 'webhook-timestamp' is not integer unix seconds") from None
    current = time.time() if now is None else now
    if ts < current - tolerance_s:
        raise WebhookVerificationError("timestamp too old (outside the tolerance): possible replay")
    if ts > current + tolerance_s:
        raise WebhookVerificationError("timestamp too far in the future (check the clocks)")

    items = [secrets] if isinstance(secrets, (str, SecretStr)) else list(secrets)
    keys = [decode_secret(s, min_bytes=1) for s in items]
    if not keys:
        raise ConfigurationError("verify() needs at least one secret")
    offered: list[bytes] = []
    for part in sig_header.split(" "):
        version, _, b64 = part.partition(",")
        if version != "v1" or not b64:
            continue  # unknown versions are skipped so new schemes can be added alongside
        try:
            offered.append(base64.b64decode(b64, validate=True))
        except (binascii.Error, ValueError):
            continue
    matched = False
    for key in keys:
        expected = signature(key, msg_id, ts, body)
        for sig in offered:
            # compare_digest: no early exit, so timing does not leak how many bytes matched.
            matched |= hmac.compare_digest(expected, sig)
    if not matched:
        raise WebhookVerificationError("no matching v1 signature (wrong secret or modified body)")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("body is not a JSON object")
    return event


class MemoryDeduper:
    """Remembers the last ``max_items`` webhook ids in process memory (thread-safe)."""

    def __init__(self, max_items: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._max = max_items
        self._lock = threading.Lock()

    def first_time(self, webhook_id: str) -> bool:
        """True the first time an id is seen, False for every repeat."""
        with self._lock:
            if webhook_id in self._seen:
                self._seen.move_to_end(webhook_id)
                return False
            self._seen[webhook_id] = None
            if len(self._seen) > self._max:
                self._seen.popitem(last=False)
            return True


class RedisDeduper:
    """Dedupe across receiver processes with ``SET NX`` and an expiry (a redis-py client)."""

    def __init__(self, redis: Any, ttl_s: int = 7 * 24 * 3600, prefix: str = "webhook-seen:") -> None:
        self._redis = redis
        self._ttl = ttl_s
        self._prefix = prefix

    def first_time(self, webhook_id: str) -> bool:
        """True the first time an id is seen within ``ttl_s``, False for every repeat."""
        return bool(self._redis.set(self._prefix + webhook_id, 1, nx=True, ex=self._ttl))
