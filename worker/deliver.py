"""Per-image delivery: output moderation, encoding, C2PA signing, storage and the provenance index.

Order matters: an image withheld by moderation is quarantined unsigned and never gets a URL; an
image is signed before it is stored (a signing failure fails the job, never ships unsigned); the
provenance index is written after the upload, so it only ever points at delivered images.

``background: transparent`` cuts the backdrop out before encoding (worker/cutout.py), so the
alpha channel is part of the signed bytes; output moderation still sees the whole render. A
palette request adds its compliance report (worker/colour.py), computed on the delivered pixels.

``renditions`` (worker/renditions.py) are cut from the delivered pixels after the image is signed
and stored, each encoded in its own format, signed with the signed image as its ``parentOf``
ingredient (actions: ``c2pa.opened`` it, then cropped/edited/resized), stored beside it at
``<key without extension>.<name>.<ext>`` and indexed like the image.

Storage outages: an upload that fails after the storage backend's own retries is retried here,
with backoff, for up to ``settings.storage_wait_budget_s`` (``BATCHRENDER_STORAGE_OUTAGE_S``,
default 30 min), keeping the signed bytes in memory: a storage outage delays the job instead of
failing it or rendering it again. This runs in a post-processing thread; while uploads wait,
back-pressure stops the session from rendering more than ``postprocess_queue`` jobs ahead.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from PIL import Image

from jobs.errors import PermanentError, StorageError
from jobs.schemas import AlphaReport, Fit, OutputFormat, ImageResult, JobMessage, PaletteReport, Rendition, RenditionResult
from provenance.c2pa_sign import ParentImage
from storage.links import output_key, rendition_key, thumbnail_key
from worker.colour import palette_report
from worker.context import WorkerContext
from worker.cutout import cut_out
from worker.encode import encode, pixel_sha256, thumbnail
from worker.refine import parent_image
from worker.renditions import Cut, Extended, derive, fill_colour, for_format, from_extended

#: IPTC digital source type of an image that composites a capture or render with AI-made pixels.
COMPOSITE_WITH_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
log = logging.getLogger(__name__)
T = TypeVar("T")


def through_outage(what: str, budget_s: float, fn: Callable[[], T], *, sleep=time.sleep,
                   clock=time.monotonic) -> T:
    """Call ``fn`` until it stops raising ``StorageError`` or ``budget_s`` has passed (then the
    last error is raised). Full-jitter backoff from 1 s up to 30 s between tries."""
    started = clock()
    tries = 0
    while True:
        try:
            return fn()
        except StorageError as e:
            waited = clock() - started
            if waited >= budget_s:
                raise
            tries += 1
            delay = min(budget_s - waited, random.uniform(0.5, min(30.0, 2.0 ** tries)))
            if tries == 1:
                log.warning("%s: storage unavailable (%s); retrying for up to %.0f s", what, e.message, budget_s)
            sleep(delay)


@dataclass
class Delivered:
    image: ImageResult | None = None
    blocked: dict[str, Any] | None = None


def render_params(msg: JobMessage) -> dict[str, Any]:
    """The parameters that determine the pixels; their hash goes into the C2PA assertion."""
    r = msg.request
    params = {k: getattr(r, k) for k in ("prompt", "negative_prompt", "model", "width", "height",
                                         "steps", "guidance_scale", "seed", "num_images", "strength")}
    # Only when used, so the hash of a plain render's parameters is what it always was.
    if r.transparent:
        params["background"] = "transparent"
    if r.requested_palette:
        params["palette"] = r.requested_palette
    if r.palette_strict:
        params["palette_tries"] = r.palette_tries
    if msg.lineage:  # a refinement: the image it was rendered from
        params["parent"] = {"job_id": msg.lineage.parent_id, "index": msg.lineage.parent_index,
                            "sha256": msg.lineage.parent_sha256}
    return params


def as_delivered(ctx: WorkerContext, msg: JobMessage, img: Image.Image) -> tuple[Image.Image, AlphaReport | None]:
    """The pixels that will be delivered: the render, or its cutout for ``background: transparent``."""
    if not msg.request.transparent:
        return img, None
    cut = cut_out(img, ctx.matting)
    return cut.image, AlphaReport(**cut.report)


def object_key(ctx: WorkerContext, msg: JobMessage, index: int) -> str:
    return output_key(ctx.settings, msg, index)


def deliver_image(ctx: WorkerContext, msg: JobMessage, index: int, seed: int, img: Image.Image,
                  extended: dict[str, Extended] | None = None) -> Delivered:
    """Deliver one rendered image. With ``palette_strict`` the runner kept the best of several
    renders and noted on the image (``img.info``) the seed it was rendered with and every try.
    ``extended``: the outpainted canvases of its ``extend`` renditions, by name (rendered by the
    runner on the render thread); they are moderated with the image, before anything is stored."""
    seed = img.info.get("palette_seed", seed)
    tries = img.info.get("palette_tries")
    r = msg.request
    fmt = r.output_format
    key = object_key(ctx, msg, index)
    final, alpha = as_delivered(ctx, msg, img)
    palette = None
    if r.requested_palette:
        palette = PaletteReport(**palette_report(final, r.requested_palette),
                                tries=[{"seed": s, "score": round(v, 4)} for s, v in tries] if tries else None)
    data = encode(final, fmt, r.quality)

    decision = ctx.moderation.check_output_image(img, actor=msg.tenant or "worker", job_id=msg.job_id,
                                                 level=msg.request.moderation)
    if decision.action.value == "block":
        ctx.storage.quarantine(key, data, content_type=fmt.content_type, metadata={
            "job_id": msg.job_id, "reason": ",".join(decision.to_dict().get("categories", []))})
        return Delivered(blocked=decision.to_dict())
    flags = decision.to_dict().get("categories", []) if decision.action.value == "flag" else []
    # Outpainting drew new pixels: they pass output moderation like the image, or nothing is stored.
    for name, ext in (extended or {}).items():
        verdict = ctx.moderation.check_output_image(ext.image, actor=msg.tenant or "worker", job_id=msg.job_id,
                                                    level=msg.request.moderation)
        if verdict.action.value == "block":
            ctx.storage.quarantine(rendition_key(key, name, "png"), encode(ext.image, OutputFormat.PNG, 100),
                                   content_type="image/png", metadata={
                                       "job_id": msg.job_id, "reason": ",".join(verdict.to_dict().get("categories", []))})
            return Delivered(blocked=verdict.to_dict())
        if verdict.action.value == "flag":
            flags += [c for c in verdict.to_dict().get("categories", []) if c not in flags]

    # Signing failures raise SigningFailed (permanent): an unsigned image is never delivered.
    # A refinement lists the stored parent image as its parentOf ingredient (worker/refine.py).
    parent = through_outage(f"job {msg.job_id} parent image", ctx.settings.storage_wait_budget_s,
                            lambda: parent_image(ctx.storage, msg))
    data = ctx.signer.sign(data, fmt.value, {
        "job_id": msg.job_id, "batch_id": msg.batch_id or "", "model": r.model, "seed": seed,
        "params": render_params(msg),
    }, parent=parent)
    sha = hashlib.sha256(data).hexdigest()
    stored = through_outage(f"job {msg.job_id} image {index}", ctx.settings.storage_wait_budget_s,
                            lambda: ctx.storage.put(key, data, content_type=fmt.content_type, metadata={
                                "job_id": msg.job_id, "batch_id": msg.batch_id or "", "model": r.model,
                                "seed": str(seed), "sha256": sha,
                            }))
    thumb = None
    if ctx.settings.thumbnail_px:
        # A preview for galleries: derived from the signed image's pixels, unsigned itself.
        thumb = thumbnail_key(key)
        preview = thumbnail(final, ctx.settings.thumbnail_px)
        through_outage(f"job {msg.job_id} thumbnail {index}", ctx.settings.storage_wait_budget_s,
                       lambda: ctx.storage.put(thumb, preview, content_type="image/webp",
                                               metadata={"job_id": msg.job_id, "kind": "thumbnail"}))
    ctx.provenance.add(data, job_id=msg.job_id, batch_id=msg.batch_id or "", key=key)
    master = ParentImage(data=data, title=f"{msg.job_id}-{index}.{fmt.value}", job_id=msg.job_id, index=index,
                         turn=msg.lineage.turn if msg.lineage else 0)
    renditions = [deliver_rendition(ctx, msg, index, seed, key, final, master, rendition,
                                    (extended or {}).get(rendition.name))
                  for rendition in r.renditions or []]
    return Delivered(image=ImageResult(
        index=index, key=key, url=ctx.storage.url_for(key), seed=seed, width=img.width, height=img.height,
        format=fmt, sha256=sha, pixel_sha256=pixel_sha256(final), bytes=stored.size, c2pa="signed", flags=flags,
        thumbnail_key=thumb, alpha=alpha, palette=palette, renditions=renditions,
    ))


def rendition_edits(rendition: Rendition, got: Cut, master_size: tuple[int, int], model: str) -> list[dict[str, Any]]:
    """The C2PA actions that made a rendition from its master (after ``c2pa.opened``)."""
    w, h = master_size
    x0, y0, x1, y1 = got.box
    ratio = f"{rendition.ratio[0]:g}:{rendition.ratio[1]:g}"
    beyond = x0 < 0 or y0 < 0 or x1 > w or y1 > h
    edits: list[dict[str, Any]] = []
    if rendition.fit is Fit.CROP:
        edits.append({"action": "c2pa.cropped", "description": f"cropped to {ratio} ({x0},{y0})-({x1},{y1}), "
                      f"centred on the {'subject' if got.subject == 'alpha' else got.subject}"})
        if beyond:
            edits.append({"action": "c2pa.edited", "description": "padded where the subject reached past the "
                          "largest window that fits"})
    elif rendition.fit is Fit.PAD:
        edits.append({"action": "c2pa.edited", "description": f"padded to {ratio}"})
    else:
        edits.append({"action": "c2pa.edited", "description": f"extended to {ratio} by outpainting with {model}",
                      "digitalSourceType": COMPOSITE_WITH_AI})
    if got.image.size != (x1 - x0, y1 - y0):
        edits.append({"action": "c2pa.resized", "description": f"resized to {got.image.width}x{got.image.height}"})
    return edits


def deliver_rendition(ctx: WorkerContext, msg: JobMessage, index: int, seed: int, key: str, final: Image.Image,
                      master: ParentImage, rendition: Rendition, extended: Extended | None) -> RenditionResult:
    """One rendition of a stored master: cut from the delivered pixels (``final``), encoded,
    signed with the signed master as its ``parentOf`` ingredient, stored beside it and indexed."""
    r = msg.request
    if rendition.fit is Fit.EXTEND:
        if extended is None:
            raise PermanentError(f"rendition {rendition.name!r} of image {index} was not outpainted")
        got = from_extended(final, rendition, extended.image, extended.placement)
    else:
        got = derive(final, rendition)
    fmt = rendition.format or r.output_format
    pixels = for_format(got.image, fmt, fill_colour(rendition, final))
    data = encode(pixels, fmt, rendition.quality or r.quality)
    rkey = rendition_key(key, rendition.name, fmt.value)
    data = ctx.signer.sign(data, fmt.value, {
        "job_id": msg.job_id, "batch_id": msg.batch_id or "", "model": r.model,
        "seed": extended.seed if extended else seed, "index": index,
        "rendition": rendition.name, "params": {"rendition": rendition.model_dump(mode="json"), "box": list(got.box)},
    }, parent=master, edits=rendition_edits(rendition, got, final.size, r.model))
    sha = hashlib.sha256(data).hexdigest()
    stored = through_outage(f"job {msg.job_id} image {index} rendition {rendition.name}",
                            ctx.settings.storage_wait_budget_s,
                            lambda: ctx.storage.put(rkey, data, content_type=fmt.content_type, metadata={
                                "job_id": msg.job_id, "batch_id": msg.batch_id or "", "model": r.model,
                                "rendition": rendition.name, "sha256": sha}))
    ctx.provenance.add(data, job_id=msg.job_id, batch_id=msg.batch_id or "", key=rkey)
    return RenditionResult(name=rendition.name, key=rkey, width=pixels.width, height=pixels.height, format=fmt,
                           fit=rendition.fit, sha256=sha, bytes=stored.size, c2pa="signed", box=list(got.box),
                           subject=got.subject, seed=extended.seed if extended else None)
