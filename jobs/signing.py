"""Signed task messages: a render message is accepted only if a producer (or a worker) of this
deployment made it.

Redis is the broker, so anyone who can write to Redis could otherwise queue a job in another
tenant's name, take over a queued job or skip the request limits. Every ``JobMessage`` carries
``signature``: HMAC-SHA256 over its canonical JSON (sorted keys, the signature left out) with the
deployment's message key. Producers sign when they prepare a message; workers sign only messages
they change (a moderation re-roll); every render task verifies before it touches the job, and
drops what does not verify. The job sweep re-publishes the stored copy with its stored signature.

The key: ``BATCHRENDER_MESSAGE_SIGNING_KEY``, the same for every API, producer and worker process.
Unset, a key file ``$BATCHRENDER_HOME/keys/message.key`` is made on first use (mode 0600): enough
for processes sharing one home (the embedded default, tests, one host). It is never kept in Redis.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Callable

from jobs.errors import PermanentError
from jobs.schemas import JobMessage
from jobs.settings import Settings

KEY_FILE = Path("keys") / "message.key"


class ForgedMessage(PermanentError):
    """A render message without a valid signature: not made by this deployment, or altered."""

    code = "forged_message"


def local_key(path: Path, make: Callable[[], str]) -> bytes:
    """The key kept in ``path`` (mode 0600), made with ``make`` by the first process or thread
    to need it. The file appears whole or not at all (written aside, then linked into place), so
    a concurrent reader never sees it empty; whoever links second uses the first one's key."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process or thread made it first: use theirs
    finally:
        os.unlink(tmp)
    return path.read_bytes().strip()


def message_key(settings: Settings) -> bytes:
    """The deployment's message key (see the module doc)."""
    if settings.message_signing_key is not None:
        return settings.message_signing_key.get_secret_value().encode()
    return local_key(settings.home / KEY_FILE, lambda: secrets.token_hex(32))


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a message signing key needs at least 16 bytes")
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> "Signer":
        return cls(message_key(settings))

    def _mac(self, msg: JobMessage) -> str:
        body = json.dumps(msg.model_dump(mode="json", exclude={"signature"}), sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def sign(self, msg: JobMessage) -> JobMessage:
        signed = msg.model_copy(update={"signature": self._mac(msg)})
        signed._input_bytes, signed._mask_bytes = msg._input_bytes, msg._mask_bytes
        return signed

    def verify(self, msg: JobMessage) -> JobMessage:
        """``msg`` when its signature is this deployment's; ``ForgedMessage`` otherwise."""
        if not msg.signature:
            raise ForgedMessage(f"render message for {msg.job_id} is not signed")
        if not hmac.compare_digest(self._mac(msg), msg.signature):
            raise ForgedMessage(f"render message for {msg.job_id} does not match its signature (altered, or "
                                "signed with another key: check BATCHRENDER_MESSAGE_SIGNING_KEY)")
        return msg
