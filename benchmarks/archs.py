"""Full-size model architectures with random weights, built offline for benchmarks/throughput.py.

Architecture, not weights, sets the speed of a diffusion pipeline, so the throughput benchmark
renders with random weights in the published shapes (no hub access on the benchmark machines):

- ``sd15``: Stable Diffusion 1.5 (UNet 860M, CLIP ViT-L/14 text encoder, the SD VAE).
- ``sdxl``: SDXL base 1.0 (UNet 2.6B, CLIP ViT-L/14 + OpenCLIP ViT-bigG/14 text encoders, the SDXL
  VAE), configs as in ``stabilityai/stable-diffusion-xl-base-1.0``'s component ``config.json``s.

``*_components()`` only construct the modules: called under ``torch.device("meta")`` they take
no memory and no time, which is how tests/unit/test_benchmark_arch.py checks their parameter
counts against the published figures. ``build_*()`` constructs them on the meta device,
materialises them (the UNet and VAE on ``device`` with each layer's own initialisation, fast on a
GPU; the text encoders constructed on the CPU), casts them to ``dtype`` and writes a
``save_pretrained`` directory that the worker loads like any model.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.tiny import _bytes_to_unicode, _write_tokenizer  # noqa: E402

#: The size of the byte-level vocabulary worker/tiny.py writes (its alphabet, the alphabet with
#: ``</w>``, then ``<|startoftext|>`` and ``<|endoftext|>``). The text encoders keep CLIP's
#: 49408-row embedding table, so the parameter counts are the real models'.
TOKENIZER_VOCAB = 2 * len(_bytes_to_unicode()) + 2
CLIP_VOCAB = 49408


def _clip_config(hidden: int, layers: int, heads: int, intermediate: int, act: str, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=projection_dim,
        bos_token_id=TOKENIZER_VOCAB - 2, eos_token_id=TOKENIZER_VOCAB - 1, pad_token_id=TOKENIZER_VOCAB - 1)


def sd15_components() -> dict:
    """SD 1.5's modules (``unet``, ``vae``, ``text_encoder``), constructed on the current device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(_clip_config(768, 12, 12, 3072, "quick_gelu", 768))
    return {"unet": unet, "vae": vae, "text_encoder": text}


def sdxl_components() -> dict:
    """SDXL base 1.0's modules (``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=256,
        # pooled bigG embedding (1280) + 6 size/crop conditions x 256
        projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025,
        # As published: in float16 the pipeline decodes in float32 (the base VAE overflows in fp16).
        force_upcast=True)
    text = CLIPTextModel(_clip_config(768, 12, 12, 3072, "quick_gelu", 768))
    text_2 = CLIPTextModelWithProjection(_clip_config(1280, 32, 20, 5120, "gelu", 1280))
    return {"unet": unet, "vae": vae, "text_encoder": text, "text_encoder_2": text_2}


def materialise(module, device, dtype=None):
    """A meta-device module with real, randomly initialised weights on ``device``.

    diffusers modules are given memory on ``device`` and each layer's ``reset_parameters()``
    (PyTorch's default initialisation; fast on a GPU), after a small normal fill for any parameter
    no layer resets. transformers models are constructed again from their config on the CPU: how
    a model re-initialises itself after ``to_empty`` (and refills buffers such as CLIP's
    ``position_ids``) differs between transformers 4 and 5, construction does not. Returns the
    module to use (a new one for transformers models).
    """
    import torch
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        with torch.device("cpu"):
            module = type(module)(module.config)
        module.to(device)
    else:
        if any(True for _ in module.buffers()):
            raise ValueError(f"{type(module).__name__} has buffers that a meta build cannot restore")
        module.to_empty(device=device)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0, 0.02)
            for sub in module.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
    if dtype is not None:
        module.to(dtype)
    return module.eval()


def _build(target: Path, components, pipeline_cls, device, dtype, seed: int, **extra) -> Path:
    import torch
    from transformers import CLIPTokenizer

    if device is None:  # as the benchmark: float16 on CUDA, float32 on CPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = dtype or (torch.float16 if device == "cuda" else None)
    torch.manual_seed(seed)
    with torch.device("meta"):
        modules = components()
    modules = {name: materialise(m, device, dtype) for name, m in modules.items()}
    tokenizers = {}
    for name in ("tokenizer", "tokenizer_2"):
        if name.replace("tokenizer", "text_encoder") in modules:
            d = target / f"_{name}"
            if _write_tokenizer(d) != TOKENIZER_VOCAB:
                raise RuntimeError("worker/tiny.py's tokenizer changed size: update TOKENIZER_VOCAB")
            tokenizers[name] = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=77)
    pipe = pipeline_cls(**modules, **tokenizers, **extra)
    pipe.save_pretrained(target / "pipeline")
    return target / "pipeline"


def build_sd15(target: Path, device: str | None = None, dtype=None, seed: int = 0) -> Path:
    """Write SD 1.5's architecture with random weights to ``target/pipeline``; returns that path."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1)
    return _build(Path(target), sd15_components, StableDiffusionPipeline, device, dtype, seed, scheduler=sched,
                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sdxl(target: Path, device: str | None = None, dtype=None, seed: int = 0) -> Path:
    """Write SDXL base 1.0's architecture with random weights to ``target/pipeline``.

    About 3.5B parameters: on a GPU machine (the default device there) it is built in float16,
    7 GB written; on a CPU it takes minutes and 14 GB in float32.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
                                   prediction_type="epsilon", use_karras_sigmas=False)
    return _build(Path(target), sdxl_components, StableDiffusionXLPipeline, device, dtype, seed, scheduler=sched,
                  force_zeros_for_empty_prompt=True, add_watermarker=False)


#: Each arch's render defaults: (size, steps, guidance).
DEFAULTS = {"tiny": (64, 4, 7.5), "sd15": (512, 25, 7.5), "sdxl": (1024, 30, 5.0)}
#: Each arch's model family (jobs/families.py), for the model registration.
FAMILY = {"tiny": "sd15", "sd15": "sd15", "sdxl": "sdxl"}
