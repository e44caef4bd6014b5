"""Image encoding: deterministic bytes for equal pixels (no timestamps, fixed encoder settings).

An RGBA image (``background: transparent``) keeps its alpha channel in PNG and WebP (WebP's
alpha plane is lossless whatever ``quality``); JPEG has none, which the request schema refuses
before anything renders.
"""
from __future__ import annotations

import hashlib
import io

from PIL import Image

from jobs.schemas import OutputFormat


def encode(img: Image.Image, fmt: OutputFormat, quality: int) -> bytes:
    buf = io.BytesIO()
    rgb = img.convert("RGBA" if has_alpha(img) and fmt.has_alpha else "RGB")
    if fmt is OutputFormat.PNG:
        rgb.save(buf, format="PNG", compress_level=6)
    elif fmt is OutputFormat.JPEG:
        rgb.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    else:
        rgb.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def thumbnail(img: Image.Image, longest_side: int) -> bytes:
    """A small WebP preview (galleries, listings): longest side ``longest_side``, never enlarged."""
    small = img.convert("RGBA" if has_alpha(img) else "RGB")
    small.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA")


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the raw RGB pixels (RGBA for transparent images): equal for equal renders,
    whatever the container or signature."""
    alpha = has_alpha(img)
    rgb = img.convert("RGBA" if alpha else "RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:{'RGBA:' if alpha else ''}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
