"""Versioned JSON payloads: the render request, the queue message, and results.

Validation happens in two steps, both reporting the field and what is allowed:
1. ``RenderRequest`` (pydantic): types, ranges and shapes that hold for every deployment.
2. ``resolve()``: what depends on settings and the model (unknown model, pixel limits, sizes
   from an aspect ratio, default steps/guidance, drawing the seed), giving a ``JobMessage``.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import time
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from jobs.errors import InvalidRequest
from jobs.families import FAMILIES, family, size_for
from jobs.lineage import Lineage
from jobs.status import JobStatus

SCHEMA_VERSION = 1
MAX_SEED = 2**63 - 1
MAX_METADATA_BYTES = 16 * 1024
#: metadata: nesting levels (the top object is level 1) and keys in all.
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 256
MAX_METADATA_KEY_CHARS = 128
#: A batch's metadata, as OpenAI caps it: keys, characters in a key, characters in a value
#: (a value that is not a string counts as its JSON).
MAX_BATCH_METADATA_KEYS = 16
MAX_BATCH_METADATA_KEY_CHARS = 64
MAX_BATCH_METADATA_VALUE_CHARS = 512
#: A data URI of a 20 MiB image; the HTTP API's body limit is usually the tighter bound.
MAX_IMAGE_CHARS = 28 * 1024 * 1024
DEFAULT_STRENGTH = 0.75
ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1": (1, 1), "16:9": (16, 9), "9:16": (9, 16), "4:5": (4, 5), "5:4": (5, 4),
    "3:2": (3, 2), "2:3": (2, 3), "4:3": (4, 3), "3:4": (3, 4), "21:9": (21, 9),
}
#: The characters a custom_id may hold (also what campaigns make of a custom_id pattern).
CUSTOM_ID_CHARS = "A-Za-z0-9._:-"
_CUSTOM_ID = re.compile(f"[{CUSTOM_ID_CHARS}]{{1,128}}")
#: Colours a palette may hold; ``palette_strict`` renders each image at most ``MAX_PALETTE_TRIES`` times.
MAX_PALETTE = 8
#: Reference images one job may give (``references``).
MAX_REFERENCES = 4
DEFAULT_PALETTE_TRIES, MAX_PALETTE_TRIES = 4, 8
_HEX_COLOUR = re.compile(r"#(?:[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})")
#: ``#RRGGBB`` written in a prompt (3-digit forms are left alone there: "#123" is usually a number).
PROMPT_HEX = re.compile(r"#([0-9A-Fa-f]{6})\b")
#: ``background: auto`` becomes transparent when the prompt asks for it in words like these.
_WANTS_TRANSPARENCY = re.compile(
    r"\b(transparent|no|without(?: an?)?|removed?)[ -]background\b|\bbackground[ -]?(less|removed)\b|"
    r"\bcut[ -]?out\b|\bwith transparency\b|\balpha channel\b", re.IGNORECASE)


class OutputFormat(str, Enum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def has_alpha(self) -> bool:
        return self is not OutputFormat.JPEG


class Fit(str, Enum):
    """How a rendition is cut from its master: ``crop`` a window of the rendition's aspect ratio
    centred on the subject (alpha, else a saliency estimate; never cutting an opaque subject pixel
    of a transparent master: what does not fit is padded), ``pad`` the whole master onto a canvas
    of that ratio, ``extend`` the canvas by outpainting with the model's inpainting pipeline."""

    CROP = "crop"
    PAD = "pad"
    EXTEND = "extend"


#: A rendition's smallest side, its largest, and how far ``extend`` may grow the master per side
#: (the outpainted canvas is at most ``MAX_EXTEND`` times the master along the extended axis).
MIN_RENDITION_SIDE, MAX_RENDITION_SIDE, MAX_RENDITION_PIXELS = 64, 8192, 40_000_000
MAX_RENDITIONS = 16
MAX_EXTEND = 2.0
_RENDITION_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
_RATIO = re.compile(r"(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)")


def parse_ratio(text: str) -> tuple[float, float]:
    """``"1.91:1"`` → (1.91, 1.0); ValueError naming the form (positive numbers W:H, at most 10:1)."""
    m = _RATIO.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        raise ValueError(f"aspect ratio {text[:20]!r} is not W:H with positive numbers (e.g. 4:5, 1.91:1)")
    w, h = float(m.group(1)), float(m.group(2))
    if max(w / h, h / w) > 10:
        raise ValueError(f"aspect ratio {text!r} is more extreme than 10:1")
    return w, h


class Rendition(BaseModel):
    """One channel output derived from a master image (``renditions`` on a request)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "story", "width": 1080, "height": 1920, "fit": "crop", "format": "jpeg", "quality": 85}]})

    name: str = Field(..., description="Letters, digits, '_' and '-' (1–32); unique within the request.")
    width: int | None = Field(None, strict=True, description=f"Pixels ({MIN_RENDITION_SIDE}–{MAX_RENDITION_SIDE}).")
    height: int | None = Field(None, strict=True, description=f"Pixels ({MIN_RENDITION_SIDE}–{MAX_RENDITION_SIDE}).")
    aspect_ratio: str | None = Field(None, description="W:H (e.g. 4:5, 1.91:1) instead of a size: the master's "
                                                        "pixels at that ratio, not scaled.")
    format: OutputFormat | None = Field(None, description="png, jpeg or webp; default the master's.")
    quality: int | None = Field(None, ge=1, le=100, strict=True, description="JPEG/WebP quality; default the master's.")
    fit: Fit = Fit.CROP
    pad_colour: str | None = Field(None, description="pad/crop fill as #RRGGBB, or 'transparent' (PNG/WebP); "
                                                       "default transparent for a transparent master, else white.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _RENDITION_NAME.fullmatch(v):
            raise ValueError("a rendition name uses letters, digits, '_' and '-' (1–32 characters)")
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int | None, info) -> int | None:
        if v is not None and not MIN_RENDITION_SIDE <= v <= MAX_RENDITION_SIDE:
            raise ValueError(f"{info.field_name} {v} is out of range; a rendition is "
                             f"{MIN_RENDITION_SIDE}–{MAX_RENDITION_SIDE} pixels a side")
        return v

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, v: str | None) -> str | None:
        if v is not None:
            parse_ratio(v)
        return v

    @field_validator("pad_colour")
    @classmethod
    def _pad(cls, v: str | None) -> str | None:
        if v is None or v == "transparent":
            return v
        if not _HEX_COLOUR.fullmatch(v.strip()):
            raise ValueError(f"pad_colour {v[:20]!r} is not a colour; give #RRGGBB, #RGB or 'transparent'")
        h = v.strip()[1:].upper()
        return "#" + (h if len(h) == 6 else "".join(c * 2 for c in h))

    @model_validator(mode="after")
    def _size(self) -> "Rendition":
        if self.aspect_ratio and (self.width or self.height):
            raise ValueError(f"rendition {self.name!r}: give either width/height or aspect_ratio, not both")
        if not self.aspect_ratio and (self.width is None or self.height is None):
            raise ValueError(f"rendition {self.name!r}: give width and height, or aspect_ratio")
        if self.width and self.height and self.width * self.height > MAX_RENDITION_PIXELS:
            raise ValueError(f"rendition {self.name!r}: {self.width}x{self.height} exceeds "
                             f"{MAX_RENDITION_PIXELS} pixels")
        if self.pad_colour == "transparent" and self.format is OutputFormat.JPEG:
            raise ValueError(f"rendition {self.name!r}: JPEG has no alpha; give pad_colour as #RRGGBB or format png/webp")
        return self

    @property
    def ratio(self) -> tuple[float, float]:
        """The rendition's aspect ratio, width to height."""
        if self.aspect_ratio:
            return parse_ratio(self.aspect_ratio)
        assert self.width and self.height
        return float(self.width), float(self.height)

    def size_from(self, master_w: int, master_h: int) -> tuple[int, int]:
        """The output size: width × height, or for an aspect ratio the largest window of that
        ratio inside the master (so nothing is scaled)."""
        if self.width and self.height:
            return self.width, self.height
        rw, rh = self.ratio
        if master_w / master_h > rw / rh:
            return max(1, round(master_h * rw / rh)), master_h
        return master_w, max(1, round(master_w * rh / rw))


def largest_rendition(renditions: list[Rendition]) -> Rendition:
    """The rendition the master is sized for: the most pixels among those with a size, else the first."""
    sized = [r for r in renditions if r.width and r.height]
    return max(sized, key=lambda r: (r.width or 0) * (r.height or 0)) if sized else renditions[0]


def extend_factor(master_w: int, master_h: int, ratio: tuple[float, float]) -> float:
    """How many times the master's side the outpainted canvas is along the extended axis (>= 1)."""
    m, t = master_w / master_h, ratio[0] / ratio[1]
    return max(m / t, t / m)


class Background(str, Enum):
    """``transparent``: RGBA with the backdrop cut out; ``opaque``: as rendered; ``auto``:
    transparent when the prompt asks for it ("transparent background", "cutout", ...) and the
    format has an alpha channel, else opaque (decided at submission)."""

    TRANSPARENT = "transparent"
    OPAQUE = "opaque"
    AUTO = "auto"


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\ud[89a-f]", re.IGNORECASE)


def prompt_text(v: str) -> str:
    """A prompt as every request takes it: stripped, 1–2000 characters (ValueError naming the rule)."""
    v = v.strip()
    if not v:
        raise ValueError("prompt is empty; give 1–2000 characters")
    if len(v) > 2000:
        raise ValueError(f"prompt is {len(v)} characters; the limit is 2000")
    return v


class RenderRequest(BaseModel):
    """What a client asks for. Unset size/steps/guidance/seed are filled in by ``resolve``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompt": "a red bicycle leaning on a brick wall, studio photo", "aspect_ratio": "4:5", "seed": 7,
         "num_images": 2, "custom_id": "sku-1042", "metadata": {"campaign": "spring"}}]})

    prompt: str = Field(..., description="What to render (1–2000 characters).")
    negative_prompt: str | None = Field(None, max_length=2000)
    model: str = "tiny"
    width: int | None = Field(None, ge=8, le=8192, strict=True, description="Multiple of 8.")
    height: int | None = Field(None, ge=8, le=8192, strict=True, description="Multiple of 8.")
    aspect_ratio: str | None = Field(None, description=f"One of {', '.join(ASPECT_RATIOS)}.")
    steps: int | None = Field(None, ge=1, le=500, strict=True)
    guidance_scale: float | None = Field(None, ge=0, le=50, strict=True)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True, description="Image i uses seed + i.")
    num_images: int = Field(1, ge=1, le=64, strict=True)
    output_format: OutputFormat = OutputFormat.PNG
    quality: int = Field(90, ge=1, le=100, strict=True, description="JPEG/WebP quality.")
    custom_id: str | None = Field(None, description="Your reference; letters, digits, . _ : - (max 128).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    moderation: Literal["auto", "low"] | None = Field(None, description=(
        "'auto' (default): the content policy as written. 'low': borderline categories (those that block with "
        "severity <= 6: sexual_explicit and graphic_violence in the default policy) flag instead of blocking, on "
        "the prompt and the rendered images; minors, real-person sexual content, self-harm and hate never relax "
        "(safety/levels.py)."))
    image: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description=(
        "Reference image for image-to-image: a data: URI (base64 PNG, JPEG or WebP) or an http(s) URL."))
    mask: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description=(
        "Inpainting: a mask the size of the reference, white where the image is to be redrawn "
        "(data: URI or http(s) URL); needs image."))
    strength: float | None = Field(None, gt=0, le=1, strict=True,
                                   description="How far to move from the reference (0-1].")
    references: list[str] | None = Field(None, min_length=1, max_length=MAX_REFERENCES, description=(
        f"Up to {MAX_REFERENCES} images to learn from (data: URIs or http(s) URLs): an IP-Adapter reads all "
        "of them when the model provides one; otherwise the first is the image-to-image reference."))
    webhook: str | None = Field(None, max_length=2048, description="http(s) URL for signed callbacks.")
    webhook_events_filter: list[str] | None = None
    background: Background = Field(Background.AUTO, description=(
        "transparent: RGBA PNG/WebP with the background cut out (not with jpeg); opaque; auto: "
        "transparent when the prompt asks for a transparent background or cutout, else opaque."))
    palette: list[str] | None = Field(None, description=(
        f"Colours as #RRGGBB (or #RGB), 1–{MAX_PALETTE}: named for the text encoder and checked in each "
        "image (CIEDE2000). Without it, #RRGGBB codes in the prompt are the palette."))
    palette_strict: bool = Field(False, strict=True, description=(
        "Render each image with up to palette_tries seeds and keep the one closest to the palette."))
    palette_tries: int = Field(DEFAULT_PALETTE_TRIES, ge=2, le=MAX_PALETTE_TRIES, strict=True, description=(
        f"Seeds tried per image with palette_strict (2–{MAX_PALETTE_TRIES}); counted in the cost budget."))
    renditions: list[Rendition] | None = Field(None, min_length=1, max_length=MAX_RENDITIONS, description=(
        "Channel outputs derived from each image (crop, pad or extend); without a size the image is "
        "rendered at the model's native size nearest the largest rendition's aspect ratio."))
    cache: Literal["reuse"] | None = Field(None, description=(
        "'reuse': when this tenant already has a job with the same content key (model, prompt, every "
        "parameter that changes pixels, seed, shape) that succeeded or is still running, answer with it "
        "instead of rendering again. Needs an explicit seed."))
    priority: Literal["interactive", "normal", "bulk"] | None = Field(None, description=(
        "Order among this tenant's own queued jobs (tenants share render time fairly whatever their "
        "priorities): 'interactive' first, then 'normal', then 'bulk'. Default: 'normal'; campaign "
        "cells, batches and OpenAI-style batches 'bulk'; refine and synchronous images.generate "
        "'interactive'. Bulk is never starved (docs/scheduling.md)."))
    deliver_by: float | None = Field(None, description=(
        "A deadline (RFC 3339 time, or Unix seconds): the job is planned against the live queue and "
        "measured render rates and ordered by it among this tenant's jobs; a deadline that cannot be "
        "met is refused (422) naming the earliest feasible time."))

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _valid_unicode(cls, v: str | None, info) -> str | None:
        # A lone surrogate (JSON "\ud800") is not text: it cannot be encoded, stored or logged.
        if v is not None:
            bad = _SURROGATE.search(v)
            if bad:
                raise surrogate_error(info.field_name, bad)
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return prompt_text(v)

    @field_validator("deliver_by", mode="before")
    @classmethod
    def _deliver_by(cls, v: Any) -> Any:
        # Only the form is checked here (a stored request is read again after its deadline);
        # "not in the past" is the producer's check at submit (jobs.fairshare.plan_delivery).
        if v is None or isinstance(v, bool):
            if isinstance(v, bool):
                raise ValueError("give an RFC 3339 time (2026-12-05T18:00:00Z) or Unix seconds")
            return v
        if isinstance(v, str):
            from datetime import datetime, timezone

            try:
                when = datetime.fromisoformat(v.strip().replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                try:
                    v = float(v)
                except ValueError:
                    raise ValueError(f"{v[:40]!r} is not a time: give an RFC 3339 time "
                                     "(2026-12-05T18:00:00Z) or Unix seconds") from None
            else:
                if when.tzinfo is None:
                    raise ValueError("give the time zone (2026-12-05T18:00:00Z or +01:00)")
                v = when.astimezone(timezone.utc).timestamp()
        if not isinstance(v, (int, float)) or not (0 < float(v) < 4102444800):  # before 2100
            raise ValueError("give an RFC 3339 time or Unix seconds between 1970 and 2100")
        return float(v)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int | None) -> int | None:
        if v is not None and v % 8:
            raise ValueError(f"{v} is not a multiple of 8; use {v - v % 8} or {v - v % 8 + 8}")
        return v

    @field_validator("aspect_ratio")
    @classmethod
    def _ratio(cls, v: str | None) -> str | None:
        if v is not None and v not in ASPECT_RATIOS:
            raise ValueError(f"unknown aspect ratio {v!r}; allowed: {', '.join(ASPECT_RATIOS)}")
        return v

    @field_validator("custom_id")
    @classmethod
    def _custom_id(cls, v: str | None) -> str | None:
        if v is not None and (not _CUSTOM_ID.fullmatch(v) or v in (".", "..")):
            raise ValueError("custom_id allows letters, digits, '.', '_', ':' and '-' (1–128 characters), "
                             "not '.' or '..'")
        return v

    @field_validator("image", "mask")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("data:image/") or v.startswith(("http://", "https://"))):
            raise ValueError("give a data:image/...;base64,... URI or an http(s) URL")
        return v

    @field_validator("references")
    @classmethod
    def _references(cls, v: list[str] | None) -> list[str] | None:
        for i, item in enumerate(v or []):
            if len(item) > MAX_IMAGE_CHARS:
                raise ValueError(f"reference {i} is larger than {MAX_IMAGE_CHARS} characters")
            if not (item.startswith("data:image/") or item.startswith(("http://", "https://"))):
                raise ValueError(f"reference {i}: give a data:image/...;base64,... URI or an http(s) URL")
        return v

    @field_validator("background")
    @classmethod
    def _background(cls, v: Background, info) -> Background:
        fmt = info.data.get("output_format")
        if v is Background.TRANSPARENT and fmt is not None and not fmt.has_alpha:
            raise ValueError(f"background 'transparent' needs an alpha channel and output_format "
                             f"'{fmt.value}' has none; use output_format 'png' or 'webp', or background 'opaque'")
        return v

    @field_validator("palette")
    @classmethod
    def _palette(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError(f"palette is empty; give 1–{MAX_PALETTE} colours as #RRGGBB, or leave it out")
        if len(v) > MAX_PALETTE:
            raise ValueError(f"palette has {len(v)} colours; at most {MAX_PALETTE} are allowed")
        out = []
        for i, code in enumerate(v):
            if not _HEX_COLOUR.fullmatch(code.strip()):
                raise ValueError(f"palette[{i}] {code[:20]!r} is not a hex colour; give #RRGGBB or #RGB "
                                 "(e.g. #1A73E8)")
            h = code.strip()[1:].upper()
            out.append("#" + (h if len(h) == 6 else "".join(c * 2 for c in h)))
        return list(dict.fromkeys(out))

    @field_validator("palette_strict")
    @classmethod
    def _palette_strict(cls, v: bool, info) -> bool:
        if v and not info.data.get("palette") and not PROMPT_HEX.search(info.data.get("prompt") or ""):
            raise ValueError("palette_strict needs colours to match: give palette (#RRGGBB codes) or write "
                             "#RRGGBB codes in the prompt")
        return v

    @field_validator("renditions")
    @classmethod
    def _renditions(cls, v: list[Rendition] | None) -> list[Rendition] | None:
        seen: set[str] = set()
        for r in v or []:
            if r.name in seen:
                raise ValueError(f"rendition name {r.name!r} is used twice; names must be unique")
            seen.add(r.name)
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_metadata(v)
        size = len(json.dumps(v))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        # Lone surrogates ("\ud800" in JSON) are not text: they cannot be stored, logged or sent
        # on. Refused in every string of the request, naming where.
        if isinstance(data, dict):
            # prompt and negative_prompt have their own check, which names the field as the loc.
            found = find_surrogate({k: v for k, v in data.items() if k not in ("prompt", "negative_prompt")})
            if found:
                raise surrogate_error(*found)
        return data

    @model_validator(mode="after")
    def _size_xor_ratio(self) -> "RenderRequest":
        if self.aspect_ratio and (self.width or self.height):
            raise ValueError("give either width/height or aspect_ratio, not both")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.cache == "reuse" and self.seed is None:
            raise ValueError("cache 'reuse' needs an explicit seed: a drawn seed never matches an earlier job")
        for r in self.renditions or []:
            if r.fit is Fit.EXTEND and self.transparent:
                raise ValueError(f"rendition {r.name!r}: fit 'extend' outpaints scenery and the master is "
                                 "transparent; use fit 'pad' (transparent) instead")
            if r.pad_colour == "transparent" and not self.transparent:
                raise ValueError(f"rendition {r.name!r}: pad_colour 'transparent' needs a transparent master "
                                 "(background 'transparent'); give #RRGGBB")
        return self

    @property
    def requested_palette(self) -> list[str]:
        """The palette to name and check: ``palette``, else the #RRGGBB codes in the prompt (first 8)."""
        if self.palette:
            return list(self.palette)
        found = dict.fromkeys("#" + m.group(1).upper() for m in PROMPT_HEX.finditer(self.prompt))
        return list(found)[:MAX_PALETTE]

    @property
    def transparent(self) -> bool:
        """Whether the images get an alpha channel (``auto`` decided as ``resolve`` does)."""
        if self.background is Background.AUTO:
            return self.output_format.has_alpha and bool(_WANTS_TRANSPARENCY.search(self.prompt))
        return self.background is Background.TRANSPARENT

    @property
    def renders_per_image(self) -> int:
        """Pipeline rows each image may cost: ``palette_tries`` with ``palette_strict``, else 1;
        plus one outpainting render per ``extend`` rendition."""
        return (self.palette_tries if self.palette_strict else 1) + len(self.extends)

    @property
    def extends(self) -> list[Rendition]:
        """The renditions made by outpainting (each a render of its own)."""
        return [r for r in self.renditions or [] if r.fit is Fit.EXTEND]

    @classmethod
    def parse(cls, data: Any) -> "RenderRequest":
        """Validate client input, turning pydantic's errors into one ``InvalidRequest``."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise invalid_from(e) from None


def check_metadata(v: dict[str, Any]) -> None:
    """Depth, key count and key length of ``metadata``, walked without recursion."""
    stack: list[tuple[Any, int]] = [(v, 1)]
    keys = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(node, dict):
            keys += len(node)
            if keys > MAX_METADATA_KEYS:
                raise ValueError(f"metadata holds more than {MAX_METADATA_KEYS} keys")
            for k, child in node.items():
                if len(k) > MAX_METADATA_KEY_CHARS:
                    raise ValueError(f"metadata key {k[:20]!r}... is longer than {MAX_METADATA_KEY_CHARS} characters")
                stack.append((child, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


def check_batch_metadata(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """A batch's ``metadata`` within OpenAI's limits (16 keys, keys of 64 characters, values of
    512); ValueError naming the limit and the key, without echoing the value."""
    if not v:
        return v
    if len(v) > MAX_BATCH_METADATA_KEYS:
        raise ValueError(f"metadata holds {len(v)} keys; a batch's metadata holds at most "
                         f"{MAX_BATCH_METADATA_KEYS} keys")
    for key, value in v.items():
        if len(key) > MAX_BATCH_METADATA_KEY_CHARS:
            raise ValueError(f"metadata key {key[:20]!r}... is {len(key)} characters; keys are at most "
                             f"{MAX_BATCH_METADATA_KEY_CHARS} characters")
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > MAX_BATCH_METADATA_VALUE_CHARS:
            raise ValueError(f"metadata value of {key[:64]!r} is {size} characters; values are at most "
                             f"{MAX_BATCH_METADATA_VALUE_CHARS} characters")
    return v


def surrogate_error(where: str, bad: re.Match) -> ValueError:
    """The error for a lone surrogate found at ``where`` (a field or a path into the request)."""
    return ValueError(f"{where} contains a lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}; "
                      f"send valid Unicode text (UTF-8)")


def find_surrogate(data: Any, limit: int = 100_000) -> tuple[str, re.Match] | None:
    """Where the first lone surrogate is (the string's path, the match), or None; walked
    without recursion."""
    try:
        # repr escapes every lone surrogate as \udXXX (they are not printable), so when it holds
        # none there is none; a hit (or a text that spells one out) is walked to find where.
        if not _ESCAPED_SURROGATE.search(repr(data)):
            return None
    except Exception:  # noqa: BLE001 - too deep for repr, an int too long to print...: the walk decides
        pass
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack and limit > 0:
        limit -= 1
        node, path = stack.pop()
        if isinstance(node, str):
            bad = _SURROGATE.search(node)
            if bad:
                return path or "request", bad
        elif isinstance(node, dict):
            for k, child in node.items():
                bad = _SURROGATE.search(k) if isinstance(k, str) else None
                if bad:
                    return f"{path}.{k!a}".lstrip("."), bad
                stack.append((child, f"{path}.{k}".lstrip(".")))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node))
    return None


def invalid_from(e: ValidationError) -> InvalidRequest:
    errors = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "request"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields: {', '.join(RenderRequest.model_fields)}"
        elif err["type"] == "enum":
            msg = f"{msg}"
        errors.append({"field": field, "message": msg})
    summary = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
    return InvalidRequest(f"invalid request: {summary}", errors=errors)


def size_for_ratio(ratio: str, base: int) -> tuple[int, int]:
    """Width/height with about ``base``² pixels in ``ratio``, on the model's grid (64, or 8 when small)."""
    rw, rh = ASPECT_RATIOS[ratio]
    grid = 64 if base >= 256 else 8
    w = math.sqrt(base * base * rw / rh)
    h = w * rh / rw
    return max(grid, round(w / grid) * grid), max(grid, round(h / grid) * grid)


class JobMessage(BaseModel):
    """The queue payload: one resolved job. No image bytes ever travel here."""

    model_config = ConfigDict(extra="forbid")

    v: int = SCHEMA_VERSION
    job_id: str
    batch_id: str | None = None
    tenant: str | None = None
    request: RenderRequest
    submitted_at: float = Field(default_factory=time.time)
    #: How many times an output-stage block sent this job back with a new seed.
    reroll: int = Field(0, ge=0)
    #: Storage key of the reference image (image-to-image); the bytes never travel in messages.
    input_key: str | None = None
    #: Storage key of the inpainting mask (white: redraw), beside the reference.
    mask_key: str | None = None
    #: The reference image shows a face: the stricter real-person rules apply to the prompt.
    real_person_context: bool = False
    #: Storage keys of the reference images an IP-Adapter reads (``references`` on such a model).
    reference_keys: list[str] = Field(default_factory=list, max_length=MAX_REFERENCES)
    #: How many ``references`` the request gave (their bytes are in storage, never in messages).
    references_given: int = Field(0, ge=0, le=MAX_REFERENCES)
    #: A refinement (producer/refine.py): the parent job and image, the turn, the chain's root.
    lineage: Lineage | None = None
    #: Unix time after which no worker acts on this message (``message_ttl_s`` after submission),
    #: and the job record's nonce: both signed, binding the message to the job's life
    #: (jobs/signing.py). None only in messages signed before they existed.
    expires_at: float | None = None
    nonce: str | None = Field(None, max_length=64)
    #: HMAC of everything else, by a producer or worker of this deployment (jobs/signing.py).
    signature: str | None = Field(None, max_length=128)
    #: The reference image's (and mask's) bytes between validation and upload (never serialized).
    _input_bytes: bytes | None = PrivateAttr(None)
    _mask_bytes: bytes | None = PrivateAttr(None)
    _reference_bytes: list[bytes] = PrivateAttr(default_factory=list)

    @field_validator("v")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"message schema version {v} is not supported (this worker reads {SCHEMA_VERSION})")
        return v

    @property
    def seeds(self) -> list[int]:
        r = self.request
        assert r.seed is not None
        return [(r.seed + i) % (MAX_SEED + 1) for i in range(r.num_images)]


def resolve(request: RenderRequest, spec: Any, settings: Any) -> RenderRequest:
    """Fill defaults from the model and enforce deployment limits. ``spec`` is a ``ModelSpec``."""
    errors: list[dict[str, str]] = []
    if request.strength is not None and request.image is None:
        errors.append({"field": "strength", "message": "strength applies to image-to-image: give an image too"})
    if request.mask is not None and request.image is None:
        errors.append({"field": "mask", "message": "a mask applies to an image: give the image too"})
    image = request.image
    if request.references and not getattr(spec, "ip_adapter", False):
        if request.image is not None:
            errors.append({"field": "references", "message": f"model {spec.name!r} has no IP-Adapter, so its "
                           "references are read as the image-to-image reference: give image or references, not both"})
        image = request.references[0]  # no IP-Adapter: image-to-image from the first reference
    errors += family_errors(request, spec)
    width, height = request.width, request.height
    fam = family(getattr(spec, "family", "sd15"))
    if width is None:
        # With renditions and no size: the native size nearest the largest rendition's ratio.
        ratio = (largest_rendition(request.renditions).ratio if request.renditions and not request.aspect_ratio
                 else ASPECT_RATIOS[request.aspect_ratio or "1:1"])
        width, height = size_for(ratio, spec.base_size, fam)
    assert height is not None
    for r in request.renditions or []:
        # Renditions are resized copies, not renders: up to 4x the render limit in pixels each.
        if r.width and r.height and r.width * r.height > 4 * settings.max_pixels:
            errors.append({"field": f"renditions.{r.name}", "message": f"{r.width}x{r.height} exceeds "
                           f"{4 * settings.max_pixels} pixels (4 x BATCHRENDER_MAX_PIXELS) for a rendition"})
    for i, r in enumerate(request.extends):
        factor = extend_factor(width, height, r.ratio)
        if "mask" not in fam.tasks:
            errors.append({"field": f"renditions.{r.name}.fit", "message": f"model {spec.name!r} ({fam.name}) has "
                           "no inpainting pipeline to extend with; use fit 'crop' or 'pad'"})
        elif factor > MAX_EXTEND:
            errors.append({"field": f"renditions.{r.name}.fit", "message": f"extending the {width}x{height} "
                           f"master to {r.ratio[0]:g}:{r.ratio[1]:g} grows it {factor:.2f} times along one side; "
                           f"extend allows at most {MAX_EXTEND:g} times: use fit 'crop' or 'pad', or a master "
                           "size closer to this ratio"})
    steps = request.steps or spec.default_steps
    errors += limit_errors(width, height, steps, request.num_images, request.prompt, settings,
                           tries=request.renders_per_image)
    if image is not None and fam.name in WHOLE_DENOISING_STEPS:
        errors += denoising_errors(steps, request.strength or DEFAULT_STRENGTH)
    if errors:
        summary = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
        raise InvalidRequest(f"invalid request: {summary}", errors=errors)
    return request.model_copy(update={
        "width": width, "height": height, "aspect_ratio": None, "steps": steps,
        "guidance_scale": spec.default_guidance if request.guidance_scale is None else request.guidance_scale,
        "seed": secrets.randbelow(2**32) if request.seed is None else request.seed,
        "image": image,
        "strength": (request.strength or DEFAULT_STRENGTH) if image else None,
        "background": Background.TRANSPARENT if request.transparent else Background.OPAQUE,
    })


#: Families whose image-to-image and inpainting pipelines run ``int(steps * strength)`` steps
#: from the reference (diffusers' SD 1.5/SDXL ``get_timesteps``): 0 of them fails in the pipeline.
#: SD3 and FLUX count the fraction and always run at least one.
WHOLE_DENOISING_STEPS = frozenset({"sd15", "sdxl"})


def denoising_errors(steps: int, strength: float) -> list[dict[str, str]]:
    """An image-to-image request that would leave no denoising step, named with what to pass."""
    if int(steps * strength) >= 1:
        return []
    least = max(1, math.ceil(1 / strength))
    while int(least * strength) < 1:  # float rounding: 3 x (1/3) may fall just short of 1
        least += 1
    return [{"field": "steps", "message": f"image-to-image runs int(steps x strength) = int({steps} x {strength:g}) "
             f"= {int(steps * strength)} denoising steps: give at least {least} steps at strength {strength:g}, "
             "or a higher strength"}]


def family_errors(request: RenderRequest, spec: Any) -> list[dict[str, str]]:
    """What the model's family cannot take: sizes off its grid, a negative prompt (FLUX), a
    reference image or mask where its pipelines have none."""
    fam = family(getattr(spec, "family", "sd15"))
    errors = []
    for name in ("width", "height"):
        side = getattr(request, name)
        if side is not None and side % fam.multiple:
            errors.append({"field": name, "message": f"{side} is not a multiple of {fam.multiple}; model "
                           f"{spec.name!r} ({fam.name}) renders multiples of {fam.multiple}"})
    if request.negative_prompt and not fam.negative_prompt:
        errors.append({"field": "negative_prompt", "message": f"model {spec.name!r} ({fam.name}) takes no "
                       "negative prompt; leave it out or pick an sd15, sdxl or sd3 model"})
    for name, task, what in (("image", "image", "image-to-image"), ("mask", "mask", "inpainting")):
        if getattr(request, name) is not None and task not in fam.tasks:
            allowed = [n for n, f in FAMILIES.items() if task in f.tasks]
            errors.append({"field": name, "message": f"model {spec.name!r} ({fam.name}) does no {what}; "
                           f"it renders from text only. Families that take {name}: {', '.join(allowed)}"})
    return errors


def limit_errors(width: int, height: int, steps: int, num_images: int, prompt: str, settings: Any,
                 tries: int = 1) -> list[dict[str, str]]:
    """What a resolved request breaks of the deployment's limits (the producer checks at
    submission, the worker again before rendering: limits may have changed, messages may lie)."""
    errors = []
    for name, side in (("width", width), ("height", height)):
        if side > settings.max_side:
            errors.append({"field": name, "message": f"{side} exceeds the maximum side {settings.max_side}"})
    if width * height > settings.max_pixels:
        errors.append({"field": "width", "message": f"{width}x{height} = {width * height} pixels exceeds "
                       f"the limit of {settings.max_pixels} pixels"})
    if steps > settings.max_steps:
        errors.append({"field": "steps", "message": f"{steps} steps is out of range; allowed 1–{settings.max_steps}"})
    if num_images > settings.max_images:
        errors.append({"field": "num_images", "message": f"{num_images} images is out of range; "
                       f"allowed 1–{settings.max_images}"})
    if len(prompt) > settings.max_prompt_chars:
        errors.append({"field": "prompt", "message": f"prompt is {len(prompt)} characters; the limit "
                       f"is {settings.max_prompt_chars}"})
    cost = width * height * steps * num_images * tries
    if cost > settings.max_job_cost and not errors:
        tried = f" × palette_tries {tries}" if tries > 1 else ""
        errors.append({"field": "steps", "message": f"width × height × steps × num_images{tried} = {width}×{height}"
                       f"×{steps}×{num_images}{'×' + str(tries) if tries > 1 else ''} = {cost} exceeds the per-job "
                       f"budget of {settings.max_job_cost}; use fewer steps, a smaller size or fewer images"
                       f"{' or tries' if tries > 1 else ''}"})
    return errors


# -- results -------------------------------------------------------------------------------------
class Timings(BaseModel):
    queue_wait_s: float = 0.0
    load_s: float = 0.0
    #: This job's share of the pipeline call (the call's time divided by ``batch_size``).
    render_s: float = 0.0
    postprocess_s: float = 0.0
    #: How many jobs shared the pipeline call.
    batch_size: int = 1


class AlphaReport(BaseModel):
    """How a transparent image's alpha channel was made."""

    method: str = Field(description="key: colour-distance matte against the backdrop; matting: a segmentation model.")
    coverage: float = Field(description="Fraction of fully transparent pixels.")
    opaque: float = Field(description="Fraction of fully opaque pixels.")
    partial: float = Field(description="Fraction of partly transparent (feathered edge) pixels.")
    backdrop: str | None = Field(None, description="key: the backdrop colour keyed out, estimated from the border.")
    threshold: list[float] | None = Field(None, description="key: CIELAB distances of full transparency and opacity.")
    model: str | None = Field(None, description="matting: the model directory's name.")


class DominantColour(BaseModel):
    hex: str
    share: float = Field(description="Share of the (opaque) pixels in this cluster.")
    nearest: str = Field(description="The requested colour nearest to it.")
    delta_e: float = Field(description="CIEDE2000 distance to that colour.")
    passes: bool = Field(description="delta_e within the threshold.")


class RequestedColour(BaseModel):
    hex: str
    name: str = Field(description="The colour name the text encoder was given.")
    nearest_dominant: str | None = None
    delta_e: float | None = Field(None, description="CIEDE2000 distance to the nearest dominant colour.")
    passes: bool = Field(description="Some dominant colour is within the threshold: the colour shows up.")


class PaletteTry(BaseModel):
    seed: int
    score: float


class PaletteReport(BaseModel):
    """Palette compliance of one image: dominant colours (k-means, CIELAB) against the requested ones."""

    threshold: float = Field(description="CIEDE2000 distance at which a colour passes (10).")
    dominant: list[DominantColour]
    requested: list[RequestedColour]
    compliant_share: float = Field(description="Share of pixels in dominant colours that pass.")
    passes: bool = Field(description="Every requested colour shows up.")
    score: float = Field(description="Mean of the share of requested colours shown and compliant_share (0–1).")
    tries: list[PaletteTry] | None = Field(None, description="palette_strict: every seed rendered and its score.")


class ImageResult(BaseModel):
    index: int
    key: str
    url: str | None = None
    seed: int
    width: int
    height: int
    format: OutputFormat
    sha256: str
    #: SHA-256 of the decoded RGB pixels: equal for equal renders even though signatures differ.
    pixel_sha256: str
    bytes: int
    c2pa: str | None = None
    flags: list[str] = Field(default_factory=list)
    #: Storage key of the small WebP preview written beside the image (None: no thumbnail).
    thumbnail_key: str | None = None
    #: background transparent: how the alpha channel was made and how much is transparent.
    alpha: AlphaReport | None = None
    #: A palette was requested: the image's dominant colours against it (CIEDE2000).
    palette: PaletteReport | None = None
    #: ``renditions`` were requested: each channel output derived from this image.
    renditions: list[RenditionResult] = Field(default_factory=list)


class RenditionResult(BaseModel):
    """One channel output derived from an image: stored and C2PA-signed with the image as its
    ``parentOf`` ingredient."""

    name: str
    key: str
    width: int
    height: int
    format: OutputFormat
    fit: Fit
    sha256: str
    bytes: int
    c2pa: str | None = None
    #: The window taken from the master, in its pixels (x0, y0, x1, y1); may reach past its
    #: edges where the rendition was padded or extended.
    box: list[int]
    #: What the crop was centred on: ``alpha`` (the subject of a transparent master), ``saliency``,
    #: or ``none`` (pad and extend take the whole master).
    subject: str = "none"
    #: extend: the seed the outpainting render used.
    seed: int | None = None


class JobResult(BaseModel):
    """Written by the worker when a job ends; read by clients."""

    v: int = SCHEMA_VERSION
    job_id: str
    batch_id: str | None = None
    custom_id: str | None = None
    status: JobStatus
    model: str
    images: list[ImageResult] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    moderation: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    #: Tokens of the prompt the text encoder read, all of them: prompts longer than CLIP's window
    #: are encoded in chunks, never cut (SD3/FLUX: the T5 encoder's count). None: not rendered.
    prompt_tokens: int | None = None
    #: ``{"given", "used", "method": "ip_adapter" | "image_to_image"}`` when references were given.
    references: dict[str, Any] | None = None

    @property
    def outputs(self) -> list[ImageResult]:
        """The images, under the name the HTTP API and webhooks use."""
        return self.images
