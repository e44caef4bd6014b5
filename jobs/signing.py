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
for processes sharing one home (the embedded broker). With ``BATCHRENDER_REDIS_URL`` set the
processes may be on several hosts, whose key files would differ: then the key must be set
(``require_shared_keys``). It is never kept in Redis; jobs/fleet.py publishes a fingerprint of it.

**A signed message is bound to its job's life.** The producer signs an expiry
(``expires_at``, ``BATCHRENDER_MESSAGE_TTL_S`` after submission) and a nonce that is also kept in
the job's record. A worker drops a message that verifies but is stale: its job was deleted (the
tombstone outlives every message of the job: ``JobStore.delete``), its expiry has passed (a job
still queued or running then fails as ``message_expired``), or its nonce is not the record's.
Without this, a message captured from the broker and published again after ``DELETE`` would
rebuild the deleted job's record and render it again. A message signed before these fields
existed (none of them set) still verifies, but cannot rebuild a record that is gone. Every drop
is logged, counted (``batchrender_render_messages_dropped{reason}``) and tallied in Redis
(``br:stats:messages_dropped``).

**The link key** (:func:`link_key`) signs keyless output and gallery links (storage/links.py):
``BATCHRENDER_URL_SIGNING_KEY`` when set, otherwise derived from the message key (HMAC-SHA256 of a
fixed label under it), so every process that shares the message key makes and accepts the same
links with nothing more to configure. Like the message key it is never kept in Redis: whoever
reads Redis cannot forge a link. (Deployments before this kept a random link key in Redis, under
``br:url-signing-key``; it is ignored now, and links signed with it stop verifying.)

A message that does not verify is dropped. When the job's own stored message (the copy the
producer wrote with its record, which the sweep re-sends) does not verify either, this worker's
key is not the producer's: ``CheckedMessages`` counts it per job, and after
``BATCHRENDER_UNVERIFIABLE_MESSAGE_LIMIT`` such drops the job fails as ``message_unverifiable``
instead of being re-sent and dropped forever. A message forged for a job whose stored copy
verifies leaves that job alone.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from jobs.errors import ConfigurationError, PermanentError
from jobs.metrics import MESSAGES_DROPPED
from jobs.names import KEY_PREFIX, deleted_key, job_key
from jobs.schemas import JobMessage
from jobs.settings import Settings

log = logging.getLogger(__name__)
KEY_FILE = Path("keys") / "message.key"
#: Per job: its messages dropped because neither they nor its stored message verified.
UNVERIFIED_PREFIX = f"{KEY_PREFIX}unverified:"
#: Shortest message-signing key accepted (bytes).
MIN_KEY_BYTES = 16
#: Render messages workers dropped, by reason (a hash: reason -> count).
DROPPED_KEY = f"{KEY_PREFIX}stats:messages_dropped"
#: What the link key is derived from the message key with (a label no other use shares).
LINK_KEY_LABEL = b"batchrender signed links v1"
#: Fields a message signed before they existed lacks: left out of the MAC when unset.
_LATER_FIELDS = ("expires_at", "nonce")


class ForgedMessage(PermanentError):
    """A render message without a valid signature: not made by this deployment, or altered."""

    code = "forged_message"


class StaleMessage(ForgedMessage):
    """A genuine render message that no longer belongs to a live job: deleted, expired, or made
    for another record of the id. Dropped like a forged one; ``reason`` says which."""

    code = "stale_message"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MessageExpired(PermanentError):
    """A job whose render message expired before a worker could finish it (``message_ttl_s``)."""

    code = "message_expired"


class MessageUnverifiable(ForgedMessage):
    """A job's messages keep failing verification because its producer signed with another key:
    the job fails with this error (``message_unverifiable``) after the limit."""

    code = "message_unverifiable"


def require_shared_keys(settings: Settings) -> None:
    """With ``BATCHRENDER_REDIS_URL`` set, refuse per-host key files: processes on other hosts
    would make keys of their own (jobs would stay queued, webhook events pending)."""
    if settings.redis_url is None:
        return
    missing = [name for name, value in (("BATCHRENDER_MESSAGE_SIGNING_KEY", settings.message_signing_key),
                                        ("BATCHRENDER_SECRETS_KEY", settings.secrets_key)) if value is None]
    if missing:
        raise ConfigurationError(
            f"BATCHRENDER_REDIS_URL is set, so processes may run on several hosts, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: each host would make its own key file and the others "
            "could not read its messages or secrets. Make the keys once (`batchrender keys signing-key`, "
            "`batchrender keys secrets-key`) and set BATCHRENDER_MESSAGE_SIGNING_KEY and BATCHRENDER_SECRETS_KEY "
            "to the same values on every API, producer and worker process")


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
        key = settings.message_signing_key.get_secret_value().encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigurationError(f"BATCHRENDER_MESSAGE_SIGNING_KEY is shorter than {MIN_KEY_BYTES} bytes; "
                                     "make one with `batchrender keys signing-key`")
        return key
    require_shared_keys(settings)
    return local_key(settings.home / KEY_FILE, lambda: secrets.token_hex(32))


def link_key(settings: Settings) -> bytes:
    """The deployment's key for signed links (see the module doc): ``BATCHRENDER_URL_SIGNING_KEY``,
    or one derived from the message key. Never read from or written to Redis."""
    if settings.url_signing_key is not None:
        key = settings.url_signing_key.get_secret_value().encode()
        if len(key) < MIN_KEY_BYTES:
            raise ConfigurationError(f"BATCHRENDER_URL_SIGNING_KEY is shorter than {MIN_KEY_BYTES} bytes; "
                                     "make one with `batchrender keys signing-key`, or leave it unset to derive "
                                     "it from the message-signing key")
        return key
    return hmac.new(message_key(settings), LINK_KEY_LABEL, hashlib.sha256).hexdigest().encode()


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a message signing key needs at least 16 bytes")
        self._key = key

    @classmethod
    def for_settings(cls, settings: Settings) -> "Signer":
        return cls(message_key(settings))

    def _mac(self, msg: JobMessage) -> str:
        unset = {name for name in _LATER_FIELDS if getattr(msg, name) is None}
        body = json.dumps(msg.model_dump(mode="json", exclude={"signature", *unset}), sort_keys=True,
                          separators=(",", ":"))
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


class CheckedMessages:
    """A worker's ``ctx.messages``: signs and verifies like ``Signer``, and ends a job whose
    messages keep failing because its producer used another key (see the module doc).

    ``store``: the job store (``jobs.store.JobStore``); ``fail(stored_msg, error)``: the worker's
    one way a job ends (``JobRunner.fail``); ``limit``: drops before it is called."""

    def __init__(self, signer: Signer, store: Any, fail: Callable[[JobMessage, MessageUnverifiable], Any],
                 limit: int, who: str = "this worker") -> None:
        self.signer = signer
        self.store = store
        self.fail = fail
        self.limit = limit
        self.who = who

    def sign(self, msg: JobMessage) -> JobMessage:
        return self.signer.sign(msg)

    def verify(self, msg: JobMessage) -> JobMessage:
        """``msg`` when it is this deployment's and still belongs to a live job; ``ForgedMessage``
        (``StaleMessage`` for a replayed one) otherwise, counted."""
        try:
            self.signer.verify(msg)
        except ForgedMessage as e:
            self._dropped("forged")
            try:
                ended = self._count(msg)
            except Exception:  # noqa: BLE001 - Redis away: the message is dropped; its next copy counts
                log.warning("could not count the unverifiable message of job %s", msg.job_id, exc_info=True)
                ended = None
            if ended is not None:
                raise ended from e
            raise
        try:
            self._check_life(msg)
        except StaleMessage as e:
            self._dropped(e.reason)
            raise
        return msg

    def _check_life(self, msg: JobMessage) -> None:
        """``StaleMessage`` unless the job of ``msg`` is alive and the message is its own (the
        module doc). A job still queued or running whose message expired is failed first."""
        r = self.store.r
        with r.pipeline(transaction=False) as p:
            p.exists(deleted_key(msg.job_id))
            p.hmget(job_key(msg.job_id), "status", "nonce", "message")
            deleted, (status, nonce, raw) = p.execute()
        if deleted:
            raise StaleMessage(f"render message for {msg.job_id}: the job was deleted; a replayed message "
                               "does not bring it back", "deleted")
        if status is not None and nonce and msg.nonce != nonce:
            raise StaleMessage(f"render message for {msg.job_id} does not belong to the job's record (its nonce "
                               "differs): a message of an earlier record of this id, replayed", "nonce")
        if msg.expires_at is not None and time.time() > msg.expires_at:
            if status in ("queued", "running") and raw:
                stored = JobMessage.model_validate_json(raw)
                self.fail(stored, MessageExpired(
                    f"the job's render message expired at {msg.expires_at:.0f} (BATCHRENDER_MESSAGE_TTL_S after "
                    "submission) before a worker finished it; submit it again"))
            raise StaleMessage(f"render message for {msg.job_id} expired at {msg.expires_at:.0f}", "expired")
        if status is None and msg.expires_at is None:
            raise StaleMessage(f"render message for {msg.job_id} has no expiry (signed before messages carried "
                               "one) and its job's record is gone: it cannot bring the job back", "no_expiry")

    def _dropped(self, reason: str) -> None:
        MESSAGES_DROPPED.labels(reason).inc()
        try:
            self.store.r.hincrby(DROPPED_KEY, reason, 1)
        except Exception:  # noqa: BLE001 - a tally only: Redis away does not stop the drop
            log.debug("could not tally a dropped message", exc_info=True)

    def _count(self, msg: JobMessage) -> MessageUnverifiable | None:
        """Count a drop when the job's stored message fails too; at the limit, fail the job."""
        r = self.store.r
        status, raw = r.hmget(job_key(msg.job_id), "status", "message")
        if not raw or status not in ("queued", "running"):
            # No record (a forged job id), one without a stored message (nothing to judge by), or
            # a job that ended already (a copy still in flight when it failed): just dropped.
            return None
        stored = JobMessage.model_validate_json(raw)
        if not stored.signature:
            return None
        try:
            self.signer.verify(stored)
            return None  # the job's own message verifies: this copy was forged or altered
        except ForgedMessage:
            pass
        key = UNVERIFIED_PREFIX + msg.job_id
        with r.pipeline(transaction=True) as p:
            p.incr(key)
            p.expire(key, max(60, int(getattr(self.store, "ttl_s", 86400))))
            count = int(p.execute()[0])
        log.error("job %s: its message is signed with another key than %s's (%d of %d before the job fails); "
                  "check BATCHRENDER_MESSAGE_SIGNING_KEY on every host", msg.job_id, self.who, count, self.limit)
        if count < self.limit:
            return None
        err = MessageUnverifiable(
            f"the render message of job {msg.job_id} failed verification {count} times: it was signed with "
            f"another message-signing key than {self.who}'s. Set BATCHRENDER_MESSAGE_SIGNING_KEY to the same "
            "value on every API, producer and worker process (`batchrender doctor` names the hosts that "
            "differ), then submit the job again")
        self.fail(stored, err)
        r.delete(key)
        return err
