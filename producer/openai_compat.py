"""OpenAI Images API requests and answers, mapped onto ordinary batchrender jobs.

Torch-free service code the HTTP routes call (``producer/api/routers/openai_images.py``): a
request becomes a ``RenderRequest`` (validated like any other: limits, budget, moderation), the
finished job becomes OpenAI's ``ImagesResponse``. The job itself is an ordinary job: listed,
signed, indexed, retained. What maps how is in docs/openai-compatibility.md.
"""
from __future__ import annotations

import base64
import math
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.errors import InvalidRequest, PermanentError
from jobs.schemas import RenderRequest
from jobs.status import JobStatus
from jobs.store import JobRecord

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
#: ``quality`` → the model's default steps times this (at least one step).
QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "auto": 1.0, "high": 1.5}


class ImageGenerate(BaseModel):
    """``POST /v1/images/generations`` as the OpenAI SDK sends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "a red bicycle, studio photo", "model": "tiny", "n": 2, "size": "64x64", "quality": "low",
         "response_format": "b64_json"}]})
    prompt: str = Field(..., max_length=32_000)
    model: str | None = Field(None, description="A registered model (GET /v1/models); default: tiny.")
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field("auto", description="'WIDTHxHEIGHT' (multiples of 8) or 'auto'.")
    quality: Literal["low", "medium", "high", "auto"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    moderation: Literal["auto", "low"] | None = Field(None, description=(
        "'auto' (default): the content policy as written. 'low': borderline categories (those that block "
        "with severity <= 6: sexual_explicit and graphic_violence in the default policy) flag instead of "
        "blocking, on the prompt and the rendered images; minors, real-person sexual content, self-harm and "
        "hate never relax (safety/levels.py)."))
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = Field(None, max_length=256)
    stream: Literal[False] | None = None


class ModerationRefused(PermanentError):
    """The content policy refused the prompt or every image."""

    code = "moderation_blocked"


class RenderFailed(PermanentError):
    code = "render_failed"


def _invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", errors=[{"field": param, "message": message}])


def render_request(client, body: ImageGenerate) -> RenderRequest:
    """The batchrender request for an OpenAI one; ``InvalidRequest`` naming the OpenAI parameter."""
    name = body.model or "tiny"
    models = client.registry.all()
    if name not in models:
        raise _invalid("model", f"unknown model {name!r}; available: {', '.join(sorted(models))} (GET /v1/models)")
    spec = models[name]
    if body.background == "transparent" and body.output_format == "jpeg":
        raise _invalid("background", "background 'transparent' needs an alpha channel and output_format 'jpeg' "
                       "has none; use output_format 'png' or 'webp', or background 'opaque'")
    fields: dict[str, Any] = {"prompt": body.prompt, "model": name, "num_images": body.n,
                              "output_format": body.output_format or "png", "background": body.background or "auto"}
    size = body.size or "auto"
    if size != "auto":
        m = _SIZE.match(size)
        if not m:
            raise _invalid("size", f"{size!r} is not 'WIDTHxHEIGHT' or 'auto'")
        width, height = int(m.group(1)), int(m.group(2))
        if width % 8 or height % 8:
            raise _invalid("size", f"{size} is not a multiple of 8 on both sides; model {name} renders multiples of 8")
        fields.update(width=width, height=height)
    fields["steps"] = max(1, math.ceil(spec.default_steps * QUALITY_STEPS[body.quality or "auto"]))
    if body.output_compression is not None:
        fields["quality"] = max(1, body.output_compression)
    if body.user:
        fields["metadata"] = {"openai_user": body.user}
    if body.moderation == "low":
        fields["moderation"] = "low"
    return RenderRequest.parse(fields)


class ImageEdit(ImageGenerate):
    """``POST /v1/images/edits`` (multipart): the generation fields plus the uploaded images."""

    model_config = ConfigDict(extra="forbid")
    strength: float | None = Field(None, gt=0, le=1)


def data_uri(data: bytes, field: str) -> str:
    """An uploaded image as a data URI (PNG, JPEG or WebP by its first bytes)."""
    kind = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg" if data[:3] == b"\xff\xd8\xff" else \
        "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None
    if kind is None:
        raise _invalid(field, "upload a PNG, JPEG or WebP image")
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def openai_mask(client, data: bytes) -> bytes:
    """OpenAI's mask (transparent where the image is to change) as ours (white there), decoded
    under the same CPU budget as any upload. A mask with no transparency is read as ours."""
    import io

    from safety.decode import decode_bounded
    from safety.input_images import ALLOWED_FORMATS

    decoded = decode_bounded(data, max_pixels=client.settings.max_pixels, formats=ALLOWED_FORMATS,
                             cpu_s=client.settings.image_decode_cpu_s, mode="RGBA")
    if decoded.image is None:
        raise _invalid("mask", f"the mask was refused ({decoded.refused})")
    alpha = decoded.image.getchannel("A")
    if alpha.getextrema()[0] == 255:  # fully opaque: white already means "change here"
        mask = decoded.image.convert("L")
    else:
        mask = alpha.point(lambda a: 255 if a < 128 else 0)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def edit_request(client, body: ImageEdit, images: list[bytes], mask: bytes | None) -> RenderRequest:
    """An image-to-image (or, with a mask, inpainting) request from an OpenAI edit.

    Every image and the mask are decoded under one budget for the whole request
    (``safety.decode.request_budget``: the caller may have opened it already, so the job's own
    checks draw on it too); their pixels are added up from the headers first, so a request over
    it is refused before anything is decoded."""
    from safety.decode import request_budget

    if not images:
        raise _invalid("image", "upload at least one image")
    if len(images) > 16:
        raise _invalid("image", f"{len(images)} images; at most 16")
    s = client.settings
    with request_budget(s.image_decode_request_pixels, s.image_decode_request_cpu_s):
        _check_total_pixels(s, images, mask)
        return _edit_request(client, body, images, mask)


def _check_total_pixels(settings, images: list[bytes], mask: bytes | None) -> None:
    """Refuse an edit whose images (and mask) hold more pixels than one request may decode,
    from their headers alone; unreadable headers are left to the stage that decodes them."""
    import io
    import warnings

    from PIL import Image

    total = 0
    for data in [*images, *([mask] if mask is not None else [])]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                width, height = Image.open(io.BytesIO(data)).size
        except Exception:  # noqa: BLE001 - judged (and named) where it is decoded
            continue
        total += width * height
    limit = settings.image_decode_request_pixels
    if total > limit:
        what = f"{len(images)} image{'s' if len(images) > 1 else ''}{' and a mask' if mask is not None else ''}"
        raise _invalid("image", f"decode_budget: the {what} hold {total} pixels in all; one request may decode at "
                       f"most {limit} (BATCHRENDER_IMAGE_DECODE_REQUEST_PIXELS): send fewer or smaller images")


def _edit_request(client, body: ImageEdit, images: list[bytes], mask: bytes | None) -> RenderRequest:
    base = render_request(client, body)
    fields = base.model_dump(exclude_none=True)
    if body.size in (None, "auto"):
        fields.pop("width", None)
        fields.pop("height", None)
    # Several references: the first drives the render (IP-Adapter conditioning is issue 16); the
    # others are still decoded under the budget and moderated like any upload.
    for n, extra in enumerate(images[1:], 2):
        check = client.moderation.check_input_image(extra, actor="openai-edit")
        if check.decision.blocked:
            # The rule says what was wrong with it (too many pixels, the decode budget, ...).
            rule = next((v.rule for v in check.decision.verdicts if v.action.value == "block"), "")
            raise _invalid("image", f"image {n} was refused ({rule or check.decision.message})")
    fields.update(image=data_uri(images[0], "image"), strength=body.strength or (0.99 if mask else 0.75))
    if mask is not None:
        fields["mask"] = data_uri(openai_mask(client, mask), "mask")
    return RenderRequest.parse(fields)


def images_response(client, rec: JobRecord, body: ImageGenerate, base: str | None) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse`` for a finished job; ModerationRefused / RenderFailed otherwise."""
    if rec.status is JobStatus.BLOCKED:
        error = rec.error or {}
        raise ModerationRefused(error.get("message") or "the content policy refused this request",
                                categories=error.get("categories") or [])
    if rec.status is not JobStatus.SUCCEEDED or rec.result is None:
        error = rec.error or {}
        raise RenderFailed(f"the render {rec.status.value}: {error.get('message') or error.get('code') or 'no reason'} "
                           f"(job {rec.job_id})")
    data = []
    for image in rec.result.images:
        if body.response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(client.storage.get(image.key)).decode()})
        else:
            data.append({"url": client.links.download(rec.job_id, image, base)[0]})
    first = rec.result.images[0] if rec.result.images else None
    words = len(body.prompt.split())
    return {
        "created": int(rec.created_at or time.time()), "data": data,
        "background": "transparent" if first is not None and first.alpha is not None else "opaque",
        "output_format": first.format.value if first else (body.output_format or "png"),
        "quality": {"auto": "medium"}.get(body.quality or "auto", body.quality),
        "size": f"{first.width}x{first.height}" if first else body.size,
        "usage": {"input_tokens": words, "output_tokens": 0, "total_tokens": words,
                  "input_tokens_details": {"text_tokens": words, "image_tokens": 0}},
        "batchrender": {"job_id": rec.job_id},
    }


def models_list(client) -> dict[str, Any]:
    """OpenAI's model list: the registry."""
    return {"object": "list", "data": [model_object(spec) for spec in client.registry.all().values()]}


def model_object(spec) -> dict[str, Any]:
    return {"id": spec.name, "object": "model", "created": 0, "owned_by": "batchrender",
            "default_steps": spec.default_steps, "base_size": spec.base_size}
