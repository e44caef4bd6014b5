"""``/healthz``: alive (200 while the API can reach Redis). ``/readyz``: ready to take work:
Redis, storage (write, read, delete), and a worker on every registered model's queue and on the
webhook queue; 503 naming what is missing."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from producer.api.deps import ServicesDep

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz(svc: ServicesDep) -> dict[str, Any]:
    svc.client.store.r.ping()
    return {"ok": True, "time": time.time()}


@router.get("/readyz")
def readyz(svc: ServicesDep) -> JSONResponse:
    from producer.health import readiness

    report = readiness(svc.client)
    return JSONResponse(report, status_code=200 if report["ready"] else 503)
