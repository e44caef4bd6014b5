"""OpenAI-compatible Images API and model list: existing ``openai`` SDK code works by pointing
``base_url`` at ``/v1``. Synchronous for the client (the request waits for the render, as
OpenAI's does); underneath, an ordinary job. Errors in OpenAI's shape (``producer.api.errors``)."""
from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool

from producer.api.deps import ServicesDep, Tenant, request_base, wait_for_end
from producer.openai_compat import ImageGenerate, images_response, model_object, models_list, render_request
from producer.submit import submit_job

router = APIRouter(prefix="/v1", tags=["openai-compatible"])


@router.post("/images/generations")
async def images_generate(body: ImageGenerate, request: Request, svc: ServicesDep, tenant: Tenant,
                          idempotency_key: str | None = Header(None, max_length=255)) -> dict:
    """Render and answer ``{created, data: [{url | b64_json}], ...}`` when done (at most
    ``BATCHRENDER_OPENAI_SYNC_TIMEOUT_S``). A refused prompt is a 400 ``moderation_blocked``."""
    req = await run_in_threadpool(render_request, svc.client, body)
    rec, _ = await run_in_threadpool(submit_job, svc.client, svc.idempotency, tenant, req, idempotency_key)
    if not rec.status.terminal:
        rec = await wait_for_end(svc, rec.job_id, svc.settings.openai_sync_timeout_s)
    if not rec.status.terminal:
        from jobs.errors import TimeLimitExceeded

        raise TimeLimitExceeded(f"job {rec.job_id} is still {rec.status.value} after "
                                f"{svc.settings.openai_sync_timeout_s:g} s; it keeps running: GET /v1/jobs/{rec.job_id}")
    return await run_in_threadpool(images_response, svc.client, rec, body, request_base(request))


@router.get("/models")
def list_models(svc: ServicesDep, tenant: Tenant) -> dict:
    """The models this deployment renders (the registry)."""
    return models_list(svc.client)


@router.get("/models/{model}")
def get_model(model: str, svc: ServicesDep, tenant: Tenant) -> dict:
    from jobs.errors import UnknownModel

    models = svc.client.registry.all()
    if model not in models:
        raise UnknownModel(f"no model {model!r}; available: {', '.join(sorted(models))}",
                           errors=[{"field": "model", "message": "unknown"}])
    return model_object(models[model])
