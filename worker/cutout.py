"""Transparent backgrounds: steer the render onto a keyable backdrop, then cut it out.

Without a matting model (the default), two halves work together:

1. ``steer``: the prompt the pipeline receives gains a suffix asking for the subject isolated on
   a flat, evenly lit backdrop of one colour, and the negative prompt pushes away shadows,
   gradients and scenery. The backdrop colour is chosen to stay away from the subject: chroma
   green, unless the prompt or palette asks for green (then blue, then magenta).
2. ``key_out``: a colour-distance matte against the backdrop colour *as rendered*, estimated
   from the image border (the median of a thin frame; robust to a subject touching one edge):
   a pixel within ``t_lo`` (CIELAB ΔE76) of it is background, beyond ``t_hi`` foreground, a
   ramp between. ``t_lo`` adapts to how uneven the border is (median + 3·MAD, clamped). Then a
   median filter drops isolated speckles, a Gaussian feathers the edges, and the colour of
   partly transparent pixels is decontaminated (the backdrop's share un-mixed) and despilled
   (the backdrop's chroma removed at the edge band), so no green fringe shows on a new
   background.

With ``BATCHRENDER_MATTING_MODEL_DIR`` set, a transformers semantic-segmentation model loaded
from that directory (offline) gives the alpha instead: one minus its background-class
probability, upsampled to the image. Its edges are feathered the same way.

Either way the alpha is computed from the rendered pixels; the report says which method, the
backdrop colour it keyed, and the coverage (fraction of fully transparent pixels).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jobs.errors import ConfigurationError
from worker.colour import ciede2000, hex_to_rgb, rgb_to_hex, srgb_to_lab

#: Keyable backdrops, in order of preference: (name used in the prompt, sRGB).
BACKDROPS: tuple[tuple[str, str], ...] = (("green", "#00B140"), ("blue", "#0047BB"), ("magenta", "#FF00FF"))
#: A requested colour this close (ΔE00) to a backdrop would be keyed out with it.
BACKDROP_CLASH_DELTA_E = 30.0
#: Bounds of the background threshold ``t_lo`` (CIELAB ΔE76), and the width of the ramp above it.
T_LO_MIN, T_LO_MAX, RAMP_MIN = 6.0, 24.0, 10.0
#: The frame the backdrop colour is estimated from, as a fraction of the shorter side.
BORDER_FRACTION = 0.04


# -- 1. steering the render ------------------------------------------------------------------------
def choose_backdrop(prompt: str, palette: list[str] | None = None) -> tuple[str, str]:
    """The first backdrop whose colour the prompt does not name and no requested colour is near."""
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    wanted = srgb_to_lab(np.array([hex_to_rgb(h) for h in palette or []], dtype=np.float64).reshape(-1, 3))
    best, best_gap = BACKDROPS[0], -1.0
    for name, code in BACKDROPS:
        gap = float(ciede2000(wanted, srgb_to_lab(np.array(hex_to_rgb(code)))).min()) if len(wanted) else 100.0
        if name not in words and gap >= BACKDROP_CLASH_DELTA_E:
            return name, code
        if gap > best_gap:
            best, best_gap = (name, code), gap
    return best


def steer(prompt: str, negative: str | None, backdrop: tuple[str, str]) -> tuple[str, str]:
    """The prompt and negative prompt that put the subject on a flat ``backdrop`` to key out."""
    name = backdrop[0]
    prompt = (f"{prompt}, isolated on a plain flat solid {name} background, {name} studio backdrop, "
              "evenly lit, centered, clean edges")
    avoid = (f"{name} subject, {name} tint, shadow, reflection, gradient background, textured background, "
             "scenery, landscape, room, busy background, cropped")
    return prompt, f"{negative}, {avoid}" if negative else avoid


# -- 2. keying ------------------------------------------------------------------------------------
@dataclass
class Cutout:
    """An RGBA image and what was done to it (``report`` goes into the job result)."""

    image: Image.Image
    report: dict[str, Any]


def _border(a: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate([a[:width].reshape(-1, a.shape[-1]), a[-width:].reshape(-1, a.shape[-1]),
                           a[width:-width, :width].reshape(-1, a.shape[-1]),
                           a[width:-width, -width:].reshape(-1, a.shape[-1])])


def _feather(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Soften the matte's edges; regions well inside stay exactly 0 or 1."""
    import cv2

    alpha8 = np.round(alpha * 255).astype(np.uint8)
    alpha8 = cv2.medianBlur(alpha8, 3)  # isolated speckles of either kind
    soft = cv2.GaussianBlur(alpha8.astype(np.float32) / 255.0, (0, 0), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REPLICATE)
    soft[soft < 2 / 255] = 0.0
    soft[soft > 253 / 255] = 1.0
    return soft


def key_out(image: Image.Image) -> Cutout:
    """Colour-distance matte against the backdrop colour estimated from the border."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    lab = srgb_to_lab(rgb)
    width = max(1, round(min(h, w) * BORDER_FRACTION))
    border_lab = _border(lab, width)
    backdrop_rgb = np.median(_border(rgb, width), axis=0)
    backdrop_lab = srgb_to_lab(backdrop_rgb)
    dist = np.sqrt(((lab - backdrop_lab) ** 2).sum(-1))
    border_d = np.sqrt(((border_lab - backdrop_lab) ** 2).sum(-1))
    med = float(np.median(border_d))
    spread = med + 3 * 1.4826 * float(np.median(np.abs(border_d - med)))
    t_lo = float(np.clip(spread, T_LO_MIN, T_LO_MAX))
    t_hi = t_lo + max(RAMP_MIN, t_lo)
    raw = np.clip((dist - t_lo) / (t_hi - t_lo), 0.0, 1.0)
    alpha = _feather(raw, sigma=max(0.6, min(h, w) / 384))

    out = decontaminate(rgb, alpha, backdrop_rgb)
    rgba = np.dstack([out, np.round(alpha * 255)]).astype(np.uint8)
    return Cutout(Image.fromarray(rgba, "RGBA"), {
        "method": "key", "backdrop": rgb_to_hex(backdrop_rgb),
        "threshold": [round(t_lo, 2), round(t_hi, 2)], **coverage(rgba[..., 3]),
    })


def decontaminate(rgb: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Colour of partly transparent pixels without the backdrop mixed in, and spill removed.

    1. Un-mix: an edge pixel is ``alpha·F + (1-alpha)·B``, so ``F = (I - (1-alpha)·B) / alpha``.
    2. Despill in the edge band (partly transparent pixels and their neighbours): remove the
       component of the pixel's chroma along the backdrop's chroma (for green: the green cast).
    Fully transparent pixels are set to black: no backdrop hides in invisible pixels.
    """
    import cv2

    a = alpha[..., None]
    out = rgb.copy()
    partial = (alpha > 0) & (alpha < 1)
    unmixed = (rgb - (1 - a) * backdrop) / np.maximum(a, 1e-3)
    out[partial] = np.clip(unmixed[partial], 0, 255)
    chroma = backdrop - backdrop.mean()
    norm = float(np.linalg.norm(chroma))
    if norm > 20:  # a grey or white backdrop casts no colour to remove
        u = chroma / norm
        band = cv2.dilate(partial.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (alpha > 0)
        pix = out[band]
        spill = np.maximum(0.0, (pix - pix.mean(axis=1, keepdims=True)) @ u)
        out[band] = np.clip(pix - spill[:, None] * u, 0, 255)
    out[alpha == 0] = 0
    return np.round(out)


def coverage(alpha8: np.ndarray) -> dict[str, float]:
    """``coverage``: fraction of fully transparent pixels; ``opaque``: fully opaque; ``partial``: between."""
    n = alpha8.size
    clear, solid = float((alpha8 == 0).sum()) / n, float((alpha8 == 255).sum()) / n
    return {"coverage": round(clear, 4), "opaque": round(solid, 4), "partial": round(1 - clear - solid, 4)}


# -- 3. with a matting model ----------------------------------------------------------------------
class MattingModel:
    """A transformers semantic-segmentation model from a local directory; alpha = 1 - P(background).

    The background class is the label named ``background`` (or ``bg``) in the model's config,
    else class 0. Thread-safe (post-processing runs several deliveries at once).
    """

    def __init__(self, directory: Path) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        self.directory = Path(directory)
        try:
            self.processor = AutoImageProcessor.from_pretrained(self.directory, local_files_only=True)
            self.model = AutoModelForSemanticSegmentation.from_pretrained(self.directory, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"BATCHRENDER_MATTING_MODEL_DIR {self.directory}: cannot load a "
                                     f"segmentation model from it ({e})") from None
        self.model.eval()
        labels = {str(v).lower(): int(k) for k, v in (self.model.config.id2label or {}).items()}
        self.background = labels.get("background", labels.get("bg", 0))
        self._lock = threading.Lock()

    def alpha(self, image: Image.Image) -> np.ndarray:
        """Foreground probability per pixel (H×W, 0–1) at the image's own size."""
        import torch

        rgb = image.convert("RGB")
        inputs = self.processor(images=rgb, return_tensors="pt")
        with self._lock, torch.inference_mode():
            logits = self.model(**inputs).logits
            logits = torch.nn.functional.interpolate(logits, size=(rgb.height, rgb.width), mode="bilinear",
                                                     align_corners=False)
            probs = logits.softmax(dim=1)[0]
        return (1.0 - probs[self.background]).float().numpy()

    def cut_out(self, image: Image.Image) -> Cutout:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        alpha = self.alpha(image)
        alpha = np.where(alpha < 2 / 255, 0.0, np.where(alpha > 253 / 255, 1.0, alpha))
        rgba = np.dstack([np.where(alpha[..., None] > 0, rgb, 0), np.round(alpha * 255)]).astype(np.uint8)
        return Cutout(Image.fromarray(rgba, "RGBA"), {
            "method": "matting", "model": self.directory.name, **coverage(rgba[..., 3])})


class Matting:
    """The process's matting model, loaded on first use (never at import, once per process).

    A directory without a model's ``config.json`` is refused here, when the worker context is
    built at start-up, so the worker exits with the reason before it takes a job."""

    def __init__(self, directory: Path | None) -> None:
        if directory is not None and not (Path(directory) / "config.json").is_file():
            raise ConfigurationError(f"BATCHRENDER_MATTING_MODEL_DIR {directory}: no config.json there; give a "
                                     "directory written by a transformers model's save_pretrained, or unset it")
        self.directory = directory
        self._model: MattingModel | None = None
        self._lock = threading.Lock()

    def model(self) -> MattingModel | None:
        if self.directory is None:
            return None
        with self._lock:
            if self._model is None:
                self._model = MattingModel(self.directory)
            return self._model


def cut_out(image: Image.Image, matting: Matting | None = None) -> Cutout:
    """The transparent version of a render: the matting model's when one is configured, else keyed."""
    model = matting.model() if matting is not None else None
    return model.cut_out(image) if model is not None else key_out(image)
