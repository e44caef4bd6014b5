"""OpenAI-compatible Images API and model list: existing ``openai`` SDK code works by pointing
``base_url`` at ``/v1``. Synchronous for the client (the request waits for the render, as
OpenAI's does); underneath, an ordinary job. Errors in OpenAI's shape (``producer.api.errors``)."""
from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from jobs.errors import TimeLimitExceeded, UnknownModel
from jobs.schemas import RenderRequest, invalid_from
from producer.api.deps import Services, ServicesDep, Tenant, request_base, wait_for_end
from producer.openai_compat import (ImageEdit, ImageGenerate, edit_request, images_response, model_object, models_list,
                                    render_request)
from producer.submit import submit_job
from safety.decode import request_budget

router = APIRouter(prefix="/v1", tags=["openai-compatible"])
_EDIT_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image", "prompt"], "properties": {
        "image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
        "prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": "integer"},
        "size": {"type": "string"}, "response_format": {"type": "string", "enum": ["url", "b64_json"]}}}}}}}


async def _render(svc: Services, request: Request, tenant: str, req: RenderRequest, body: ImageGenerate,
                  idempotency_key: str | None) -> dict:
    """Submit as an ordinary job (someone is waiting: ``interactive`` unless the request says
    otherwise), wait for it without holding a thread, answer OpenAI's way."""
    rec, _, _ = await run_in_threadpool(submit_job, svc.client, svc.idempotency, tenant, req, idempotency_key,
                                        "interactive")
    wait_s = svc.settings.openai_sync_timeout_s
    if not rec.status.terminal:
        rec = await wait_for_end(svc, rec.job_id, wait_s)
    if not rec.status.terminal:
        raise TimeLimitExceeded(f"job {rec.job_id} is still {rec.status.value} after {wait_s:g} s; it keeps "
                                f"running: GET /v1/jobs/{rec.job_id}")
    return await run_in_threadpool(images_response, svc.client, rec, body, request_base(request))


@router.post("/images/generations")
async def images_generate(body: ImageGenerate, request: Request, svc: ServicesDep, tenant: Tenant,
                          idempotency_key: str | None = Header(None, max_length=255)) -> dict:
    """Render and answer ``{created, data: [{url | b64_json}], ...}`` when done (at most
    ``BATCHRENDER_OPENAI_SYNC_TIMEOUT_S``). A refused prompt is a 400 ``moderation_blocked``."""
    req = await run_in_threadpool(render_request, svc.client, body)
    return await _render(svc, request, tenant, req, body, idempotency_key)


@router.post("/images/edits", openapi_extra=_EDIT_FORM)
async def images_edit(request: Request, svc: ServicesDep, tenant: Tenant,
                      idempotency_key: str | None = Header(None, max_length=255)) -> dict:
    """Image-to-image from ``image`` (or ``image[]``, up to 16: the first drives the render, every
    one is checked), inpainting with ``mask`` (transparent where the image is to change)."""
    form = await request.form()
    images = [await f.read() for key in ("image", "image[]") for f in form.getlist(key) if hasattr(f, "read")]
    mask_file = form.get("mask")
    mask = await mask_file.read() if hasattr(mask_file, "read") else None
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k not in ("image", "image[]", "mask")}
    try:
        body = ImageEdit.model_validate(fields)
    except ValidationError as e:
        raise invalid_from(e) from None
    # One decode budget for every image of the request: the edit's checks and the job's share it.
    with request_budget(svc.settings.image_decode_request_pixels, svc.settings.image_decode_request_cpu_s):
        req = await run_in_threadpool(edit_request, svc.client, body, images, mask)
        return await _render(svc, request, tenant, req, body, idempotency_key)


@router.get("/models")
def list_models(svc: ServicesDep, tenant: Tenant) -> dict:
    """The models this deployment renders (the registry)."""
    return models_list(svc.client)


@router.get("/models/{model}")
def get_model(model: str, svc: ServicesDep, tenant: Tenant) -> dict:
    models = svc.client.registry.all()
    if model not in models:
        raise UnknownModel(f"no model {model!r}; available: {', '.join(sorted(models))}",
                           errors=[{"field": "model", "message": "unknown"}])
    return model_object(models[model])
