"""Prompts longer than CLIP's window, encoded in chunks and joined instead of cut at 77 tokens.

A CLIP text encoder reads 77 positions: a start token, 75 prompt tokens and an end token. diffusers
truncates anything longer (with a log line no client sees). Here a long prompt's tokens are split
into chunks of 75, each chunk wrapped in start/end tokens and padded to 77 like diffusers pads a
short prompt, encoded on its own, and the chunks' hidden states concatenated along the sequence:
the UNet's cross-attention reads every token. (The approach of compel and of A1111's web UI.)
SDXL does this with both of its encoders and takes the pooled embedding from the first chunk.

Determinism: the number of chunks is part of what a row's pixels depend on (the UNet attends to
every position), so ``render`` only calls rows with the same chunk count together; a row's
negative prompt is padded with empty chunks to its prompt's count (or the other way round).
SD3 and FLUX read the whole prompt through their T5 encoder; their CLIP encoders supply the
pooled embedding only, as in those models' design. SD3's T5 window is 256 tokens: a prompt that
needs more is called at 512 (its own "two windows", grouped like CLIP chunks); past 511 tokens a
prompt fails (the pipelines' limit) rather than being cut: the worker fails that job alone, before
its call, and renders the jobs it was grouped with (``t5_window_error``). Only the loaded pipeline
has the T5 tokenizer (the producer installs no transformers), so the producer cannot count them.
"""
from __future__ import annotations

import math
from typing import Any

from jobs.errors import InvalidRequest, PermanentError
from jobs.families import FAMILIES, T5_MAX, family_of_pipeline

CLIP_WINDOW = 77
#: Prompt tokens per chunk: the window less its start and end tokens.
CHUNK = CLIP_WINDOW - 2


def family_of(pipe) -> str:
    """The family of a loaded pipeline (sd15 for SD-1.5-style pipelines of any other class)."""
    return family_of_pipeline(type(pipe).__name__) or "sd15"


def _t5_tokenizer(pipe):
    return pipe.tokenizer_3 if family_of(pipe) == "sd3" else pipe.tokenizer_2


def _clip_tokenizers(pipe) -> list:
    return [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]


def prompt_tokens(pipe, text: str) -> int:
    """How many tokens of ``text`` the pipeline's text encoders read (start/end tokens not counted):
    CLIP tokens for SD 1.5/SDXL (all of them), T5 tokens for SD3/FLUX."""
    if FAMILIES[family_of(pipe)].t5_window:
        return len(_t5_tokenizer(pipe)(text, add_special_tokens=False).input_ids)
    return max(len(t(text, add_special_tokens=False).input_ids) for t in _clip_tokenizers(pipe))


def chunks_for(pipe, *texts: str) -> int:
    """Windows a row needs: CLIP windows of 75 tokens (SD 1.5/SDXL), or T5 windows (SD3/FLUX;
    a window's last position holds the end token), at most T5_MAX // window of them."""
    window = FAMILIES[family_of(pipe)].t5_window
    if window:
        return min(T5_MAX // window, max(1, *(math.ceil((prompt_tokens(pipe, t) + 1) / window) for t in texts)))
    return max(1, *(math.ceil(prompt_tokens(pipe, t) / CHUNK) for t in texts))


def t5_sequence_length(fam: str, chunks: int) -> int:
    """The ``max_sequence_length`` of an SD3/FLUX call of rows needing ``chunks`` windows."""
    return min(T5_MAX, FAMILIES[fam].t5_window * chunks)


def t5_window_error(pipe, model: str, prompt: str, negative_prompt: str = "",
                    conditioned: bool = False) -> InvalidRequest | None:
    """SD3/FLUX: the error for a job whose prompt or negative prompt is longer than the T5 encoder
    reads (T5_MAX less the end token), or None when both fit (and for SD 1.5/SDXL, which chunk).
    ``conditioned``: the texts carry terms the worker added (colour names, a backdrop), said so
    in the message, since the client's own prompt may be shorter than what was counted."""
    fam = family_of(pipe)
    if not FAMILIES[fam].t5_window:
        return None
    for field, what, text in (("prompt", "prompt", prompt), ("negative_prompt", "negative prompt", negative_prompt)):
        n = prompt_tokens(pipe, text)
        if n > T5_MAX - 1:  # the end token takes one position
            added = " (with the colour and background terms the worker adds)" if conditioned else ""
            message = (f"{what} is {n} T5 tokens{added}; model {model!r} ({fam}) reads at most {T5_MAX - 1}: "
                       f"shorten the {what}")
            return InvalidRequest(message, errors=[{"field": field, "message": message}])
    return None


def check_t5_window(pipe, model: str, texts: list[str]) -> None:
    """SD3/FLUX: refuse a prompt longer than T5_MAX rather than let diffusers cut it (the last guard
    of ``render``; the worker refuses such a job on its own before the call, worker/runner.py)."""
    for text in texts:
        error = t5_window_error(pipe, model, text)
        if error is not None:
            raise error


def _chunk_ids(tokenizer, text: str, chunks: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) <= chunks * CHUNK, "chunk count computed for another text"
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for c in range(chunks):
        part = ids[c * CHUNK:(c + 1) * CHUNK]
        rows.append([bos, *part, eos] + [pad] * (CHUNK - len(part)))
    return rows


def _encode(encoder, tokenizer, texts: list[str], chunks: int, device: str, *, penultimate: bool):
    """Hidden states (rows, chunks*77, H) and, for an encoder with a projection, the pooled
    embedding of each row's first chunk."""
    import torch

    ids = torch.tensor([r for t in texts for r in _chunk_ids(tokenizer, t, chunks)], device=device)
    out = encoder(ids, output_hidden_states=penultimate)
    hidden = out.hidden_states[-2] if penultimate else out[0]
    hidden = hidden.reshape(len(texts), chunks * CLIP_WINDOW, hidden.shape[-1])
    pooled = out[0].reshape(len(texts), chunks, -1)[:, 0] if penultimate else None
    return hidden, pooled


def encode_chunked(pipe, prompts: list[str], negatives: list[str], chunks: int, device: str) -> dict[str, Any]:
    """Keyword arguments for the pipeline call: embeddings of ``chunks`` CLIP windows per row,
    prompts and negative prompts alike (SD 1.5: prompt_embeds; SDXL: also the pooled ones)."""
    import torch

    fam = family_of(pipe)
    with torch.inference_mode():
        if fam == "sd15":
            pos, _ = _encode(pipe.text_encoder, pipe.tokenizer, prompts, chunks, device, penultimate=False)
            neg, _ = _encode(pipe.text_encoder, pipe.tokenizer, negatives, chunks, device, penultimate=False)
            return {"prompt_embeds": pos, "negative_prompt_embeds": neg}
        if fam == "sdxl":
            out: dict[str, Any] = {}
            for key, texts in (("prompt_embeds", prompts), ("negative_prompt_embeds", negatives)):
                h1, _ = _encode(pipe.text_encoder, pipe.tokenizer, texts, chunks, device, penultimate=True)
                h2, pooled = _encode(pipe.text_encoder_2, pipe.tokenizer_2, texts, chunks, device,
                                     penultimate=True)
                out[key] = torch.cat([h1, h2], dim=-1)
                out[key.replace("prompt_embeds", "pooled_prompt_embeds")] = pooled
            return out
    raise PermanentError(f"a {fam} pipeline reads long prompts through its T5 encoder; it is not chunked")


class PromptCache:
    """Prompt embeddings of one pipeline (SD 1.5/SDXL), least recently used out first
    (BATCHRENDER_PROMPT_CACHE_SIZE entries).

    Each distinct (prompt, negative prompt, windows) is encoded alone, at batch 1, through
    ``encode_chunked``: a hit and a miss give the very same bits, whatever shares the call. Those
    bits may differ in the last places from the bare pipeline's own encoding of a whole batch, so
    the cache is opt-in. SD3/FLUX do not use it (their T5 encoders are called by the pipeline).
    """

    FAMILIES = ("sd15", "sdxl")

    def __init__(self, size: int) -> None:
        from collections import OrderedDict

        self.size = size
        self._items: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def embeds(self, pipe, prompts: list[str], negatives: list[str], chunks: int, device: str) -> dict[str, Any]:
        """Keyword arguments for the pipeline call (as ``encode_chunked``'s), one cached entry per row."""
        import torch

        rows = []
        for key in zip(prompts, negatives, [chunks] * len(prompts)):
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
                hit = encode_chunked(pipe, [key[0]], [key[1]], chunks, device)
                self._items[key] = hit
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            else:
                self.hits += 1
                self._items.move_to_end(key)
            rows.append(hit)
        return {name: torch.cat([r[name] for r in rows]) for name in rows[0]}
