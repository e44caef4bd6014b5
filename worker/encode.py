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


def pixel_sha256(img: Image.Image) -> str:
    """Hash of the raw RGB pixels: equal for equal renders, whatever the container or signature."""
    rgb = img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()
