"""The one error tree every batchrender process shares.

``TransientError``: retrying can succeed (Redis/S3/HTTP 5xx, timeouts, connection resets).
``PermanentError``: it cannot (bad input, content rejected, signing misconfigured).
Celery retry policy reads the class, never the message.
"""
from __future__ import annotations

from typing import Any


class BatchRenderError(Exception):
    """Root of every error batchrender raises on purpose."""

    #: Stable machine-readable code, used in job records and HTTP error bodies.
    code: str = "internal_error"
    #: What a tenant is told instead of ``message`` when the message names the deployment's
    #: insides (a storage path or bucket, a Redis host, a client library's text); the message
    #: then goes to the log only. None: the message is the project's own, for anyone.
    public_message: str | None = None

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **({"details": self.details} if self.details else {})}

    def for_tenants(self, public_message: str):
        """This error with what a tenant is told instead of its message (which names the
        deployment's insides) for this one raise: ``raise PermanentError(detail).for_tenants(...)``."""
        self.public_message = public_message
        return self

    def to_public_dict(self) -> dict[str, Any]:
        """``to_dict`` as a tenant may read it (job records, API answers, webhooks)."""
        if self.public_message is None:
            return self.to_dict()
        return {"code": self.code, "message": self.public_message}


class TransientError(BatchRenderError):
    """Retrying the same operation later can succeed."""

    code = "transient_error"


class PermanentError(BatchRenderError):
    """Retrying cannot succeed; the job fails once with an actionable message."""

    code = "permanent_error"


# -- permanent ---------------------------------------------------------------------------------
class InvalidRequest(PermanentError):
    """Client input failed validation. ``errors`` lists ``{"field", "message"}`` items."""

    code = "invalid_request"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, errors=errors or [])
        self.errors = errors or []


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class JobNotFound(PermanentError):
    code = "not_found"


class JobDeleted(JobNotFound):
    """The job existed and was deleted (by its tenant, or by retention)."""

    code = "deleted"


class OutputNotFound(JobNotFound):
    code = "output_not_found"


class TimeLimitExceeded(PermanentError):
    """The job used its total rendering time over all its attempts."""

    code = "time_limit"


class JobNotEnded(PermanentError):
    """The operation needs an ended job (delete); this one is still queued or running."""

    code = "job_not_ended"


class ParentNotSucceeded(PermanentError):
    """A refinement needs a parent job that succeeded (it refines one of its images)."""

    code = "parent_not_succeeded"


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"


class QuotaExceeded(PermanentError):
    """A tenant limit (jobs queued or running at once) would be exceeded; retry later."""

    code = "too_many_queued_jobs"


class StorageQuotaExceeded(PermanentError):
    """A tenant's stored files would exceed its quota (storage/files.py): retrying does not help
    until files are deleted (or expire)."""

    code = "file_quota_exceeded"


class IdempotencyConflict(PermanentError):
    """An Idempotency-Key was used before with a different request body."""

    code = "idempotency_conflict"


class IdempotencyInProgress(TransientError):
    """The first request with this Idempotency-Key is still being processed."""

    code = "idempotency_in_progress"


class ModerationBlocked(PermanentError):
    """The moderation chain refused the request or its output."""

    code = "moderation_blocked"


class ModerationOutageTooLong(PermanentError):
    """The moderation classifier service has been unavailable for longer than the policy's
    ``outage.max_wait_s``: the job needed it and ends (``failed``, code ``moderation_unavailable``)."""

    code = "moderation_unavailable"


class SigningFailed(PermanentError):
    """C2PA signing could not produce a valid manifest (bad key, expired certificate...)."""

    code = "signing_failed"
    public_message = ("the images could not be signed with Content Credentials (C2PA), so none were delivered: "
                      "a problem of the deployment's signing setup, in the operator's worker log")


class ConfigurationError(PermanentError):
    """Settings, a policy file or a registry entry is wrong; found at start-up, not at the first job."""

    code = "configuration_error"


class UnsafeKey(InvalidRequest):
    """A storage key or template value would escape its prefix or holds forbidden characters."""

    code = "unsafe_key"


class Canceled(PermanentError):
    code = "canceled"


class WebhookTargetRefused(InvalidRequest):
    """A webhook URL points somewhere the SSRF guard does not allow."""

    code = "webhook_target_refused"


# -- transient ---------------------------------------------------------------------------------
class StorageError(TransientError):
    code = "storage_unavailable"
    public_message = "the storage that holds outputs and uploads is unavailable; retrying later can succeed"


class BrokerUnavailable(TransientError):
    code = "broker_unavailable"
    public_message = "Redis or the network is unavailable; retrying later can succeed"


class BatchIncomplete(BrokerUnavailable):
    """The broker failed half-way through a batch: ``queued`` job ids were queued, ``not_queued`` were not."""

    code = "batch_incomplete"
    public_message = None  # which jobs were queued is for the tenant; the cause is named by its class only

    def __init__(self, batch_id: str, queued: list[str], not_queued: list[str], cause: BaseException) -> None:
        super().__init__(
            f"batch {batch_id}: {len(queued)} of {len(queued) + len(not_queued)} jobs were queued before the "
            f"broker became unavailable ({type(cause).__name__}); the other {len(not_queued)} were not queued and "
            "end as failed (code not_queued). Submit those again when the broker is back.",
            batch_id=batch_id, queued=queued, not_queued=not_queued)
        self.batch_id, self.queued, self.not_queued = batch_id, queued, not_queued


class DeliveryFailed(TransientError):
    code = "delivery_failed"


class ModerationUnavailable(TransientError):
    """The moderation classifier service cannot answer now (refused, timed out, 5xx, circuit open).

    The worker puts the job back on the queue (it waits); the API answers 503 with
    ``Retry-After: retry_after_s``. Never raised for a bad answer: that is a verdict by the policy's
    ``fail`` setting (safety/moderation_service.py)."""

    code = "moderation_unavailable"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s
