"""Image encoding: deterministic bytes for equal pixels (no timestamps, fixed encoder settings)."""
from __future__ import annotations

import hashlib
import io

from PIL import Image

from jobs.schemas import OutputFormat


def encode(img: Image.Image, fmt: OutputFormat, quality: int) -> bytes:
    buf = io.BytesIO()
    rgb = img.convert("RGB")
    if fmt is OutputFormat.PNG:
        rgb.save(buf, format="PNG", compress_level=6)
    elif fmt is OutputFormat.JPEG:
        rgb.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    else:
        rgb.save(buf, format="WEBP", quality=quality, method=4)
    return buf.getvalue()


def thumbnail(img: Image.Image, longest_side: int) -> bytes:
    """A small WebP preview (galleries, listings): longest side ``longest_side``, never enlarged."""
    small = img.convert("RGB")
    small.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the raw RGB pixels: equal for equal renders, whatever the container or signature."""
    rgb = img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
