"""``/v1/campaigns``: plan (dry run) or apply a campaign document (JSON or YAML), list, status
with progress, results (manifest as JSONL or CSV, or every file in a zip) and the gallery.

A campaign is addressed by its id (``cmp_...``) or its name; another tenant's campaign is a 404,
exactly like an unknown one. Catalogs come from ``POST /v1/files`` (purpose ``campaign``) or
inline ``catalog.rows``; ``catalog.path`` is for the CLI only.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from jobs.campaign import CampaignSpec
from producer.api.deps import ServicesDep, Services, SignedOrTenant, Tenant, request_base
from producer.campaign_documents import parse_document
from producer.campaign_results import (gallery_columns, iter_file, manifest_text, resolve_id, write_zip)
from producer.campaigns import CampaignNotFound, Campaigns, campaign_key

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
#: Self-contained (inline rows) so "Try it out" works as it is; a real catalog is a file_id.
_EXAMPLE = {"v": 1, "name": "spring-mugs",
            "catalog": {"rows": [{"sku": "mug-01", "colour": "red"}, {"sku": "mug-02", "colour": "blue"}],
                        "key": "sku"},
            "template": {"prompt": "a {colour} ceramic mug, {style}, product photo",
                         "fields": {"model": "tiny", "custom_id": "{sku}-{style}", "background": "transparent"}},
            "sweeps": {"axes": {"style": ["studio", "watercolour"]}},
            "renditions": [{"name": "square", "width": 1080, "height": 1080},
                           {"name": "portrait", "width": 1080, "height": 1350}]}
_YAML_EXAMPLE = """v: 1
name: spring-mugs-yaml
catalog:
  key: sku
  rows: [{sku: mug-01, colour: red}, {sku: mug-02, colour: blue}]
template:
  prompt: "a {colour} ceramic mug, product photo"
  fields: {model: tiny, custom_id: "{sku}"}
renditions:
  - {name: square, width: 1080, height: 1080}
"""
_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": CampaignSpec.model_json_schema(), "example": _EXAMPLE},
    "application/yaml": {"schema": {"type": "string", "description": "the same document in YAML"},
                         "example": _YAML_EXAMPLE}}}}
_TABLE = {200: {"content": {"application/jsonl": {"schema": {"type": "string"}},
                            "text/csv": {"schema": {"type": "string"}},
                            "application/zip": {"schema": {"type": "string", "format": "binary"}}}}}


class CampaignAnswer(BaseModel):
    """A plan (``dry_run``) or an apply: cells, masters, renditions, reused and refused cells (by
    row), GPU-seconds per model and shape, ETA, cost and budget; an apply adds its batch and what
    was submitted."""

    model_config = ConfigDict(extra="allow")
    id: str
    name: str
    dry_run: bool
    plan: dict[str, Any]
    apply: int | None = None
    batch_id: str | None = None
    applied: dict[str, int] | None = Field(None, description="submitted, reused, refused cells.")
    url: str = Field(description="The campaign's status.")


class CampaignStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str | None
    status: Literal["completed", "in_progress"]
    applies: int
    batch_id: str | None = None
    progress: dict[str, Any] = Field(description="cells_done, cells_total, gpu_seconds_spent, gpu_seconds_planned.")
    counts: dict[str, int] = Field(description="Cells per state; reused ones as reused_<state>.")
    applied: dict[str, Any]
    plan: dict[str, Any] = Field(description="The last apply's plan.")
    document: dict[str, Any]
    results_url: str
    gallery_url: str = Field(description="Signed: opens in a browser without the API key until it expires.")


class CampaignSummary(BaseModel):
    id: str
    name: str
    updated_at: float
    applies: int
    batch_id: str | None = None


class CampaignList(BaseModel):
    data: list[CampaignSummary]


def _path(cid: str, tail: str = "") -> str:
    return f"/v1/campaigns/{cid}{tail}"


@router.post("", status_code=201, openapi_extra=_BODY, responses={200: {
    "model": CampaignAnswer, "description": "dry_run=true: the plan; nothing is queued or written."}})
async def create_campaign(request: Request, response: Response, svc: ServicesDep, tenant: Tenant,
                          dry_run: Annotated[bool, Query(description="Plan only: nothing is queued.")] = False,
                          skip_refused: Annotated[bool, Query(description=(
                              "Apply the cells that pass and leave the refused ones out (default: a refused "
                              "cell refuses the whole apply)."))] = False) -> CampaignAnswer:
    """Plan or apply a campaign document (JSON, or YAML as ``application/yaml``/``text/yaml``).

    Applying a document whose ``name`` is already a campaign updates it: only new and changed
    cells render. 422 naming the row, column or field for bad input (``cells_refused`` lists every
    refused cell by row; ``over_budget`` the budget's reasons): nothing is queued then. 429 when
    the cells to render pass the tenant's queued-jobs limit."""
    raw = await request.body()
    spec = await run_in_threadpool(_spec, raw, request.headers.get("content-type"))
    campaigns = Campaigns(svc.client)
    if dry_run:
        response.status_code = 200
        out = await run_in_threadpool(campaigns.plan, tenant, spec)
    else:
        out = await run_in_threadpool(campaigns.apply, tenant, spec, skip_refused=skip_refused)
    return CampaignAnswer.model_validate({**out, "url": request_base(request) + _path(out["id"])})


def _spec(raw: bytes, content_type: str | None) -> CampaignSpec:
    return CampaignSpec.parse(parse_document(raw, content_type))


@router.get("")
def list_campaigns(svc: ServicesDep, tenant: Tenant,
                   limit: Annotated[int, Query(ge=1, le=100)] = 50) -> CampaignList:
    """This tenant's campaigns, most recently applied first."""
    return CampaignList.model_validate({"data": Campaigns(svc.client).list(tenant, limit)})


@router.get("/{campaign}")
def get_campaign(campaign: str, request: Request, svc: ServicesDep, tenant: Tenant) -> CampaignStatus:
    """Status (``completed`` when every cell has ended), progress (cells done of total, GPU-seconds
    spent against planned), cells per state, the last plan, and a signed link to the gallery."""
    cid = resolve_id(tenant, campaign)
    status = Campaigns(svc.client).status(tenant, cid)
    links, base = svc.client.links, request_base(request)
    return CampaignStatus.model_validate({**status, "results_url": links.base(base) + _path(cid, "/results"),
                                          "gallery_url": links.signed(_path(cid, "/gallery"), base)[0]})


def _results_format(fmt: str | None, accept: str | None) -> str:
    if fmt:
        return fmt
    wanted = (accept or "").lower()
    if "text/csv" in wanted:
        return "csv"
    if "application/zip" in wanted:
        return "zip"
    return "jsonl"


@router.get("/{campaign}/results", response_class=Response, responses=_TABLE)
async def campaign_results(campaign: str, request: Request, svc: ServicesDep, tenant: Tenant,
                           format: Annotated[Literal["jsonl", "csv", "zip"] | None, Query(description=(
                               "jsonl (default), csv, or zip (every delivered file and manifest.csv); "
                               "else from Accept: text/csv or application/zip."))] = None,
                           accept: Annotated[str | None, Header(max_length=1024)] = None) -> Response:
    """The manifest: one line per delivered file (each master, then its renditions) and one per
    cell without images (refused, failed, still running): row, sweep values, rendition, status,
    links, C2PA state and where a reused result came from."""
    fmt = _results_format(format, accept)
    if fmt == "zip":
        return await _zip(svc, tenant, campaign, request)
    cid = resolve_id(tenant, campaign)
    campaigns = Campaigns(svc.client)
    await run_in_threadpool(campaigns.record, tenant, cid)  # 404 before the answer starts
    lines = campaigns.manifest(tenant, cid, request_base(request))
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/jsonl"
    return StreamingResponse(manifest_text(lines, fmt), media_type=media, headers={"Cache-Control": "no-store"})


@router.get("/{campaign}/results.zip", response_class=Response,
            responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def campaign_results_zip(campaign: str, request: Request, svc: ServicesDep, tenant: Tenant) -> Response:
    """Every delivered file as ``{row_key}/{cell}/{rendition}.{ext}`` and ``manifest.csv`` (with the
    path of each line's file), in one zip."""
    return await _zip(svc, tenant, campaign, request)


async def _zip(svc: Services, tenant: str, campaign: str, request: Request) -> Response:
    cid = resolve_id(tenant, campaign)
    f = await run_in_threadpool(write_zip, svc.client, Campaigns(svc.client), tenant, cid, request_base(request))
    name = (await run_in_threadpool(svc.client.store.r.hget, campaign_key(cid), "name")) or cid
    return StreamingResponse(iter_file(f), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{_safe_filename(name)}.zip"', "Cache-Control": "no-store"})


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:64] or "campaign"


@router.get("/{campaign}/gallery", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
def campaign_gallery(campaign: str, request: Request, svc: ServicesDep, who: SignedOrTenant) -> HTMLResponse:
    """The campaign as one page: a row per cell, a column per rendition (the master first), each a
    thumbnail linking to the file. Open the campaign's ``gallery_url`` (signed) in a browser; the
    API key works too."""
    from producer.gallery import render_campaign_sheet

    campaigns = Campaigns(svc.client)
    if who is None:  # the signature admitted this path: the campaign's own tenant reads it
        cid = campaign
        owner = svc.client.store.r.hget(campaign_key(cid), "tenant")
        if owner is None:
            raise CampaignNotFound(f"no campaign {cid!r}")
        tenant = owner or None
    else:
        cid, tenant = resolve_id(who, campaign), who
    status = campaigns.status(tenant, cid)
    lines = campaigns.manifest(tenant, cid, request_base(request))
    html = render_campaign_sheet(status, lines, gallery_columns(status),
                                 lambda x: x.get("thumbnail_url") or x.get("download_url"),
                                 lambda x: x.get("download_url"))
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                       "default-src 'none'; img-src * data:; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'"})
