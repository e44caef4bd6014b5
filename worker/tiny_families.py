"""Tiny random-weight SDXL, SD3 and FLUX pipelines, written with ``save_pretrained`` so they load
offline through ``DiffusionPipeline.from_pretrained`` like real checkpoints of those families.

Each has its family's real architecture at toy widths: SDXL's two CLIP encoders (the second with
a projection) and text-time conditioning; SD3's MMDiT with two CLIP encoders and T5; FLUX's
transformer with CLIP and T5, guidance embedding and packed latents. The VAE has four blocks
(scale factor 8, as in the real models). The T5 tokenizer is a character-level Unigram model
built here, since no tokenizer can be downloaded.
"""
from __future__ import annotations

from pathlib import Path

from worker.tiny import _write_tokenizer, write_atomically

TINY_FAMILIES = ("sdxl", "sd3", "flux")


def _t5_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    chars = [chr(i) for i in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _clip(work: Path, name: str, projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab_size = _write_tokenizer(work / name)
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=vocab_size, max_position_embeddings=77, projection_dim=hidden,
    )
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    tok = CLIPTokenizer(str(work / name / "vocab.json"), str(work / name / "merges.txt"), model_max_length=77)
    return model, tok


def _vae(latent_channels: int, flow: bool):
    from diffusers import AutoencoderKL

    # SD3/FLUX VAEs: no quant convs, latents shifted and scaled (the real models' factors).
    extra = dict(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                 scaling_factor=1.5035) if flow else {}
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, **extra,
    )


def _sdxl(work: Path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    text_encoder, tokenizer = _clip(work, "tok1", projection=False)
    text_encoder_2, tokenizer_2 = _clip(work, "tok2", projection=True)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=32 + 6 * 8, cross_attention_dim=64, norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(4, False), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def _sd3(work: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    text_encoder, tokenizer = _clip(work, "tok1", projection=True, hidden=16)
    text_encoder_2, tokenizer_2 = _clip(work, "tok2", projection=True, hidden=16)
    tokenizer_3 = _t5_tokenizer()
    # 16 latent channels as in the real SD3 (its inpainting pipeline needs 16 or 33).
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_vae(16, True),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=_t5_encoder(len(tokenizer_3)), tokenizer_3=tokenizer_3,
    )


def _flux(work: Path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    text_encoder, tokenizer = _clip(work, "tok1", projection=False)
    tokenizer_2 = _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(2, 2, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=_vae(4, True), text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=_t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2)


def build_tiny_family(family: str, target: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline of ``family`` (sdxl, sd3, flux) to ``target``, atomically."""
    builders = {"sdxl": _sdxl, "sd3": _sd3, "flux": _flux}
    if family not in builders:
        raise ValueError(f"no tiny pipeline for family {family!r}; allowed: {', '.join(builders)} "
                         "(sd15: worker.tiny.build_tiny_pipeline)")
    return write_atomically(target, builders[family], seed)
