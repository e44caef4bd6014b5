"""Submission rules shared by the HTTP API and the CLI: tenant capacity, webhook targets,
idempotency keys, and batch bodies (JSON or JSONL) with errors reported per line.

Everything here raises ``jobs.errors`` exceptions; the API maps their codes to HTTP statuses.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from jobs.errors import (BrokerUnavailable, DeliveryFailed, IdempotencyConflict, IdempotencyInProgress, InvalidRequest, JobNotFound,
                         QuotaExceeded, UnsupportedMediaType, WebhookTargetRefused)
from jobs.schemas import RenderRequest, check_batch_metadata, invalid_from
from jobs.store import JobRecord
from producer.inputs import tenant_safe

#: Items in one batch, as a JSON list or JSONL lines.
MAX_BATCH_ITEMS = 10_000
#: How long a request that replays an Idempotency-Key waits for the first one to record its job.
IDEMPOTENCY_RACE_S = 2.0
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines", "text/plain")
#: How a refused loopback or private receiver (a development one) is allowed: the API checks the
#: URL at submission and each worker at every delivery attempt, so both need the setting.
ALLOW_HOSTS_HINT = ("; to deliver to such a receiver (a local one in development, say), list its host name, "
                    "address or network in BATCHRENDER_WEBHOOK_ALLOW_HOSTS (comma-separated) for the API and "
                    "for every worker: both check it, at submission and at each delivery")
# Characters no host name holds; refused at submission rather than failing every delivery attempt.
_BAD_HOST_CHARS = re.compile(r"[\x00-\x20\x7f<>\"{}|\\^`%]")


class BatchCreate(BaseModel):
    """A batch as JSON. Each item is a render request (``custom_id`` recommended)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "requests": [{"prompt": "a red bicycle, studio photo", "custom_id": "sku-1", "seed": 7},
                     {"prompt": "a blue bicycle, studio photo", "custom_id": "sku-2", "seed": 7}],
        "metadata": {"campaign": "spring"}}]})
    requests: list[dict[str, Any]] = Field(..., max_length=MAX_BATCH_ITEMS)
    webhook: str | None = Field(None, max_length=2048)
    webhook_events_filter: list[str] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(check_batch_metadata)] = Field(default_factory=dict)


def reserve_capacity(client, tenant: str, adding: int) -> None:
    """Take ``adding`` of the tenant's queued-or-running slots at once (atomic: concurrent submits
    cannot overshoot); QuotaExceeded naming the count when they would pass the limit. The caller
    hands the slots to ``enqueue``/``submit_batch`` (``reserved``), which give back unused ones."""
    limit = client.settings.api_max_queued_per_tenant
    if client.store.reserve(tenant, adding, limit) is None:
        active = client.store.tenant_active(tenant)
        raise QuotaExceeded(f"{active} jobs are queued or running and this adds {adding}; the limit is {limit}")


def check_webhook(req: RenderRequest, settings) -> None:
    """Refuse webhook targets the SSRF guard refuses now; DNS trouble is left to delivery time,
    which checks every attempt again."""
    from webhooks.events import parse_event_filter

    parse_event_filter(req.webhook_events_filter)  # bounded and known, with or without a webhook
    if not req.webhook:
        return
    from webhooks.ssrf import check_url, parse_url

    if _BAD_HOST_CHARS.search(parse_url(req.webhook)[1]):
        raise WebhookTargetRefused("webhook URL host holds characters no host name can have")
    try:
        check_url(req.webhook, settings.webhook_allow_hosts)
    except DeliveryFailed:
        check_url(req.webhook, settings.webhook_allow_hosts, resolve=False)
    except WebhookTargetRefused as e:
        message = tenant_safe(e.message)
        if "BATCHRENDER_WEBHOOK_ALLOW_HOSTS" in e.message:  # an address class an operator may allow
            message += ALLOW_HOSTS_HINT
        raise WebhookTargetRefused(f"webhook URL refused: {message}") from None
    except (ValueError, UnicodeError) as e:  # a host name getaddrinfo cannot even encode
        raise WebhookTargetRefused(f"webhook URL host is not a valid name: {e}") from None


class Idempotency:
    """``Idempotency-Key`` handling: the first request with a key claims it (and its job id);
    a repeat with the same body gets that job, with a different body a conflict."""

    def __init__(self, client) -> None:
        self.store = client.store

    @staticmethod
    def job_id(tenant: str, key: str) -> str:
        return "job_" + hashlib.sha256(f"{tenant}:{key}".encode()).hexdigest()[:32]

    def claim(self, tenant: str, key: str, body: RenderRequest) -> JobRecord | None:
        """None when this request now owns the key; else the job an earlier request created."""
        digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        while not self.store.idempotency_claim(tenant, key, digest, self.job_id(tenant, key)):
            prior = self._prior(tenant, key, digest)
            if prior is not None:
                return prior
        return None

    def release(self, tenant: str, key: str) -> None:
        """Nothing was accepted: let the client retry with the same key."""
        self.store.idempotency_release(tenant, key)

    def _prior(self, tenant: str, key: str, digest: str) -> JobRecord | None:
        deadline = time.monotonic() + IDEMPOTENCY_RACE_S
        while True:
            prior = self.store.idempotency_prior(tenant, key)
            if prior is None:
                return None  # the first request failed and released the key: this one proceeds
            if prior["body"] != digest:
                raise IdempotencyConflict("this Idempotency-Key was used with a different request body; "
                                          "use a new key for a new request")
            try:
                rec = self.store.get(prior["job_id"])
                if rec.tenant == tenant:
                    return rec
            except JobNotFound:
                pass
            if time.monotonic() > deadline:
                raise IdempotencyInProgress("a request with this Idempotency-Key is still being processed; "
                                            "retry shortly")
            time.sleep(0.05)


def parse_batch(raw: bytes, ctype: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(numbered items, per-line errors, batch options) from a JSON or JSONL body."""
    items: list[tuple[int, Any]] = []
    errors: list[dict[str, Any]] = []
    if ctype in JSONL_TYPES:
        for lineno, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except (ValueError, RecursionError) as e:
                errors.append({"line": lineno, "custom_id": None, "code": "invalid_json", "message": str(e)})
        if len(items) + len(errors) > MAX_BATCH_ITEMS:
            raise InvalidRequest(f"a batch holds at most {MAX_BATCH_ITEMS} lines")
        return items, errors, {}
    if ctype == "application/json":
        try:
            body = BatchCreate.model_validate_json(raw)
        except ValidationError as e:
            bad = invalid_from(e)
            raise InvalidRequest(f"batch body: {bad.message.removeprefix('invalid request: ')}",
                                 errors=bad.errors) from None
        if body.webhook_events_filter is not None:  # once for the batch, not once per line
            from webhooks.events import parse_event_filter

            parse_event_filter(body.webhook_events_filter)
        return list(enumerate(body.requests, 1)), errors, {
            "webhook": body.webhook, "webhook_events_filter": body.webhook_events_filter, "meta": body.metadata}
    raise UnsupportedMediaType("send a batch as application/json ({\"requests\": [...]}) or "
                               "application/jsonl (one request per line)")


def submit_batch_body(client, tenant: str, raw: bytes, ctype: str) -> dict[str, Any]:
    """Validate every item, queue the valid ones as one batch; the batch plus per-line errors."""
    items, errors, options = parse_batch(raw, ctype)
    limit = client.settings.max_batch_jobs
    if len(items) + len(errors) > limit:
        raise InvalidRequest(f"a batch holds at most {limit} jobs (BATCHRENDER_MAX_BATCH_JOBS); this one has "
                             f"{len(items) + len(errors)}: split it", errors=[{"field": "requests",
                                                                               "message": f"at most {limit}"}])
    good: list[tuple[int, RenderRequest]] = []
    seen: set[str] = set()
    for line, item in items:
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict):
                raise InvalidRequest("each item must be a JSON object (a render request)")
            if options.get("webhook") and "webhook" not in item:
                item = {**item, "webhook": options["webhook"], "webhook_events_filter": options["webhook_events_filter"]}
            req = RenderRequest.parse(item)
            check_webhook(req, client.settings)
        except InvalidRequest as e:
            errors.append({"line": line, "custom_id": custom_id if isinstance(custom_id, str) else None,
                           "code": e.code, "message": e.message, "errors": e.errors})
            continue
        if req.custom_id is not None and req.custom_id in seen:
            errors.append({"line": line, "custom_id": req.custom_id, "code": "duplicate_custom_id",
                           "message": f"custom_id {req.custom_id!r} is used by an earlier line; results "
                           "are joined on custom_id, so each must be unique in a batch"})
            continue
        if req.custom_id is not None:
            seen.add(req.custom_id)
        good.append((line, req))
    if not good:
        errors.sort(key=lambda x: x["line"])
        raise InvalidRequest("the batch holds no valid request" +
                             (f"; line {errors[0]['line']}: {errors[0]['message']}" if errors else " (it is empty)"),
                             errors=errors)
    reserve_capacity(client, tenant, len(good))
    sub = client.submit_batch([r for _, r in good], tenant=tenant, meta=options.get("meta"), reserved=len(good))
    for index, e in sub.errors:
        line, req = good[index]
        errors.append({"line": line, "custom_id": req.custom_id, "code": e.code, "message": e.message,
                       "errors": e.errors})
    info = client.store.batch_info(sub.batch_id)
    return {**info, "accepted": len(sub.job_ids), "rejected": len(errors),
            "errors": sorted(errors, key=lambda x: x["line"])}


def submit_job(client, idempotency: Idempotency, tenant: str, body: RenderRequest,
               idempotency_key: str | None = None, priority: str = "normal") -> tuple[JobRecord, bool, bool]:
    """Queue one job for ``tenant``: (its record, whether an earlier request with the same
    ``idempotency_key`` had already created it, whether it is an earlier job of the same content
    that ``cache: "reuse"`` answers with: nothing was queued then; ``producer.result_cache``).
    ``priority``: the job's when the request names none."""
    check_webhook(body, client.settings)
    content = None
    if body.cache == "reuse":
        from producer import result_cache

        cached, content = result_cache.lookup(client, tenant, body)
        if cached is not None:
            return cached, False, True
    job_id = None
    if idempotency_key:
        prior = idempotency.claim(tenant, idempotency_key, body)
        if prior is not None:
            return prior, True, False
        job_id = idempotency.job_id(tenant, idempotency_key)
    try:
        reserve_capacity(client, tenant, 1)
    except BaseException:
        if idempotency_key:
            idempotency.release(tenant, idempotency_key)
        raise
    msg = None
    try:
        msg = client.prepare(body, tenant=tenant, job_id=job_id, priority=priority)
        client.enqueue(msg, reserved=True)
    except BaseException:
        _give_back_unused(client, tenant, msg)
        if idempotency_key:
            idempotency.release(tenant, idempotency_key)
        raise
    if content is not None:
        from producer import result_cache

        result_cache.remember(client, tenant, content, msg.job_id)
    return client.store.get(msg.job_id), False, False


def _give_back_unused(client, tenant: str, msg) -> None:
    """A submit failed after taking a slot: give it back unless a record now holds it."""
    try:
        if msg is None or client.store.status(msg.job_id) is None:
            client.store.release(tenant, 1)
    except BrokerUnavailable:
        pass  # Redis is away: the count stays high by one (docs/security.md)
