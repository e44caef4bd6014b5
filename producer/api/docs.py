"""Offline API docs: Swagger UI at /docs and ReDoc at /redoc from assets installed with the
``fastapi-offline`` package (no CDN), and the webhook payloads in the OpenAPI document."""
from __future__ import annotations

from importlib.resources import files
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from producer.api.models import BatchCounts, Output

ASSETS = "/docs-assets"


class JobEventData(BaseModel):
    job_id: str
    batch_id: str | None = None
    status: str = Field(description="running, succeeded, failed, blocked or canceled.")
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    step: int | None = Field(None, description="job.progress only.")
    total_steps: int | None = Field(None, description="job.progress only.")
    outputs: list[Output] | None = Field(None, description="job.succeeded: links are made at each attempt.")
    error: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None


class BatchEventData(BaseModel):
    batch_id: str
    counts: BatchCounts
    items: list[dict[str, Any]] | None = Field(None, description="Up to 100 jobs inline; else results_url.")
    results_url: str | None = None


class CampaignEventData(BaseModel):
    campaign_id: str
    name: str
    apply: int = Field(description="Which apply of the campaign ended (1, 2, ...): one event per apply.")
    counts: dict[str, int] = Field(description="Cells per state; reused ones as reused_<state>.")
    progress: dict[str, Any] | None = Field(None, description=(
        "cells_done, cells_total, gpu_seconds_spent, gpu_seconds_planned (null while the apply was still "
        "being recorded)."))
    results_url: str = Field(description="The manifest (GET, API key).")
    batch_id: str | None = Field(None, description="The apply's batch; absent when it had nothing to render.")


class JobEvent(BaseModel):
    """Signed with Standard Webhooks headers: webhook-id, webhook-timestamp, webhook-signature."""

    version: Literal[1] = 1
    type: Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.blocked", "job.canceled"]
    timestamp: str = Field(description="ISO 8601, UTC.")
    data: JobEventData


class BatchEvent(BaseModel):
    version: Literal[1] = 1
    type: Literal["batch.completed"]
    timestamp: str
    data: BatchEventData


class CampaignEvent(BaseModel):
    version: Literal[1] = 1
    type: Literal["campaign.completed"]
    timestamp: str
    data: CampaignEventData


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc offline and describe the webhook events."""
    static = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    def swagger():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=title,
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=title, redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS}/favicon.png", with_google_fonts=False)

    @app.webhooks.post("job-event")
    def job_event(body: JobEvent) -> None:
        """Sent to a job's ``webhook`` URL as it starts, progresses (opt-in) and ends."""

    @app.webhooks.post("batch-event")
    def batch_event(body: BatchEvent) -> None:
        """Sent once when every job of a batch has ended."""

    @app.webhooks.post("campaign-event")
    def campaign_event(body: CampaignEvent) -> None:
        """Sent to a campaign's ``webhook`` once per apply: when its renders have ended, or at once
        when it had nothing to render."""
