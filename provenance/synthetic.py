"""Synthetic images for tests and benchmarks (no model weights can be downloaded here).

``noise_render`` imitates a randomly initialised diffusion model: a random latent at 1/8
resolution, upsampled, mixed into RGB by a random matrix, plus pixel noise, squashed into 0..255.
``structured`` draws real-image-like structure: a gradient and random rectangles, ellipses and
lines. Structured images are the hard case for perceptual hashes: their low frequencies look
alike, so unrelated ones land closer together than noise does.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def noise_render(seed: int, size: int = 256) -> Image.Image:
    """A model-like noisy RGB render, deterministic per seed."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(size // 8, size // 8, 4)).astype(np.float32)
    up = np.stack(
        [np.asarray(Image.fromarray(latent[:, :, c]).resize((size, size), Image.Resampling.BICUBIC)) for c in range(4)],
        axis=-1,
    )
    x = up @ rng.normal(size=(4, 3)).astype(np.float32)
    x += rng.normal(scale=0.5, size=x.shape).astype(np.float32)
    x = 1.0 / (1.0 + np.exp(-x))
    return Image.fromarray((x * 255).astype(np.uint8))


def structured(seed: int, size: int = 256) -> Image.Image:
    """A gradient with 3-8 random shapes, deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    g = np.cos(angle) * xx + np.sin(angle) * yy
    base = np.stack([g * rng.uniform(0, 255) + rng.uniform(0, 128)] * 3, -1) * rng.uniform(0.3, 1, size=3)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 2, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = (x0, y0, x0 + w, y0 + h)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(2, 12)))
    return im


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """Encode ``image`` to bytes in ``fmt`` (PNG, JPEG, WEBP)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, fmt, **options)
    return buf.getvalue()
