"""Renditions: channel outputs (a 9:16 story, a 1:1 post, ...) cut from a delivered master image.

Pure PIL/numpy, no torch: what each fit takes from the master, in the master's pixel coordinates
(``box`` = x0, y0, x1, y1, end exclusive; it may reach past the master's edges where the
rendition is padded or extended), and the rendition's pixels.

- ``crop``: a window of the rendition's ratio. A transparent master's subject is the bounding box
  of its pixels with alpha > 0: the window is the largest of that ratio inside the master, centred
  on the subject and shifted to stay inside; a subject that does not fit grows the window (same
  ratio) past the master's edges, filled with the pad colour. No pixel with alpha > 0 is ever cut.
  An opaque master's window is placed where a saliency estimate (gradient and colour contrast with
  a mild centre prior, on a downscaled copy) encloses the most; it never leaves the master.
- ``pad``: the whole master, centred on a canvas of the ratio, filled with the pad colour.
- ``extend``: the canvas of ``pad`` painted by the model's inpainting pipeline: ``extend_canvas``
  prepares the render (on the worker's render thread), ``from_extended`` cuts the rendition.

Sized renditions are resized (Lanczos) to width × height; ``aspect_ratio`` renditions keep the
box's pixels, unscaled. The pad colour: ``pad_colour``, else transparent for a transparent master
and white for an opaque one. A transparent master with a colour given is laid on that colour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jobs.schemas import Fit, OutputFormat, Rendition

Box = tuple[int, int, int, int]
RGBA = tuple[int, int, int, int]
TRANSPARENT: RGBA = (0, 0, 0, 0)
WHITE: RGBA = (255, 255, 255, 255)
#: The longest side of the copy saliency is computed on.
SALIENCY_PX = 128


@dataclass(frozen=True)
class Cut:
    """A rendition's pixels, the box it took from the master, and what a crop was centred on."""

    image: Image.Image
    box: Box
    subject: str = "none"


@dataclass(frozen=True)
class Placement:
    """Where the master sits on an outpainting canvas: scaled by ``scale``, top-left at (x, y)."""

    canvas: tuple[int, int]
    x: int
    y: int
    width: int
    height: int


# -- colours and alpha ---------------------------------------------------------------------------
def is_transparent(img: Image.Image) -> bool:
    """Whether ``img`` has an alpha channel with any pixel below 255."""
    if img.mode not in ("RGBA", "LA", "PA"):
        return False
    lo, _ = img.getchannel("A").getextrema()
    return lo < 255


def fill_colour(rendition: Rendition, master: Image.Image) -> RGBA:
    """The colour padding is filled with (see the module docstring)."""
    if rendition.pad_colour == "transparent":
        return TRANSPARENT
    if rendition.pad_colour:
        h = rendition.pad_colour.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255
    return TRANSPARENT if master.mode == "RGBA" else WHITE


def flatten(img: Image.Image, colour: RGBA = WHITE) -> Image.Image:
    """``img`` laid on an opaque ``colour`` (RGB); RGB images come back as they are."""
    if img.mode not in ("RGBA", "LA", "PA"):
        return img.convert("RGB")
    base = Image.new("RGBA", img.size, colour[:3] + (255,))
    return Image.alpha_composite(base, img.convert("RGBA")).convert("RGB")


def for_format(img: Image.Image, fmt: OutputFormat, colour: RGBA) -> Image.Image:
    """JPEG has no alpha: an RGBA rendition is flattened onto the pad colour (white when that
    is transparent). PNG and WebP keep it."""
    if fmt.has_alpha or img.mode != "RGBA":
        return img
    return flatten(img, colour if colour[3] == 255 else WHITE)


def alpha_bbox(img: Image.Image) -> Box | None:
    """The bounding box of the pixels with alpha > 0 (end exclusive); None when there are none."""
    a = np.asarray(img.getchannel("A")) > 0
    rows, cols = np.flatnonzero(a.any(axis=1)), np.flatnonzero(a.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# -- geometry ------------------------------------------------------------------------------------
def largest_window(w: int, h: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The largest window of ``ratio`` inside ``w`` × ``h`` (at least 1 px a side)."""
    t = ratio[0] / ratio[1]
    if w / h > t:
        return max(1, min(w, round(h * t))), h
    return w, max(1, min(h, round(w / t)))


def enclosing_window(w: int, h: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """The smallest window of ``ratio`` that holds ``w`` × ``h`` whole."""
    t = ratio[0] / ratio[1]
    if w / h > t:
        return w, max(h, math.ceil(w / t - 1e-9))
    return max(w, math.ceil(h * t - 1e-9)), h


def _place(centre: float, size: int, extent: int, lo_keep: int, hi_keep: int) -> int:
    """The start of a ``size`` window on an axis of ``extent``: centred on ``centre``, inside the
    extent where it fits (else covering it), and always holding [lo_keep, hi_keep)."""
    start = round(centre - size / 2)
    a, b = sorted((0, extent - size))
    start = min(max(start, a), b)
    return min(max(start, hi_keep - size), lo_keep)


def subject_crop_box(w: int, h: int, subject: Box, ratio: tuple[float, float]) -> Box:
    """The crop window for a subject box (see the module docstring): never cuts the subject."""
    sx0, sy0, sx1, sy1 = subject
    ww, wh = largest_window(w, h, ratio)
    if sx1 - sx0 > ww or sy1 - sy0 > wh:
        ww, wh = enclosing_window(max(ww, sx1 - sx0), max(wh, sy1 - sy0), ratio)
    x0 = _place((sx0 + sx1) / 2, ww, w, sx0, sx1)
    y0 = _place((sy0 + sy1) / 2, wh, h, sy0, sy1)
    return x0, y0, x0 + ww, y0 + wh


def pad_box(w: int, h: int, ratio: tuple[float, float]) -> Box:
    """The whole master centred on the smallest canvas of ``ratio`` that holds it."""
    cw, ch = enclosing_window(w, h, ratio)
    x0, y0 = -((cw - w) // 2), -((ch - h) // 2)
    return x0, y0, x0 + cw, y0 + ch


def saliency(img: Image.Image) -> np.ndarray:
    """A saliency map of ``img`` (RGB), downscaled so its longest side is ``SALIENCY_PX``: local
    gradient magnitude plus colour contrast against the image's mean, times a mild centre prior."""
    small = img.convert("RGB")
    scale = min(1.0, SALIENCY_PX / max(small.size))
    if scale < 1.0:
        small = small.resize((max(1, round(small.width * scale)), max(1, round(small.height * scale))),
                             Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float32) / 255.0
    gy, gx = np.gradient(a, axis=(0, 1)) if min(a.shape[:2]) > 1 else (np.zeros_like(a), np.zeros_like(a))
    grad = np.sqrt((gx ** 2 + gy ** 2).sum(axis=2))
    contrast = np.sqrt(((a - a.reshape(-1, 3).mean(axis=0)) ** 2).sum(axis=2))
    energy = grad / (grad.mean() + 1e-6) + 0.5 * contrast / (contrast.mean() + 1e-6)
    h, w = energy.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    prior = np.exp(-(((xx - (w - 1) / 2) / max(w, 1)) ** 2 + ((yy - (h - 1) / 2) / max(h, 1)) ** 2) / (2 * 0.35 ** 2))
    return energy * (0.6 + 0.4 * prior)


def saliency_crop_box(img: Image.Image, ratio: tuple[float, float]) -> Box:
    """The window of ``ratio`` (the largest inside the master) that encloses the most saliency;
    it slides along one axis, so a running sum (the 1-D integral image) scores every position."""
    w, h = img.size
    ww, wh = largest_window(w, h, ratio)
    if (ww, wh) == (w, h):
        return 0, 0, w, h
    sal = saliency(img)
    horizontal = ww < w
    profile = sal.sum(axis=0 if horizontal else 1).astype(np.float64)
    n, extent, size = profile.size, (w if horizontal else h), (ww if horizontal else wh)
    # Every full-resolution start, scored on the downscaled profile (fractional cells interpolated).
    cum = np.concatenate([[0.0], np.cumsum(profile)])
    cells = np.arange(n + 1, dtype=np.float64)
    starts = np.arange(extent - size + 1)
    f = n / extent
    scores = np.interp((starts + size) * f, cells, cum) - np.interp(starts * f, cells, cum)
    best = scores.max()
    # Ties (flat images): the start nearest the centre.
    tied = starts[scores >= best - 1e-9 * max(1.0, abs(best))]
    start = int(tied[np.argmin(np.abs(tied - (extent - size) / 2))])
    return (start, 0, start + ww, h) if horizontal else (0, start, w, start + wh)


def cut(master: Image.Image, box: Box, fill: RGBA) -> Image.Image:
    """The ``box`` of ``master``; what lies outside the master is ``fill``."""
    x0, y0, x1, y1 = box
    src = master
    if master.mode == "RGBA" and fill[3] == 255:
        src = flatten(master, fill)  # a colour given for a transparent master: laid on it
    mode = "RGBA" if src.mode == "RGBA" or fill[3] < 255 else "RGB"
    if (x0, y0, x1, y1) == (0, 0, *src.size) and src.mode == mode:
        return src.copy()
    out = Image.new(mode, (x1 - x0, y1 - y0), fill if mode == "RGBA" else fill[:3])
    inside = (max(0, x0), max(0, y0), min(src.width, x1), min(src.height, y1))
    if inside[0] < inside[2] and inside[1] < inside[3]:
        out.paste(src.crop(inside).convert(mode), (inside[0] - x0, inside[1] - y0))
    return out


def out_size(rendition: Rendition, box: Box) -> tuple[int, int]:
    """Width × height, or for an ``aspect_ratio`` rendition the box's own size (not scaled)."""
    if rendition.width and rendition.height:
        return rendition.width, rendition.height
    return box[2] - box[0], box[3] - box[1]


def _sized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


# -- the fits ------------------------------------------------------------------------------------
def derive(master: Image.Image, rendition: Rendition) -> Cut:
    """A ``crop`` or ``pad`` rendition of the delivered ``master`` (``extend``: ``from_extended``)."""
    w, h = master.size
    fill = fill_colour(rendition, master)
    if rendition.fit is Fit.PAD:
        box, subject = pad_box(w, h, rendition.ratio), "none"
    elif rendition.fit is Fit.CROP:
        subject_box = alpha_bbox(master) if is_transparent(master) else None
        if subject_box is not None:
            box, subject = subject_crop_box(w, h, subject_box, rendition.ratio), "alpha"
        elif is_transparent(master):  # nothing opaque at all: the centre
            box, subject = subject_crop_box(w, h, (w // 2, h // 2, w // 2, h // 2), rendition.ratio), "none"
        else:
            box, subject = saliency_crop_box(master, rendition.ratio), "saliency"
    else:
        raise ValueError(f"rendition {rendition.name!r}: fit 'extend' is rendered, see from_extended")
    return Cut(_sized(cut(master, box, fill), out_size(rendition, box)), box, subject)


def extend_canvas(master: Image.Image, ratio: tuple[float, float], size: tuple[int, int],
                  overlap: int | None = None) -> tuple[Image.Image, Image.Image, Placement]:
    """What the inpainting pipeline is given to outpaint ``master`` to ``ratio``: a ``size`` canvas
    (the model's native size for that ratio) with the master scaled to fit and centred, the new
    area prefilled by replicating the master's edges, and a mask, white where the canvas is new
    and ``overlap`` pixels into the master (so the seam is redrawn too)."""
    cw, ch = size
    w, h = master.size
    s = min(cw / w, ch / h)
    mw, mh = max(1, min(cw, round(w * s))), max(1, min(ch, round(h * s)))
    x, y = (cw - mw) // 2, (ch - mh) // 2
    small = np.asarray(master.convert("RGB").resize((mw, mh), Image.Resampling.LANCZOS))
    filled = np.pad(small, ((y, ch - mh - y), (x, cw - mw - x), (0, 0)), mode="edge")
    canvas = Image.fromarray(filled, "RGB")
    if overlap is None:
        overlap = max(2, round(min(cw, ch) / 64))
    keep = np.zeros((ch, cw), dtype=np.uint8)
    # Edges that touch the canvas's own edge keep their pixels right up to it.
    kx0 = x + (overlap if x > 0 else 0)
    ky0 = y + (overlap if y > 0 else 0)
    kx1 = x + mw - (overlap if x + mw < cw else 0)
    ky1 = y + mh - (overlap if y + mh < ch else 0)
    keep[ky0:max(ky0, ky1), kx0:max(kx0, kx1)] = 1
    mask = Image.fromarray(np.where(keep == 1, 0, 255).astype(np.uint8), "L")
    return canvas, mask, Placement((cw, ch), x, y, mw, mh)


def from_extended(master: Image.Image, rendition: Rendition, outpainted: Image.Image, placement: Placement) -> Cut:
    """An ``extend`` rendition: the ``pad`` box of the master filled from the outpainted canvas
    (mapped back into master coordinates), with the master's own pixels laid over its area."""
    w, h = master.size
    box = pad_box(w, h, rendition.ratio)
    bx0, by0, bx1, by1 = box
    sx, sy = placement.width / w, placement.height / h
    cw, ch = placement.canvas
    src = outpainted.convert("RGB")
    if src.size != (cw, ch):
        src = src.resize((cw, ch), Image.Resampling.LANCZOS)
    region = (min(max(0.0, placement.x + bx0 * sx), cw), min(max(0.0, placement.y + by0 * sy), ch),
              min(max(0.0, placement.x + bx1 * sx), cw), min(max(0.0, placement.y + by1 * sy), ch))
    out = src.resize((bx1 - bx0, by1 - by0), Image.Resampling.LANCZOS, box=region)
    out.paste(master.convert("RGB"), (-bx0, -by0))
    return Cut(_sized(out, out_size(rendition, box)), box, "none")


@dataclass(frozen=True)
class Extended:
    """An ``extend`` rendition's outpainted canvas, where the master sits on it, and the seed."""

    image: Image.Image
    placement: Placement
    seed: int
