"""One diffusers call for one or more compatible jobs, with a seeded generator per image.

Every image has its own ``torch.Generator``, so an image's initial noise depends only on its own
seed, never on its neighbours in the batch: the same request renders the same pixels alone or
batched. Progress and cancellation go through ``callback_on_step_end``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image


@dataclass(frozen=True)
class RenderItem:
    """One job's share of a call: its prompt, negative prompt and one seed per image."""

    prompt: str
    negative_prompt: str | None
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class CallShape:
    """What jobs must share to be rendered in one call."""

    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float


#: ``on_step(step, total) -> stop`` : return True to interrupt at the next step.
StepHook = Callable[[int, int], bool]


def render(pipe, device: str, shape: CallShape, items: list[RenderItem],
           on_step: StepHook | None = None) -> list[list[Image.Image]] | None:
    """Render ``items`` in one pipeline call; returns images per item, or None when interrupted.

    An interrupted diffusers call still decodes and returns images: they are half-made, so they
    are dropped here and never reach moderation, signing or storage.
    """
    import torch

    prompts: list[str] = []
    negatives: list[str] = []
    generators: list[torch.Generator] = []
    gen_device = "cpu" if device.startswith("mps") else device
    for item in items:
        for seed in item.seeds:
            prompts.append(item.prompt)
            # diffusers treats a missing negative prompt as "", so mixing them stays exact.
            negatives.append(item.negative_prompt or "")
            generators.append(torch.Generator(gen_device).manual_seed(seed))

    interrupted = False

    def _callback(p, step: int, timestep, kwargs):
        nonlocal interrupted
        if on_step is not None and on_step(step + 1, shape.steps):
            interrupted = True
            p._interrupt = True
        return kwargs

    with torch.inference_mode():
        out = pipe(
            prompt=prompts, negative_prompt=negatives, width=shape.width, height=shape.height,
            num_inference_steps=shape.steps, guidance_scale=shape.guidance_scale,
            generator=generators, callback_on_step_end=_callback, output_type="pil",
        )
    if interrupted:
        return None
    images = list(out.images)
    grouped: list[list[Image.Image]] = []
    for item in items:
        grouped.append(images[: len(item.seeds)])
        images = images[len(item.seeds):]
    return grouped
