"""Perceptual hashes for "did we make this?" lookups.

The baseline is imagehash's 64-bit DCT pHash, reimplemented in numpy (no scipy): grayscale,
resize to 32x32 with LANCZOS, 2-D DCT-II, keep the top-left 8x8 block, one bit per coefficient
above the block's median. It survives re-encoding, manifest stripping and resizing, but not
cropping: a 5% crop on each side rescales the content by 1/0.9 and moves every DCT basis, which
puts cropped copies at distances close to unrelated images (measured in docs/provenance.md).

So every delivered image is indexed under several hashes: the whole image plus centre crops at
:data:`CROP_FRACTIONS` per side. A query is hashed once, as-is; a cropped copy then lands close
to the variant that was cropped by a similar amount.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

HASH_BITS = 64
#: Centre-crop fractions (per side) indexed for every image. 0.0 is the image itself. The ladder
#: step bounds the crop mismatch a query can have against its nearest variant (see docs).
CROP_FRACTIONS: tuple[float, ...] = tuple(i / 100 for i in range(11))
_SIZE = 32
_LOW = 8
_VARIANT_SIDE = 512


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    # Unnormalised DCT-II, the same scaling as scipy.fftpack.dct(type=2) that imagehash uses, so
    # the bits match imagehash exactly (the DC scale matters for the median comparison).
    n = np.arange(_SIZE)
    k = n.reshape(-1, 1)
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * _SIZE))


def open_image(data: bytes | str | Path | Image.Image) -> Image.Image:
    """Open bytes, a path or an already-open image; fully load it so the file can close."""
    if isinstance(data, Image.Image):
        return data
    if isinstance(data, (str, Path)):
        with Image.open(data) as im:
            im.load()
            return im.copy()
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def phash(image: Image.Image) -> int:
    """64-bit DCT pHash of ``image`` (imagehash's algorithm), as an unsigned int."""
    gray = image.convert("L").resize((_SIZE, _SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    d = _dct_matrix()
    coeffs = d @ pixels @ d.T
    low = coeffs[:_LOW, :_LOW]
    bits = (low > np.median(low)).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def center_crop(image: Image.Image, fraction: float) -> Image.Image:
    """Remove ``fraction`` of the width and height from each side."""
    if fraction <= 0:
        return image
    w, h = image.size
    dx, dy = round(w * fraction), round(h * fraction)
    return image.crop((dx, dy, w - dx, h - dy))


def index_hashes(image: Image.Image, fractions: tuple[float, ...] = CROP_FRACTIONS) -> list[int]:
    """The hashes to index for one delivered image: one per crop variant, duplicates removed."""
    # Crops of a 512 px copy hash the same as crops of the original to within a bit or two and
    # keep 11 variants of a 2048 px render cheap; the uncropped hash uses the original.
    small = image.convert("L")
    if max(small.size) > _VARIANT_SIDE:
        small.thumbnail((_VARIANT_SIDE, _VARIANT_SIDE), Image.Resampling.BOX)
    seen: list[int] = []
    for f in fractions:
        h = phash(image) if f <= 0 else phash(center_crop(small, f))
        if h not in seen:
            seen.append(h)
    return seen


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def to_signed(h: int) -> int:
    """Map an unsigned 64-bit hash into SQLite's signed INTEGER range."""
    return h - (1 << 64) if h >= 1 << 63 else h


def from_signed(h: int) -> int:
    """Inverse of :func:`to_signed`."""
    return h + (1 << 64) if h < 0 else h
