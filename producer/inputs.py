"""Reference images for image-to-image: from a data: URI or an http(s) URL to bounded bytes.

Untrusted input, so sizes are checked before anything is decoded: the base64 length before
decoding it, the download as it streams (and through the same SSRF guard as webhooks, so a
reference URL cannot reach internal addresses). Pixel counts are checked from the image header
by the moderation chain's input stage, before the image is decoded.
"""
from __future__ import annotations

import base64
import binascii
import re
import time

from jobs.errors import DeliveryFailed, InvalidRequest, WebhookTargetRefused
from jobs.names import input_key  # noqa: F401 - re-exported: where references are kept
from jobs.settings import Settings

MAX_INPUT_BYTES = 20 * 1024 * 1024
#: The whole fetch (connect, headers, every byte) must finish within this, enforced by a watchdog
#: that shuts the socket then (webhooks/ssrf.py): a server dripping header bytes cannot hold a
#: request for longer. Each read must also come within ``FETCH_READ_TIMEOUT_S``.
FETCH_TIMEOUT_S = 15.0
FETCH_READ_TIMEOUT_S = 5.0
_DATA_URI = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)


def _refuse(message: str, field: str = "image") -> InvalidRequest:
    return InvalidRequest(f"invalid request: {field}: {message}", errors=[{"field": field, "message": message}])


def load_reference(value: str, settings: Settings, max_bytes: int = MAX_INPUT_BYTES, field: str = "image") -> bytes:
    """An input image's bytes; ``InvalidRequest`` naming ``field`` for anything wrong with it."""
    try:
        if value.startswith("data:"):
            return _from_data_uri(value, max_bytes)
        return _fetch(value, settings, max_bytes)
    except InvalidRequest as e:
        if field == "image":
            raise
        raise _refuse(e.errors[0]["message"], field) from None


def _from_data_uri(value: str, max_bytes: int) -> bytes:
    m = _DATA_URI.match(value)
    if not m:
        raise _refuse("data URIs must be data:image/png|jpeg|webp;base64,...")
    payload = value[m.end():]
    if len(payload) * 3 // 4 > max_bytes:
        raise _refuse(f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse("the data URI is not valid base64") from None


def tenant_safe(message: str) -> str:
    """A refusal as a tenant may read it: never what an internal name resolves to."""
    if "resolves to" in message:
        return ("its host resolves to an address that is not allowed (private, loopback, link-local, "
                "metadata or special-purpose)")
    return message


def _fetch(url: str, settings: Settings, max_bytes: int) -> bytes:
    from webhooks.ssrf import check_url, pinned_client

    try:
        target = check_url(url, settings.image_fetch_allow_hosts)
    except (WebhookTargetRefused, DeliveryFailed) as e:
        raise _refuse(f"cannot fetch {url!r}: {tenant_safe(e.message)}") from None
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    late = _refuse(f"fetching {url!r} took longer than {FETCH_TIMEOUT_S:g} s (the whole exchange: connecting, "
                   "the response headers and the image)")
    client = pinned_client(target, FETCH_READ_TIMEOUT_S, deadline=deadline)
    try:
        with client, client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise _refuse(f"fetching {url!r} answered HTTP {resp.status_code} (redirects are not followed)")
            declared = resp.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _refuse(f"the image is larger than {max_bytes} bytes")
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                if time.monotonic() > deadline:
                    raise late
                size += len(chunk)
                if size > max_bytes:
                    raise _refuse(f"the image is larger than {max_bytes} bytes")
                chunks.append(chunk)
            if client.expired:  # the deadline shut the socket: a body read to its close is cut short
                raise late
            return b"".join(chunks)
    except InvalidRequest:
        raise
    except Exception as e:  # noqa: BLE001 - network errors become a clear input error
        if client.expired:  # the deadline shut the socket, in whatever phase the exchange was
            raise late from None
        raise _refuse(f"cannot fetch {url!r}: {type(e).__name__}: {e}") from None
