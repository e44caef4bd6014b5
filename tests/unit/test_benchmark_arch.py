"""benchmarks/archs.py: the random-weight architectures the throughput benchmark renders with.

Built on the meta device (no memory, no weights) and counted against the published parameter
figures of the real models' components (diffusers' ``config.json`` of runwayml's SD 1.5 and of
stabilityai/stable-diffusion-xl-base-1.0): the speed of a random-weight pipeline is only the real
one's if its shapes are.
"""
import pytest
import torch

from benchmarks.archs import TOKENIZER_VOCAB, materialise, sd15_components, sdxl_components

#: Published parameter counts (SDXL text encoders together: 817,720,320).
SD15_UNET, SDXL_UNET = 859_520_964, 2_567_463_684
CLIP_VIT_L, OPENCLIP_BIGG_PROJ = 123_060_480, 694_659_840
SD_VAE = 83_653_863


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta(components) -> dict:
    with torch.device("meta"):
        return components()


def test_sd15_components_have_the_published_parameter_counts():
    c = meta(sd15_components)
    assert {k: count(m) for k, m in c.items()} == {"unet": SD15_UNET, "vae": SD_VAE, "text_encoder": CLIP_VIT_L}
    assert all(p.is_meta for m in c.values() for p in m.parameters())


def test_sdxl_components_have_the_published_parameter_counts():
    c = meta(sdxl_components)
    assert {k: count(m) for k, m in c.items()} == {
        "unet": SDXL_UNET, "vae": SD_VAE, "text_encoder": CLIP_VIT_L, "text_encoder_2": OPENCLIP_BIGG_PROJ}
    assert all(p.is_meta for m in c.values() for p in m.parameters())


def test_sdxl_components_match_sdxl_base_configs():
    c = meta(sdxl_components)
    unet, vae, te2 = c["unet"].config, c["vae"].config, c["text_encoder_2"].config
    assert (unet.addition_embed_type, unet.addition_time_embed_dim, unet.projection_class_embeddings_input_dim,
            unet.cross_attention_dim, unet.sample_size) == ("text_time", 256, 2816, 2048, 128)
    assert tuple(unet.transformer_layers_per_block) == (1, 2, 10)
    assert tuple(unet.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert (vae.scaling_factor, vae.sample_size) == (0.13025, 1024)
    assert (te2.hidden_size, te2.num_hidden_layers, te2.num_attention_heads, te2.projection_dim, te2.hidden_act) == (
        1280, 32, 20, 1280, "gelu")
    # UNet cross-attention reads both encoders' hidden states side by side; the pooled bigG
    # projection plus six 256-wide size/crop embeddings feed the added time embedding.
    assert c["text_encoder"].config.hidden_size + te2.hidden_size == unet.cross_attention_dim
    assert te2.projection_dim + 6 * unet.addition_time_embed_dim == unet.projection_class_embeddings_input_dim


@pytest.mark.parametrize("kind", ["diffusers", "transformers"])
def test_materialise_gives_a_meta_module_initialised_weights_and_buffers(kind):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        if kind == "diffusers":
            m = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                     norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
                                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        else:
            m = CLIPTextModel(CLIPTextConfig(vocab_size=TOKENIZER_VOCAB, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    m = materialise(m, "cpu", torch.float16)
    params = list(m.parameters())
    assert params and all(p.device.type == "cpu" and p.dtype == torch.float16 for p in params)
    assert all(torch.isfinite(p).all() for p in params)
    if kind == "diffusers":  # each layer's own init: norms start at one, convolutions are not the fallback fill
        assert torch.equal(m.conv_norm_out.weight, torch.ones_like(m.conv_norm_out.weight))
        assert m.conv_in.weight.float().std() > 0.05
    else:  # buffers a meta build loses are refilled
        (name, ids), = m.named_buffers()
        assert torch.equal(ids[0], torch.arange(77))
