"""``/v1/deliveries``: this tenant's webhook events and their delivery attempts."""
from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query

from producer.api.deps import ServicesDep, Tenant, own_job
from producer.api.models import Delivery, DeliveryPage

router = APIRouter(prefix="/v1/deliveries", tags=["webhooks"])
_FIELDS = ("id", "type", "url", "job_id", "batch_id", "state", "attempts", "last_status",
           "created_at", "updated_at")
#: The SSRF guard's refusal names the address a host resolved to, and the setting that allows it:
#: detail for the operator (the worker's log keeps it), not for the tenant.
_RESOLVES_TO = re.compile(r"resolves to [^;]*(?:; an operator can allow it[^;]*)?")
_NOT_ALLOWED = ("resolves to an address this deployment does not deliver to (private, loopback, link-local, "
                "metadata or special-purpose)")
#: Anything that may be an IP address (v4, or v6 with or without brackets, a zone, a port).
_ADDRESS_LIKE = re.compile(r"\[?[0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.%]*[0-9A-Fa-f]\]?")


def tenant_error(error: str, url: str) -> str:
    """A delivery error as the tenant who gave ``url`` may read it: what its host resolved to, and
    any other address it did not give itself (a connection error's peer), left out."""
    if not error:
        return error
    error = _RESOLVES_TO.sub(_NOT_ALLOWED, error)
    try:
        given = (urlsplit(url).hostname or "").lower()
    except ValueError:
        given = ""

    def unless_given(m: re.Match[str]) -> str:
        text = m.group(0)
        candidate = text.strip("[]").split("%", 1)[0]
        try:
            addr = ipaddress.ip_address(candidate)
        except ValueError:
            head, sep, _ = candidate.rpartition(":")  # host:port
            try:
                addr = ipaddress.ip_address(head.strip("[]")) if sep else None
            except ValueError:
                addr = None
        if addr is None or str(addr) == given.strip("[]") or text.strip("[]").lower() == given.strip("[]"):
            return text
        return "an address"

    return _ADDRESS_LIKE.sub(unless_given, error)


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
                                       last_error=tenant_error(e.last_error, e.url),
                                       attempt_log=[{**a.__dict__, "error": tenant_error(a.error, e.url)}
                                                    for a in ds.attempts(e.id)])
                              for e in events if e.tenant == tenant])
