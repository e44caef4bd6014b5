"""64-bit DCT perceptual hash, bit-compatible with ``imagehash.phash`` (hash_size=8).

Algorithm (as imagehash): grayscale, resize to 32x32 with LANCZOS, 2-D DCT-II, keep the
top-left 8x8 low frequencies, set a bit where a coefficient is above their median. Bits are
packed row-major with the first one most significant, so ``f"{phash(img):016x}"`` equals
``str(imagehash.phash(img))``. Implemented with a DCT matrix in numpy so scipy is not needed.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIZE = 8
_IMG_SIZE = HASH_SIZE * 4
BITS = HASH_SIZE * HASH_SIZE


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    # Unnormalised DCT-II (scipy.fftpack.dct's default): only the ordering of coefficients
    # matters for the median comparison, but matching its scale keeps results bit-identical.
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def phash(image: Image.Image) -> int:
    """Return the 64-bit perceptual hash of ``image`` as an int."""
    gray = image.convert("L").resize((_IMG_SIZE, _IMG_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    c = _dct_matrix(_IMG_SIZE)
    dct = c @ pixels @ c.T  # DCT along axis 0, then axis 1
    low = dct[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def to_hex(value: int) -> str:
    """Hash as 16 hex digits, the blocklist file format."""
    return f"{value:0{BITS // 4}x}"
