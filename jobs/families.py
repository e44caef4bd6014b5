"""Model families: what differs between SD 1.5, SDXL, SD3 and FLUX for everything but the weights.

Per family: the diffusers pipeline class that marks it in ``model_index.json``, default steps,
guidance and training size, the grid that sizes must sit on, the aspect-ratio buckets, which
inputs it takes (negative prompts, reference images, masks) and its text encoders' window.
Shared by producers (to resolve and refuse requests) and workers (to load and call); no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Family = Literal["sd15", "sdxl", "sd3", "flux"]

#: SDXL's training buckets (about one megapixel each, sides multiples of 64), width x height.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
    (1536, 640), (640, 1536),
)


@dataclass(frozen=True)
class FamilySpec:
    name: Family
    #: ``_class_name`` values in model_index.json that mean this family.
    pipelines: tuple[str, ...]
    default_steps: int
    default_guidance: float
    base_size: int
    #: Explicit widths and heights must be multiples of this (VAE factor x transformer patch).
    multiple: int
    negative_prompt: bool
    #: "image" (image-to-image) and "mask" (inpainting) when the family's pipelines take them.
    tasks: tuple[str, ...]
    #: The T5 encoder's token window (SD3/FLUX); None where only CLIP encoders read the prompt.
    #: SD3's 256 doubles to T5_MAX for prompts that need it (worker/prompts.py).
    t5_window: int | None = None
    #: Scheduler class names allowed as overrides (prefix match); None: any diffusers scheduler.
    scheduler_prefix: str | None = None

    def grid(self, base: int) -> int:
        """The grid aspect-ratio sizes sit on: 64 at real sizes, the family's multiple when tiny."""
        return 64 if base >= 256 else self.multiple


#: The longest T5 sequence SD3 and FLUX are called with (their pipelines' limit).
T5_MAX = 512

FAMILIES: dict[str, FamilySpec] = {
    "sd15": FamilySpec("sd15", ("StableDiffusionPipeline",), 25, 7.5, 512, 8, True, ("image", "mask")),
    "sdxl": FamilySpec("sdxl", ("StableDiffusionXLPipeline",), 30, 5.0, 1024, 8, True, ("image", "mask")),
    "sd3": FamilySpec("sd3", ("StableDiffusion3Pipeline",), 28, 7.0, 1024, 16, True, ("image", "mask"),
                      t5_window=256, scheduler_prefix="FlowMatch"),
    "flux": FamilySpec("flux", ("FluxPipeline",), 28, 3.5, 1024, 16, False, ("image", "mask"),
                       t5_window=512, scheduler_prefix="FlowMatch"),
}


def family(name: str) -> FamilySpec:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; allowed: {', '.join(FAMILIES)}") from None


def family_of_pipeline(class_name: str) -> Family | None:
    """The family a diffusers pipeline class (model_index.json's ``_class_name``) belongs to."""
    for f in FAMILIES.values():
        if class_name in f.pipelines:
            return f.name
    return None


def size_for(ratio: tuple[int, int], base: int, fam: FamilySpec) -> tuple[int, int]:
    """Width/height for an aspect ratio: SDXL's nearest training bucket (scaled to ``base``);
    other families about ``base``² pixels on the family's grid."""
    rw, rh = ratio
    grid = fam.grid(base)
    if fam.name == "sdxl":
        target = math.log(rw / rh)
        bw, bh = min(SDXL_BUCKETS, key=lambda b: abs(math.log(b[0] / b[1]) - target))
        scale = base / 1024
        return max(grid, round(bw * scale / grid) * grid), max(grid, round(bh * scale / grid) * grid)
    w = math.sqrt(base * base * rw / rh)
    h = w * rh / rw
    return max(grid, round(w / grid) * grid), max(grid, round(h / grid) * grid)
