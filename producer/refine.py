"""Multi-turn refinement: a new job that is image-to-image from an earlier job's image.

``refine`` takes a succeeded job (the parent) and a new prompt and queues a child job that
renders from one of the parent's images (``image_index``, 0 by default) with that image's seed
and the parent's model and size; steps and strength may be changed. The parent image's bytes
are read from storage — never from the client — and become the child's reference image through
the ordinary image-to-image path (checked by the input-image stage, stored under the child's
input key). The new prompt passes the same prompt moderation as any job.

The child's record and message carry a ``jobs.lineage.Lineage`` (parent, image index, turn,
root); its worker lists the parent image as the ``parentOf`` ingredient of the child's C2PA
manifest (worker/refine.py). ``lineage`` walks a job's parents back to the root.

A tenant refines and reads only its own jobs: another tenant's job is "not found", exactly like
an unknown id. The CLI (an operator) passes ``tenant=ANY_TENANT``.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import InvalidRequest, JobNotFound, ParentNotSucceeded
from jobs.lineage import MAX_TURNS, Lineage
from jobs.schemas import ImageResult, RenderRequest, find_surrogate, invalid_from, prompt_text, surrogate_error
from jobs.status import JobStatus
from jobs.store import JobRecord
from producer.submit import _give_back_unused, check_webhook, reserve_capacity

#: ``tenant`` for an operator (the CLI): any tenant's job may be refined; the child is the parent's tenant's.
ANY_TENANT = object()
#: Request fields a child takes from its parent's (resolved) request as they were.
INHERITED = ("model", "negative_prompt", "guidance_scale", "output_format", "quality", "background", "palette")


class RefineRequest(BaseModel):
    """A refinement of one image of a succeeded job. Model, size and seed are the parent's."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "make the jacket red", "image_index": 0, "strength": 0.6}]})

    prompt: str = Field(..., description="What to change or render now (1–2000 characters).")
    image_index: int = Field(0, ge=0, strict=True, description="Which of the parent's images to refine.")
    strength: float | None = Field(None, gt=0, le=1, strict=True, description=(
        "How far to move from the parent image (0-1]; the deployment's default when unset."))
    steps: int | None = Field(None, ge=1, le=500, strict=True, description="The parent's when unset.")
    custom_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook: str | None = Field(None, max_length=2048)
    webhook_events_filter: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        # As for RenderRequest: a lone surrogate is not text, and could not even be hashed for an
        # Idempotency-Key; refused before anything else, naming where.
        found = find_surrogate(data) if isinstance(data, dict) else None
        if found:
            raise surrogate_error(*found)
        return data

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return prompt_text(v)


def _owned(client, tenant: Any, job_id: str) -> JobRecord:
    """The job when ``tenant`` may see it; ``JobNotFound`` (as for an unknown id) otherwise."""
    try:
        rec = client.store.get(job_id)
    except JobNotFound:
        rec = None
    if rec is None or (tenant is not ANY_TENANT and rec.tenant != tenant):
        raise JobNotFound(f"no job {job_id!r}")
    return rec


def parent_image(client, tenant: Any, parent_id: str, index: int) -> tuple[JobRecord, ImageResult, bytes]:
    """The parent's record, the image to refine and its stored (signed) bytes; refusals name the field."""
    rec = _owned(client, tenant, parent_id)
    if rec.status is not JobStatus.SUCCEEDED:
        hint = "wait for it to succeed" if not rec.status.terminal else "refine a job that succeeded"
        raise ParentNotSucceeded(
            f"job {parent_id} is {rec.status.value}; only a succeeded job's image can be refined: {hint}",
            errors=[{"field": "job_id", "message": f"job is {rec.status.value}; allowed: succeeded"}])
    images = {i.index: i for i in (rec.result.images if rec.result else [])}
    if index not in images:
        allowed = ", ".join(str(i) for i in sorted(images)) or "none (it delivered no image)"
        message = f"{index} is out of range; job {parent_id} has {len(images)} image(s): allowed {allowed}"
        raise InvalidRequest(f"invalid request: image_index: {message}",
                             errors=[{"field": "image_index", "message": message}])
    image = images[index]
    try:
        data = client.storage.get(image.key)
    except KeyError:
        message = f"image {index} of job {parent_id} is no longer stored (deleted or past retention)"
        raise InvalidRequest(f"invalid request: image_index: {message}",
                             errors=[{"field": "image_index", "message": message}]) from None
    if hashlib.sha256(data).hexdigest() != image.sha256:
        message = f"the stored image {index} of job {parent_id} is not the one delivered (SHA-256 differs)"
        raise InvalidRequest(f"invalid request: image_index: {message}",
                             errors=[{"field": "image_index", "message": message}])
    return rec, image, data


def child_request(parent: JobRecord, image: ImageResult, data: bytes, body: RefineRequest) -> RenderRequest:
    """The child's render request: the parent image as reference, its seed, the parent's model and size."""
    fields: dict[str, Any] = {k: parent.request[k] for k in INHERITED if parent.request.get(k) is not None}
    mime = "image/" + image.format.value
    fields.update(
        prompt=body.prompt, width=image.width, height=image.height, seed=image.seed, num_images=1,
        steps=body.steps or parent.request.get("steps"), strength=body.strength,
        image=f"data:{mime};base64," + base64.b64encode(data).decode("ascii"),
        custom_id=body.custom_id, metadata=body.metadata, webhook=body.webhook,
        webhook_events_filter=body.webhook_events_filter)
    return RenderRequest.parse(fields)


class _Keyed(BaseModel):
    """What an ``Idempotency-Key`` of a refinement stands for: this parent, this body."""

    parent_id: str
    refine: RefineRequest


def refine(client, parent_id: str, body: RefineRequest | dict[str, Any], *, tenant: Any) -> JobRecord:
    """Queue a refinement of ``parent_id``'s image ``body.image_index``; the child's record.

    Raises ``JobNotFound`` (unknown id, or another tenant's), ``ParentNotSucceeded``,
    ``InvalidRequest`` naming the field, ``QuotaExceeded``. A blocked prompt ends the child as
    ``blocked`` (never queued), as for any job.
    """
    return refine_once(client, None, parent_id, body, tenant=tenant)[0]


def refine_once(client, idempotency, parent_id: str, body: RefineRequest | dict[str, Any], *, tenant: Any,
                idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
    """``refine`` with an ``Idempotency-Key`` (``producer.submit.Idempotency``): (the child's
    record, whether an earlier request with the same key and body had already created it)."""
    if not isinstance(body, RefineRequest):
        try:
            body = RefineRequest.model_validate(body)
        except ValidationError as e:
            raise invalid_from(e) from None
    if not idempotency_key:
        return _refine(client, parent_id, body, tenant, None), False
    prior = idempotency.claim(tenant, idempotency_key, _Keyed(parent_id=parent_id, refine=body))
    if prior is not None:
        return prior, True
    try:
        return _refine(client, parent_id, body, tenant, idempotency.job_id(tenant, idempotency_key)), False
    except BaseException:
        idempotency.release(tenant, idempotency_key)
        raise


def _refine(client, parent_id: str, body: RefineRequest, tenant: Any, job_id: str | None) -> JobRecord:
    parent, image, data = parent_image(client, tenant, parent_id, body.image_index)
    turn = (parent.lineage or {}).get("turn", 0) + 1
    if turn > MAX_TURNS:
        message = f"job {parent_id} is turn {turn - 1}; a chain holds at most {MAX_TURNS} refinements"
        raise InvalidRequest(f"invalid request: job_id: {message}", errors=[{"field": "job_id", "message": message}])
    lineage = Lineage(parent_id=parent.job_id, parent_index=image.index, turn=turn,
                      root_id=(parent.lineage or {}).get("root_id", parent.job_id),
                      parent_sha256=image.sha256)
    req = child_request(parent, image, data, body)
    check_webhook(req, client.settings)
    owner = parent.tenant  # a chain stays within one tenant
    if owner:
        reserve_capacity(client, owner, 1)
    msg = None
    try:
        prepared = client.prepare(req, tenant=owner, job_id=job_id, priority="interactive")
        msg = client.signer.sign(prepared.model_copy(update={"lineage": lineage}))
        msg._input_bytes, msg._mask_bytes = prepared._input_bytes, prepared._mask_bytes
        client.enqueue(msg, reserved=bool(owner))
    except BaseException:
        if owner:
            _give_back_unused(client, owner, msg)
        raise
    return client.store.get(msg.job_id)


def lineage(client, job_id: str, *, tenant: Any, base: str | None = None) -> dict[str, Any]:
    """The chain from its root to ``job_id``: each turn's id, status, turn, prompt and the URL of
    the image carried forward (for the job itself, its first image). A parent that was deleted
    or has expired appears with ``status`` None and nothing else known but its id and turn."""
    rec = _owned(client, tenant, job_id)
    chain: list[tuple[str, JobRecord | None, int]] = [(rec.job_id, rec, (rec.lineage or {}).get("turn", 0))]
    while len(chain) <= MAX_TURNS:
        _, child, turn = chain[-1]
        if child is None or not child.lineage:
            break
        pid = child.lineage["parent_id"]
        try:
            parent = client.store.get(pid)
        except JobNotFound:
            parent = None
        if parent is not None and parent.tenant != rec.tenant:
            parent = None  # never show another tenant's job (a chain never crosses tenants)
        chain.append((pid, parent, turn - 1))
    chain.reverse()
    turns = []
    for i, (jid, r, turn) in enumerate(chain):
        nxt = chain[i + 1][1] if i + 1 < len(chain) else None
        index = nxt.lineage["parent_index"] if nxt is not None and nxt.lineage else 0
        turns.append(_turn(client, jid, r, turn, index if nxt is not None else None, base))
    root = (rec.lineage or {}).get("root_id", rec.job_id)
    return {"id": rec.job_id, "root_id": root, "turns": turns}


def _turn(client, job_id: str, rec: JobRecord | None, turn: int, carried: int | None,
          base: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": job_id, "turn": turn, "status": None, "prompt": None, "parent_id": None,
                           "parent_index": None, "image_index": None, "output_url": None}
    if rec is None:
        return out
    out.update(status=rec.status.value, prompt=rec.request.get("prompt"),
               parent_id=(rec.lineage or {}).get("parent_id"), parent_index=(rec.lineage or {}).get("parent_index"))
    images = {i.index: i for i in (rec.result.images if rec.result else [])}
    index = carried if carried is not None else (min(images) if images else None)
    if index is not None and index in images:
        out.update(image_index=index,
                   output_url=client.links.view(job_id, images[index], base, stable=rec.tenant is not None)["url"])
    return out
