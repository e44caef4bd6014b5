"""Diffusers calls for one or more compatible jobs, with a seeded generator per image.

Every image has its own ``torch.Generator``, so its initial noise depends only on its own seed.
That is not enough for "the same pixels alone or batched": CPU and GPU kernels pick their tiling
by tensor shape, so the same row computed in a batch of 1, 2 or 3 can differ in the last bits,
and at odd sizes even by position (measured on the tiny model: batch 1 differs from batch 2/4/8,
and a batch of 3 gave two different results for identical rows). So every call runs at one fixed
number of rows (``rows_per_call``), padded with throw-away rows: a row's pixels then depend only
on its own prompt, seed and the call shape, never on what it shared the call with. A lone job
costs a full call, but only when the queue is short and the GPU would otherwise idle.

The render options (docs/render-options.md) are off by default. A forced SDPA kernel holds for the
whole call; the prompt cache (worker/prompts.py) passes embeddings encoded at batch 1 instead of text.
"""
from __future__ import annotations

import inspect
import time
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
    #: Images the model's IP-Adapter reads (a job's ``references``).
    references: tuple[Image.Image, ...] = ()


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
    #: The job whose IP-Adapter references this call reads: such a job shares its call with no other.
    references: str | None = None


#: ``on_step(step, total) -> stop`` : return True to interrupt at the next step.
StepHook = Callable[[int, int], bool]


_PAD = ("", "", 0, None, None)  # prompt, negative prompt, seed, reference, mask of a padding row (dropped)


def render(pipe, device: str, shape: CallShape, items: list[RenderItem],
           on_step: StepHook | None = None, rows_per_call: int = 0,
           on_call: Callable[[int, int, CallShape, float | None], None] | None = None
           ) -> list[list[Image.Image]] | None:
    """Render ``items``; returns images per item, or None when interrupted.

    ``rows_per_call`` > 0: calls of exactly that many rows (padded); 0: one call of all rows.
    ``on_call(rows, padded_rows, shape, seconds)`` is told about every pipeline call (the
    padding-waste figure; seconds: the call's own time, for jobs/callstats.py; None when it was
    interrupted, so not a measurement).

    An interrupted diffusers call still decodes and returns images: they are half-made, so they
    are dropped here and never reach moderation, signing or storage.
    """
    # diffusers treats a missing negative prompt as "", so mixing them stays exact.
    from worker.prompts import check_t5_window, chunks_for

    # A call with references holds one job only (CallShape.references), so they apply to every row.
    references = next((item.references for item in items if item.references), ())
    rows = [(item.prompt, item.negative_prompt or "", seed, item.image, item.mask)
            for item in items for seed in item.seeds]
    check_t5_window(pipe, shape.model, [t for item in items for t in (item.prompt, item.negative_prompt or "")])
    # Rows whose prompts need the same number of CLIP windows share calls (worker/prompts.py).
    by_chunks: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_chunks.setdefault(chunks_for(pipe, row[0], row[1]), []).append(i)
    placed: list[Image.Image | None] = [None] * len(rows)
    for chunks, indices in by_chunks.items():
        size = rows_per_call or len(indices)
        for start in range(0, len(indices), size):
            part = indices[start:start + size]
            t0 = time.perf_counter()
            out = _call(pipe, device, shape, [rows[i] for i in part] + [_PAD] * (size - len(part)), on_step,
                        chunks=chunks, references=references)
            if on_call is not None:
                on_call(len(part), size, shape, None if out is None else time.perf_counter() - t0)
            if out is None:
                return None
            for i, img in zip(part, out):
                placed[i] = img
    images = [img for img in placed if img is not None]
    assert len(images) == len(rows)
    grouped: list[list[Image.Image]] = []
    for item in items:
        grouped.append(images[: len(item.seeds)])
        images = images[len(item.seeds):]
    return grouped


def _call(pipe, device: str, shape: CallShape, rows: list[tuple],
          on_step: StepHook | None, chunks: int = 1, references: tuple = ()) -> list[Image.Image] | None:
    """One pipeline call. ``chunks`` > 1: prompts longer than one CLIP window, passed as
    embeddings of that many windows (worker/prompts.py). SD3/FLUX take their T5 window whole."""
    import torch

    from jobs.errors import PermanentError
    from jobs.families import FAMILIES
    from worker.models import sdpa_context
    from worker.prompts import encode_chunked, family_of, t5_sequence_length

    fam = FAMILIES[family_of(pipe)]
    task = None if shape.strength is None else ("mask" if shape.inpaint else "image")
    if task is not None and task not in fam.tasks:
        allowed = [n for n, f in FAMILIES.items() if task in f.tasks]
        raise PermanentError(f"model {shape.model!r} ({fam.name}) does no "
                             f"{'inpainting' if task == 'mask' else 'image-to-image'}; it renders from text only "
                             f"(families that do: {', '.join(allowed)})")
    gen_device = "cpu" if device.startswith("mps") else device
    interrupted = False

    def _callback(p, step: int, timestep, kwargs):
        nonlocal interrupted
        if on_step is not None and on_step(step + 1, shape.steps):
            interrupted = True
            p._interrupt = True
        return kwargs

    common = dict(
        num_inference_steps=shape.steps, guidance_scale=shape.guidance_scale,
        generator=[torch.Generator(gen_device).manual_seed(r[2]) for r in rows],
        callback_on_step_end=_callback, output_type="pil",
    )
    cache = getattr(pipe, "_batchrender_prompt_cache", None)
    if cache is not None and fam.name in cache.FAMILIES:
        # Repeated prompts and negative prompts: embeddings encoded once, at batch 1 (worker/prompts.py).
        with sdpa_context(pipe):
            common.update(cache.embeds(pipe, [r[0] for r in rows], [r[1] for r in rows], chunks, device))
    elif chunks > 1 and not fam.t5_window:
        common.update(encode_chunked(pipe, [r[0] for r in rows], [r[1] for r in rows], chunks, device))
    else:
        common["prompt"] = [r[0] for r in rows]
        # FLUX reads no negative prompt: requests with one are refused before queueing (jobs/schemas.py);
        # what the worker adds itself (a keyable backdrop's negative terms) is left out here.
        if fam.negative_prompt:
            common["negative_prompt"] = [r[1] for r in rows]
    if fam.t5_window:
        common["max_sequence_length"] = t5_sequence_length(fam.name, chunks)
    if getattr(pipe, "_batchrender_ip_adapter", False):
        # Every call through an IP-Adapter model needs image input; without references its scale
        # is 0, which renders exactly the pixels of the model without the adapter.
        pipe.set_ip_adapter_scale(1.0 if references else 0.0)
        common["ip_adapter_image"] = [list(references) or [Image.new("RGB", (shape.width, shape.height))]]
    # A forced SDPA kernel (BATCHRENDER_SDPA_BACKEND) holds for the whole call, VAE decode included.
    with torch.inference_mode(), sdpa_context(pipe):
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
                img2img = pipeline_of(pipe, "img2img")
                # SD3/FLUX image-to-image render at their default size unless told; SD 1.5/SDXL take the image's.
                if "width" in inspect.signature(img2img.__call__).parameters:
                    common.update(width=shape.width, height=shape.height)
                out = img2img(image=images, strength=shape.strength, **common)
    # An interrupted call still decodes and returns images: half-made, so they are dropped.
    return None if interrupted else list(out.images)


def pipeline_of(pipe, task: str):
    """The image-to-image or inpainting pipeline sharing ``pipe``'s weights (built once, kept on
    the pipe): diffusers' image-to-image and inpainting pipelines of SD 1.5, SDXL, SD3 and FLUX. Models
    with plain text-to-image denoisers (4 or 16 latent channels) inpaint by blending the kept area
    at each step."""
    attr = f"_batchrender_{task}"
    derived = getattr(pipe, attr, None)
    if derived is None:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        derived = (AutoPipelineForInpainting if task == "inpaint" else AutoPipelineForImage2Image).from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        setattr(pipe, attr, derived)
    return derived
