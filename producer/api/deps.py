"""Dependencies every router shares: the process's services, the caller's tenant (API key and
rate limit), ownership checks, signed links, the cursor parameter, and the refusal of query
parameters an operation does not take.

A tenant sees only its own jobs, batches and deliveries: anything else is a 404, exactly like an
unknown id. A job the tenant deleted answers 404 with code ``deleted``.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.errors import InvalidRequest, JobDeleted, JobNotFound
from jobs.settings import Settings
from jobs.store import JobRecord
from producer.api.errors import ApiError
from producer.client import Client
from producer.submit import Idempotency
from producer.tenants import Tenants

bearer = HTTPBearer(auto_error=False, description="An API key from 'batchrender tenants create'.")
_CURSOR = re.compile(r"^\d{10}\.\d{6}\|[A-Za-z0-9_]{1,80}$")
_ID = re.compile(r"^[A-Za-z0-9_]{1,80}$")
#: Parameters that chat and mail clients append to links people share (a gallery or image link):
#: never a filter, so never refused.
_TRACKING = re.compile(r"^(utm_[a-z_]{1,40}|fbclid|gclid|msclkid|mc_cid|mc_eid)$")


@dataclass
class Services:
    """What the routes use, built once per app by the lifespan (``producer.api.app``)."""

    settings: Settings
    client: Client
    tenants: Tenants
    idempotency: Idempotency


def known_query_parameters(request: Request) -> None:
    """422 for a query parameter the operation does not take, naming it and the ones it does.

    Ignoring it would answer as if it were absent: ``GET /v1/jobs?state=failed`` (for ``status``)
    would list every job, ``GET /v1/deliveries?job=...`` every delivery. The OpenAPI document lists
    each operation's parameters and nothing else; this makes the API hold to it."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    allowed = _query_names(dependant)
    unknown = sorted(k for k in set(request.query_params.keys()) - allowed if not _TRACKING.match(k))
    if unknown:
        takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes no query parameters"
        message = f"this operation {takes}"
        raise InvalidRequest(f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; {message}",
                             errors=[{"field": name, "message": f"unknown query parameter; {message}"}
                                     for name in unknown])


def _query_names(dependant) -> frozenset[str]:
    """The query parameters (by alias) of a route's dependant and everything it depends on."""
    names, todo, seen = set(), [dependant], set()
    while todo:
        d = todo.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        names.update(f.alias for f in d.query_params)
        todo.extend(d.dependencies)
    return frozenset(names)


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def _take_token(svc: Services, bucket: str) -> None:
    s = svc.settings
    allowed, wait = svc.tenants.allow(bucket, s.api_rate_per_s, s.api_burst)
    if not allowed:
        raise ApiError(429, "rate_limited", f"more than {s.api_rate_per_s:g} requests/s; retry later",
                       headers={"Retry-After": str(max(1, math.ceil(wait)))})


def current_tenant(request: Request, svc: ServicesDep,
                   credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The caller's tenant (401 without a valid key), after taking one token from its rate bucket.
    Requests without a valid key draw on a bucket per client address, so guessing is limited too."""
    tenant = svc.tenants.authenticate(credentials.credentials if credentials else None)
    if tenant is None:
        _take_token(svc, f"anon:{request.client.host if request.client else '-'}")
        if credentials is not None and credentials.credentials:
            # A key was sent: say it is the key, not its absence (unknown and disabled alike).
            raise ApiError(401, "unauthorized", "this API key is not recognised: it is mistyped, revoked, its "
                           "tenant is disabled, or it belongs to another deployment; keys come from "
                           "'batchrender tenants create'", headers={"WWW-Authenticate": "Bearer"})
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API key>'; keys come from "
                       "'batchrender tenants create'", headers={"WWW-Authenticate": "Bearer"})
    _take_token(svc, tenant)
    return tenant


Tenant = Annotated[str, Depends(current_tenant)]


def signed_or_tenant(request: Request, svc: ServicesDep, expires: str | None = None,
                     signature: str | None = None,
                     credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str | None:
    """For links a browser follows: a valid ``?expires=&signature=`` for this path, or the API key.
    Returns the tenant, or None when the signature alone admitted the request."""
    if signature is not None and svc.client.links.verify(request.url.path, expires, signature):
        return None
    if signature is not None and credentials is None:
        raise ApiError(403, "link_expired", "this link has expired, lives longer than this deployment allows "
                       "(BATCHRENDER_LINK_MAX_TTL_S) or its signature does not match; ask the API for the job "
                       "again to get fresh links")
    return current_tenant(request, svc, credentials)


SignedOrTenant = Annotated[str | None, Depends(signed_or_tenant)]


def own_job(svc: Services, tenant: str | None, job_id: str) -> JobRecord:
    """The job when ``tenant`` owns it (``None``: a signed link already proved access)."""
    try:
        rec = svc.client.store.get(job_id)
    except JobNotFound:
        rec = None
    if rec is None or (tenant is not None and rec.tenant != tenant):
        if rec is None and tenant is not None and svc.client.store.deleted_for(job_id) == tenant:
            raise JobDeleted(f"job {job_id!r} was deleted")
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return rec


def own_batch(svc: Services, tenant: str | None, batch_id: str) -> dict[str, Any]:
    try:
        info = svc.client.store.batch_info(batch_id)
    except JobNotFound:
        info = None
    if info is None or (tenant is not None and info.get("tenant") != tenant):
        raise ApiError(404, "not_found", f"no batch {batch_id!r}")
    return info


def request_base(request: Request) -> str:
    """The API's own base URL as the client reached it (``public_base_url`` overrides it in Links)."""
    return str(request.base_url).rstrip("/")


def decode_cursor(svc: ServicesDep, tenant: Tenant, after: str | None = Query(None, max_length=200, description=(
        "The next_cursor of the previous page, or the id of its last item (last_id)."))) -> str | None:
    if after is None:
        return None
    if after.startswith(("job_", "bat_")) and _ID.match(after):  # an item id, as OpenAI clients page
        from jobs.names import index_member

        store = svc.client.store
        try:
            if after.startswith("job_"):
                rec = store.get(after)
                owner, created = rec.tenant, rec.created_at
            else:
                info = store.batch_info(after)
                owner, created = info.get("tenant") or None, info["created_at"]
        except JobNotFound:
            owner = created = None
        if created is None or owner != tenant:
            # Another tenant's id is answered as an id nobody has: paging must not tell whether it
            # exists (nor, by the page it starts, when it was made).
            raise InvalidRequest(f"after: no item {after!r} to page from",
                                 errors=[{"field": "after", "message": "unknown id"}])
        return index_member(created, after)
    try:
        member = base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        member = ""
    if not _CURSOR.match(member):
        raise InvalidRequest("after: not a cursor this API issued; pass the next_cursor of the previous page",
                             errors=[{"field": "after", "message": "not a cursor this API issued"}])
    return member


def encode_cursor(member: str | None) -> str | None:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=") if member else None


Cursor = Annotated[str | None, Depends(decode_cursor)]


async def wait_for_end(svc: Services, job_id: str, seconds: float) -> JobRecord:
    """Poll until the job ends or ``seconds`` pass, holding no thread while it sleeps: a crowd of
    waiting requests must not take the threads other requests need."""
    deadline = time.monotonic() + seconds
    while True:
        rec = await run_in_threadpool(svc.client.store.get, job_id)
        if rec.status.terminal or time.monotonic() >= deadline:
            return rec
        await asyncio.sleep(0.1)
