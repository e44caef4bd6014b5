"""``/healthz``: alive (200 while the API can reach Redis). ``/readyz``: ready to take work:
Redis, storage (write, read, delete), and a worker on every registered model's queue and on the
webhook queue; 503 naming what is missing (one check at a time, its report reused for a few
seconds). ``/metrics``: Prometheus text (jobs/metrics.py); with ``BATCHRENDER_METRICS_TOKEN`` set
it wants ``Authorization: Bearer <token>``."""
from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from producer.api.deps import ServicesDep
from producer.api.errors import ApiError

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz(svc: ServicesDep) -> dict[str, Any]:
    svc.client.store.r.ping()
    return {"ok": True, "time": time.time()}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    # Async and without dependencies: a crowd of probes holds no thread; one check runs at a time
    # and its report is reused for BATCHRENDER_API_READINESS_TTL_S (producer/health.py).
    report = await request.app.state.readiness.report()
    return JSONResponse(report, status_code=200 if report["ready"] else 503, headers={"Cache-Control": "no-store"})


@router.get("/metrics")
def metrics(svc: ServicesDep, request: Request) -> Response:
    from prometheus_client import REGISTRY

    from jobs.metrics import CONTENT_TYPE_LATEST, combined, exposition

    token = svc.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
            raise ApiError(401, "unauthorized", "/metrics wants 'Authorization: Bearer <BATCHRENDER_METRICS_TOKEN>'",
                           headers={"WWW-Authenticate": "Bearer"})
    return Response(exposition(combined(REGISTRY, request.app.state.metrics)), media_type=CONTENT_TYPE_LATEST)
