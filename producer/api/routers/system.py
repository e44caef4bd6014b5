"""Liveness: ``/healthz`` answers 200 while the API can reach Redis."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter

from producer.api.deps import ServicesDep

router = APIRouter(include_in_schema=False)


@router.get("/healthz")
def healthz(svc: ServicesDep) -> dict[str, Any]:
    svc.client.store.r.ping()
    return {"ok": True, "time": time.time()}
