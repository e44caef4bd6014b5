"""Typed response bodies: what the OpenAPI document promises and every route returns."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.schemas import AlphaReport, Fit, OutputFormat, PaletteReport, Timings
from jobs.status import JobStatus


class RenditionOutput(BaseModel):
    """One channel output derived from an image (``renditions`` on the request), with its links."""

    name: str
    key: str = Field(description="Storage key: beside the image, <image key without extension>.<name>.<ext>.")
    width: int
    height: int
    format: OutputFormat
    fit: Fit
    sha256: str = Field(description="SHA-256 of the delivered (signed) bytes; also the ETag.")
    bytes: int
    c2pa: str | None = Field(None, description="'signed': Content Credentials naming the image as parentOf ingredient.")
    box: list[int] = Field(description="The window taken from the image, in its pixels (x0, y0, x1, y1); past "
                                       "its edges where padded or extended.")
    subject: str = Field("none", description="What a crop was centred on: alpha, saliency or none.")
    seed: int | None = Field(None, description="extend: the seed of the outpainting render.")
    url: str = Field(description="Stable URL; needs the API key; never expires.")
    download_url: str = Field(description="Fetchable without a key until download_expires_at.")
    download_expires_at: float = Field(description="Unix time.")


class Output(BaseModel):
    """One delivered image, with links made at the moment of the answer."""

    index: int
    key: str = Field(description="Storage key.")
    seed: int
    width: int
    height: int
    format: OutputFormat
    sha256: str = Field(description="SHA-256 of the delivered (signed) bytes; also the ETag.")
    pixel_sha256: str
    bytes: int
    c2pa: str | None = Field(None, description="'signed' when Content Credentials are embedded.")
    flags: list[str] = Field(default_factory=list, description="Moderation categories flagged (not blocked).")
    url: str = Field(description="Stable URL; needs the API key; never expires.")
    download_url: str = Field(description="Fetchable without a key until download_expires_at.")
    download_expires_at: float = Field(description="Unix time.")
    thumbnail_url: str | None = Field(None, description="Signed link to a small WebP preview.")
    alpha: AlphaReport | None = Field(None, description="background transparent: how the alpha was made, coverage.")
    palette: PaletteReport | None = Field(None, description="A palette was requested: compliance (CIEDE2000).")
    renditions: list[RenditionOutput] = Field(default_factory=list, description="Channel outputs derived from "
                                              "the image (crop, pad, extend), each signed with it as parent.")


class Progress(BaseModel):
    step: int
    total: int


class JobLineage(BaseModel):
    """A refined job's place in its chain (``POST /v1/jobs/{id}/refine``); absent for turn 0."""

    parent_id: str
    parent_index: int = Field(description="The parent's image this job refines.")
    turn: int = Field(description="The parent's turn + 1; a job with no parent is turn 0.")
    root_id: str


class LineageTurn(BaseModel):
    id: str
    turn: int
    status: JobStatus | None = Field(None, description="null: the job was deleted or has expired.")
    prompt: str | None = None
    parent_id: str | None = None
    parent_index: int | None = None
    image_index: int | None = Field(None, description="The image carried forward (the job itself: its first).")
    output_url: str | None = Field(None, description="Stable URL of that image; needs the API key.")


class Lineage(BaseModel):
    """The chain from its root (turn 0) to this job, one entry per turn."""

    id: str
    root_id: str
    turns: list[LineageTurn]


class Job(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "job_3f2a", "status": "succeeded", "batch_id": None, "custom_id": "sku-1", "model": "tiny",
        "created_at": 1764150000.0, "started_at": 1764150001.0, "finished_at": 1764150003.5,
        "progress": {"step": 4, "total": 4}, "attempts": 1, "retries": 0}]})

    id: str
    status: JobStatus
    batch_id: str | None = None
    custom_id: str | None = None
    model: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    attempts: int = 0
    retries: int = 0
    queue_position: int | None = Field(None, description=(
        "While queued: jobs that go before it (other tenants' by fair share, this tenant's by priority "
        "and deadline; docs/scheduling.md)."))
    eta_s: float | None = Field(None, description=(
        "While queued: seconds until it should have finished, from measured render rates and the live "
        "workers; null with eta_basis saying why (no measurement yet, no worker)."))
    estimated_completion: float | None = Field(None, description="While queued: Unix time, now + eta_s.")
    eta_basis: str | None = Field(None, description="What the ETA rests on.")
    priority: Literal["interactive", "normal", "bulk"] = "normal"
    deliver_by: float | None = Field(None, description="The deadline it was accepted with (Unix time).")
    planned_completion: float | None = Field(None, description=(
        "The completion time planned when it was accepted with deliver_by (Unix time)."))
    outputs: list[Output] | None = None
    timings: Timings | None = None
    prompt_tokens: int | None = Field(None, description=(
        "Prompt tokens the text encoder read, all of them (long prompts are encoded in chunks, never cut)."))
    references: dict[str, Any] | None = Field(None, description=(
        "{given, used, method}: an IP-Adapter read every reference, or (a model without one) the first was "
        "the image-to-image reference."))
    moderation: dict[str, Any] | None = None
    error: dict[str, Any] | None = Field(None, description="{code, message, ...} when the job did not succeed.")
    lineage: JobLineage | None = Field(None, description="A refinement: parent, image index, turn and root.")


class Page(BaseModel):
    object: Literal["list"] = "list"
    next_cursor: str | None = Field(None, description="Pass as ?after= for the next (older) page; null at the end.")
    has_more: bool
    first_id: str | None = None
    last_id: str | None = Field(None, description="Also accepted as ?after= (what OpenAI clients send).")


class JobPage(Page):
    data: list[Job]


class BatchCounts(BaseModel):
    total: int
    succeeded: int = 0
    failed: int = 0
    blocked: int = 0
    canceled: int = 0
    pending: int = 0


class Batch(BaseModel):
    """A batch. Batches made OpenAI's way (``input_file_id``) also carry OpenAI's Batch fields."""

    model_config = ConfigDict(extra="allow")
    id: str
    total: int
    done: int
    created_at: float
    counts: BatchCounts
    status: Literal["validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                    "cancelled"]
    meta: dict[str, Any] = Field(default_factory=dict)
    gallery_url: str | None = Field(None, description="Signed link to the batch's contact sheet (HTML).")
    object: Literal["batch"] | None = None
    endpoint: str | None = None
    input_file_id: str | None = None
    request_counts: dict[str, int] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class LineError(BaseModel):
    line: int
    custom_id: str | None = None
    code: str
    message: str
    errors: list[dict[str, Any]] | None = None


class BatchSubmitted(Batch):
    accepted: int
    rejected: int
    errors: list[LineError]


class BatchPage(Page):
    data: list[Batch]


class Delivery(BaseModel):
    id: str
    type: str
    url: str
    job_id: str | None = None
    batch_id: str | None = None
    state: str
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    created_at: float
    updated_at: float
    attempt_log: list[dict[str, Any]]


class DeliveryPage(BaseModel):
    data: list[Delivery]


class Deleted(BaseModel):
    id: str
    deleted: Literal[True] = True
