"""The HTTP API app (FastAPI), laid out as in FastAPI's "Bigger Applications": one router per
resource (``routers/``), shared dependencies (``deps``), typed responses (``models``), one error
model (``errors``), offline docs (``docs``). Routes call the service layer the Python client and
the CLI use (``producer.client``, ``producer.submit``); they hold no business logic.
"""
from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from jobs.settings import Settings
from producer.api import docs, errors
from producer.api.deps import Services, known_query_parameters
from producer.api.limits import BodyLimit, RequestId
from producer.api.routers import (batches, campaigns, deliveries, jobs, openai_files, openai_images, outputs,
                                  system)

DESCRIPTION = """Submit, watch, list and fetch render jobs, batches and campaigns per tenant.

Every error is JSON `{"error": {"code", "message", ...}}` with a stable code. A tenant sees only
its own jobs, batches and deliveries: anything else is a 404, exactly like a missing id."""


def create_app(settings: Settings | None = None, *, client=None) -> FastAPI:
    """The API app. ``client`` (a ``producer.client.Client``) defaults to one built from ``settings``."""
    from jobs.metrics import combined, fleet_registry, queue_registry
    from producer.client import Client
    from producer.health import Readiness, readiness
    from producer.submit import Idempotency
    from producer.tenants import Tenants

    settings = settings or Settings.from_env()
    owned = client is None
    client = client or Client(settings)
    services = Services(settings, client, Tenants(client.store.r, settings), Idempotency(client))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owned:  # a client the caller passed in is the caller's to close
            client.close()

    app = FastAPI(title="batchrender", version="1", description=DESCRIPTION, responses=errors.ERRORS,
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.services = services
    app.state.client = client
    # /metrics: queue depth and the fleet's finished jobs, read from Redis at scrape
    app.state.metrics = combined(queue_registry(client.store.r, client.registry), fleet_registry(client.store.r))
    app.state.readiness = Readiness(lambda: readiness(client), settings.api_readiness_ttl_s)  # /readyz
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes, timeout_s=settings.api_body_timeout_s)
    app.add_middleware(RequestId)
    errors.install(app)
    docs.install(app)
    for module in (jobs, outputs, batches, campaigns, deliveries, openai_images, openai_files):
        # A query parameter an operation does not take is refused, not ignored (deps.py).
        app.include_router(module.router, dependencies=[Depends(known_query_parameters)])
    app.include_router(system.router)  # probes and scrapers: outside the documented API
    return app
