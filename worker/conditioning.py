"""The prompt the pipeline receives, from the prompt the client wrote.

Two rewrites, both visible in the C2PA parameters only as the request that caused them (the
client's own prompt is what is moderated, stored and hashed):

* colours: every ``#RRGGBB`` in the prompt (and negative prompt) becomes its nearest colour
  name ("#1A73E8" → "royal blue"): a CLIP text encoder reads hex codes as noise. A ``palette``
  field adds "colour palette: <names>" to the prompt.
* transparency: ``background: transparent`` puts the subject on a keyable backdrop
  (worker/cutout.py ``steer``), chosen away from the requested colours.
"""
from __future__ import annotations

from typing import Any

from worker.colour import colour_name, name_hex_codes
from worker.cutout import choose_backdrop, steer


def pipeline_prompts(request: Any) -> tuple[str, str | None]:
    """``(prompt, negative_prompt)`` for the pipeline call of a ``RenderRequest``."""
    prompt = name_hex_codes(request.prompt)
    negative = name_hex_codes(request.negative_prompt) if request.negative_prompt else request.negative_prompt
    if request.palette:
        names = list(dict.fromkeys(colour_name(code) for code in request.palette))
        prompt = f"{prompt}, colour palette: {', '.join(names)}"
    if request.transparent:
        prompt, negative = steer(prompt, negative, choose_backdrop(request.prompt, request.requested_palette))
    return prompt, negative
