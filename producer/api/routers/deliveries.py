"""``/v1/deliveries``: this tenant's webhook events and their delivery attempts."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from producer.api.deps import ServicesDep, Tenant, own_job
from producer.api.models import Delivery, DeliveryPage

router = APIRouter(prefix="/v1/deliveries", tags=["webhooks"])
_FIELDS = ("id", "type", "url", "job_id", "batch_id", "state", "attempts", "last_status", "last_error",
           "created_at", "updated_at")


@router.get("")
def deliveries(svc: ServicesDep, tenant: Tenant,
               job_id: Annotated[str | None, Query(max_length=100)] = None) -> DeliveryPage:
    """This tenant's webhook events and their delivery attempts (newest first)."""
    from webhooks.store import DeliveryStore

    ds = DeliveryStore(svc.client.store.r, svc.settings.record_ttl_s)
    if job_id:
        own_job(svc, tenant, job_id)
    events = ds.by_job(job_id) if job_id else ds.by_tenant(tenant)
    return DeliveryPage(data=[Delivery(**{f: getattr(e, f) for f in _FIELDS},
                                       attempt_log=[a.__dict__ for a in ds.attempts(e.id)])
                              for e in events if e.tenant == tenant])
