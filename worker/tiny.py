"""A tiny random-weight Stable-Diffusion pipeline, written to disk so it loads offline.

Its images are noise: it exists so the whole system (queue, worker, moderation, signing,
storage, webhooks) runs on a machine with no GPU and no model downloads, through the same
``DiffusionPipeline.from_pretrained`` path a real model takes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: every byte maps to a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_tokenizer(d: Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    (d / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }))
    return len(vocab)


def write_atomically(target: Path, build: Callable[[Path], Any], seed: int = 0) -> Path:
    """Save the pipeline ``build(work)`` returns (torch seeded first: the same weights on every
    machine; ``work`` is a scratch directory for its tokenizer files) to ``target`` atomically: a
    crash leaves no half-written model, and a reader never sees one."""
    import torch

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        torch.manual_seed(seed)
        pipe = build(work)
        out = work / "pipeline"
        pipe.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def build_tiny_pipeline(target: Path, seed: int = 0) -> Path:
    """Write the tiny SD 1.5-style pipeline to ``target`` (atomically)."""
    return write_atomically(target, _tiny_sd15, seed)


def _tiny_sd15(work: Path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = _write_tokenizer(work / "tok")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=8,
        attention_head_dim=4,
    )
    # Four blocks, so the VAE scale factor is 8 like real SD (DEPENDENCY_NOTES: a 2-block VAE is 10-50x slower).
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=vocab_size, max_position_embeddings=77, projection_dim=32,
    ))
    tokenizer = CLIPTokenizer(str(work / "tok" / "vocab.json"), str(work / "tok" / "merges.txt"), model_max_length=77)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def add_tiny_ip_adapter(model_dir: Path, seed: int = 0) -> Path:
    """Give a tiny SD 1.5 pipeline directory a random-weight IP-Adapter (``ip_adapter/``: the
    adapter's weights and a tiny CLIP image encoder), laid out as diffusers' ``load_ip_adapter``
    reads a real one. Tests use it to render ``references`` offline."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from jobs.registry import IP_ADAPTER_DIR, IP_ADAPTER_ENCODER, IP_ADAPTER_WEIGHTS

    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    cross, blocks = unet.config.cross_attention_dim, list(unet.config.block_out_channels)
    torch.manual_seed(seed)
    embed_dim, tokens = 32, 4
    out = model_dir / IP_ADAPTER_DIR
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=embed_dim, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=4))
    encoder.save_pretrained(out / IP_ADAPTER_ENCODER)
    CLIPImageProcessor(crop_size=32, size=32).save_pretrained(out / IP_ADAPTER_ENCODER)
    weights = {"image_proj.proj.weight": torch.randn(cross * tokens, embed_dim) * 0.02,
               "image_proj.proj.bias": torch.zeros(cross * tokens),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1  # diffusers numbers the cross-attention processors 1, 3, 5, ... in attn_processors order
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = blocks[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.05
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.05
        key_id += 2
    save_file(weights, str(out / IP_ADAPTER_WEIGHTS))
    return out
