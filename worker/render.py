"""Diffusers calls for one or more compatible jobs, with a seeded generator per image.

Every image has its own ``torch.Generator``, so its initial noise depends only on its own seed.
That is not enough for "the same pixels alone or batched": CPU and GPU kernels pick their tiling
by tensor shape, so the same row computed in a batch of 1, 2 or 3 can differ in the last bits,
and at odd sizes even by position (measured on the tiny model: batch 1 differs from batch 2/4/8,
and a batch of 3 gave two different results for identical rows). So every call runs at one fixed
number of rows (``rows_per_call``), padded with throw-away rows: a row's pixels then depend only
on its own prompt, seed and the call shape, never on what it shared the call with. A lone job
costs a full call, but only when the queue is short and the GPU would otherwise idle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image


@dataclass(frozen=True)
class RenderItem:
    """One job's share of a call: its prompt, negative prompt, one seed per image, and for
    image-to-image its reference image."""

    prompt: str
    negative_prompt: str | None
    seeds: tuple[int, ...]
    image: Image.Image | None = None
    #: Inpainting: white where the image is redrawn.
    mask: Image.Image | None = None


@dataclass(frozen=True)
class CallShape:
    """What jobs must share to be rendered in one call."""

    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    #: Image-to-image strength; None for text-to-image.
    strength: float | None = None
    #: Inpainting (jobs with a mask): a pipeline of its own.
    inpaint: bool = False


#: ``on_step(step, total) -> stop`` : return True to interrupt at the next step.
StepHook = Callable[[int, int], bool]


_PAD = ("", "", 0, None, None)  # prompt, negative prompt, seed, reference, mask of a padding row (dropped)


def render(pipe, device: str, shape: CallShape, items: list[RenderItem],
           on_step: StepHook | None = None, rows_per_call: int = 0) -> list[list[Image.Image]] | None:
    """Render ``items``; returns images per item, or None when interrupted.

    ``rows_per_call`` > 0: calls of exactly that many rows (padded); 0: one call of all rows.

    An interrupted diffusers call still decodes and returns images: they are half-made, so they
    are dropped here and never reach moderation, signing or storage.
    """
    # diffusers treats a missing negative prompt as "", so mixing them stays exact.
    rows = [(item.prompt, item.negative_prompt or "", seed, item.image, item.mask)
            for item in items for seed in item.seeds]
    size = rows_per_call or len(rows)
    images: list[Image.Image] = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        out = _call(pipe, device, shape, chunk + [_PAD] * (size - len(chunk)), on_step)
        if out is None:
            return None
        images.extend(out[:len(chunk)])
    grouped: list[list[Image.Image]] = []
    for item in items:
        grouped.append(images[: len(item.seeds)])
        images = images[len(item.seeds):]
    return grouped


def _call(pipe, device: str, shape: CallShape, rows: list[tuple],
          on_step: StepHook | None) -> list[Image.Image] | None:
    import torch

    gen_device = "cpu" if device.startswith("mps") else device
    interrupted = False

    def _callback(p, step: int, timestep, kwargs):
        nonlocal interrupted
        if on_step is not None and on_step(step + 1, shape.steps):
            interrupted = True
            p._interrupt = True
        return kwargs

    common = dict(
        prompt=[r[0] for r in rows], negative_prompt=[r[1] for r in rows], num_inference_steps=shape.steps,
        guidance_scale=shape.guidance_scale, generator=[torch.Generator(gen_device).manual_seed(r[2]) for r in rows],
        callback_on_step_end=_callback, output_type="pil",
    )
    with torch.inference_mode():
        if shape.strength is None:
            out = pipe(width=shape.width, height=shape.height, **common)
        else:
            size = (shape.width, shape.height)
            blank = Image.new("RGB", size, (127, 127, 127))  # reference of padding rows
            images = [(r[3] or blank).convert("RGB").resize(size, Image.LANCZOS) for r in rows]
            if shape.inpaint:
                keep = Image.new("L", size, 0)  # mask of padding rows: redraw nothing
                masks = [(r[4] or keep).convert("L").resize(size, Image.NEAREST) for r in rows]
                out = pipeline_of(pipe, "inpaint")(image=images, mask_image=masks, strength=shape.strength,
                                                   width=shape.width, height=shape.height, **common)
            else:
                out = pipeline_of(pipe, "img2img")(image=images, strength=shape.strength, **common)
    # An interrupted call still decodes and returns images: half-made, so they are dropped.
    return None if interrupted else list(out.images)


def pipeline_of(pipe, task: str):
    """The image-to-image or inpainting pipeline sharing ``pipe``'s weights (built once, kept on
    the pipe). SD 1.5-style UNets of 4 channels inpaint by blending the kept area at each step."""
    attr = f"_batchrender_{task}"
    derived = getattr(pipe, attr, None)
    if derived is None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        derived = (AutoPipelineForInpainting if task == "inpaint" else AutoPipelineForImage2Image).from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        setattr(pipe, attr, derived)
    return derived
