"""Keying a backdrop out (worker/cutout.py), and the matting-model path with a tiny random-weight
Segformer built offline."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worker.colour import ciede2000, hex_to_rgb, srgb_to_lab
from worker.cutout import Matting, choose_backdrop, cut_out, key_out, steer

GREEN = (0, 177, 64)
RED = (200, 30, 30)


def disc_on(backdrop, colour=RED, size=128, centre=(64, 64), radius=40, noise=4.0, seed=0):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
    img = np.empty((size, size, 3))
    img[:] = backdrop
    img[inside] = colour
    # Anti-aliased edge: a one-pixel ring mixing subject and backdrop, as renders have.
    ring = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (radius + 1) ** 2) & ~inside
    img[ring] = 0.5 * np.array(colour) + 0.5 * np.array(backdrop)
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), inside


def near(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` (to leave the feathered edge out of interior checks)."""
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1,) * 2, np.uint8)).astype(bool)


def test_subject_on_a_flat_backdrop_is_opaque_and_the_backdrop_transparent():
    img, inside = disc_on(GREEN)
    cut = key_out(img)
    alpha = np.asarray(cut.image)[..., 3]
    edge = near(inside, 3) & ~~near(~inside, 3)
    assert (alpha[inside & ~near(~inside, 3)] == 255).all()
    assert (alpha[~near(inside, 3)] == 0).all()
    assert ((alpha[edge] > 0) & (alpha[edge] < 255)).any(), "edges are feathered"
    report = cut.report
    assert report["method"] == "key"
    assert ciede2000(srgb_to_lab(hex_to_rgb(report["backdrop"])), srgb_to_lab(GREEN)) < 2
    assert report["coverage"] == pytest.approx((alpha == 0).mean(), abs=1e-4)
    assert report["coverage"] + report["opaque"] + report["partial"] == pytest.approx(1, abs=1e-3)
    assert (np.asarray(cut.image)[alpha == 0][:, :3] == 0).all(), "no backdrop colour hidden under alpha 0"


def test_backdrop_is_estimated_even_when_the_subject_touches_the_border():
    img, inside = disc_on((30, 60, 200), colour=(250, 220, 40), centre=(120, 64), radius=36)
    cut = key_out(img)
    alpha = np.asarray(cut.image)[..., 3]
    assert ciede2000(srgb_to_lab(hex_to_rgb(cut.report["backdrop"])), srgb_to_lab((30, 60, 200))) < 3
    assert (alpha[inside & ~near(~inside, 3)] == 255).mean() > 0.99
    assert (alpha[~near(inside, 3)] == 0).mean() > 0.99


def test_edge_pixels_are_unmixed_and_despilled():
    img, inside = disc_on(GREEN, noise=0.0)
    rgb = np.asarray(img).astype(float)
    cut = np.asarray(key_out(img).image).astype(float)
    partial = (cut[..., 3] > 0) & (cut[..., 3] < 255)
    assert partial.sum() > 20

    def green_cast(px):
        return float((px[:, 1] - (px[:, 0] + px[:, 2]) / 2).mean())

    # The rendered edge is half green; after keying it carries (almost) no green cast.
    assert green_cast(rgb[partial]) > 30
    assert green_cast(cut[partial][:, :3]) < 5


def test_noise_gives_transparent_and_opaque_regions_from_its_own_colours():
    # Not a flat backdrop at all: what keys out is what is near the border's median colour.
    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    img = Image.fromarray(noisy).resize((128, 128), Image.Resampling.NEAREST)
    cut = key_out(img)
    alpha = np.asarray(cut.image)[..., 3]
    lab = srgb_to_lab(np.asarray(img).astype(float))
    backdrop = srgb_to_lab(np.array(hex_to_rgb(cut.report["backdrop"]), dtype=float))
    dist = np.sqrt(((lab - backdrop) ** 2).sum(-1))
    lo, hi = cut.report["threshold"]
    assert (alpha == 0).any() and (alpha == 255).any()
    # Interior of each 8x8 cell (away from feathering): transparent iff close to the backdrop.
    core = np.zeros_like(alpha, dtype=bool)
    core[3::8, 3::8] = core[4::8, 4::8] = True
    assert (alpha[core & (dist < lo - 1)] == 0).all()
    assert (alpha[core & (dist > hi + 1)] == 255).all()


def test_backdrop_is_chosen_away_from_the_subject_colours():
    assert choose_backdrop("a red mug") == ("green", "#00B140")
    assert choose_backdrop("a green bottle")[0] == "blue"
    assert choose_backdrop("a mug", ["#00B040"])[0] == "blue"  # the palette is green
    assert choose_backdrop("a green and blue kite")[0] == "magenta"
    prompt, negative = steer("a mug", "blurry", ("blue", "#0047BB"))
    assert prompt.startswith("a mug, isolated on a plain flat solid blue background")
    assert negative.startswith("blurry, ") and "shadow" in negative and "blue subject" in negative


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory):
    """A random-weight Segformer saved like a real one; its classifier is scaled so that its
    random features give confident (0 or 1) foreground probabilities in places."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                             hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1],
                             mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=2,
                             id2label={0: "foreground", 1: "background"}, label2id={"foreground": 0, "background": 1})
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(1e5)
    target = tmp_path_factory.mktemp("matting") / "tiny-segformer"
    model.save_pretrained(target)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(target)
    return target


def test_matting_model_alpha_is_one_minus_its_background_probability(tiny_segformer):
    import torch
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    img, _ = disc_on(GREEN, size=96, centre=(48, 48), radius=30, noise=30.0)
    cut = cut_out(img, Matting(tiny_segformer))
    assert cut.report["method"] == "matting" and cut.report["model"] == "tiny-segformer"
    alpha = np.asarray(cut.image)[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()

    # The same figure computed here from the model directly: label "background" is class 1.
    processor = AutoImageProcessor.from_pretrained(tiny_segformer)
    model = AutoModelForSemanticSegmentation.from_pretrained(tiny_segformer).eval()
    with torch.no_grad():
        logits = model(**processor(images=img, return_tensors="pt")).logits
        logits = torch.nn.functional.interpolate(logits, size=(96, 96), mode="bilinear", align_corners=False)
    expected = 1 - logits.softmax(1)[0, 1].numpy()
    expected = np.where(expected < 2 / 255, 0, np.where(expected > 253 / 255, 1, expected))
    assert np.abs(alpha.astype(float) - np.round(expected * 255)).max() <= 1


def test_a_matting_directory_without_a_model_is_a_configuration_error(tmp_path):
    from jobs.errors import ConfigurationError

    img, _ = disc_on(GREEN)
    with pytest.raises(ConfigurationError, match="BATCHRENDER_MATTING_MODEL_DIR .* no config.json"):
        Matting(tmp_path)  # refused when the worker context is built, before any job
    (tmp_path / "config.json").write_text("{}")  # a config, but no model in it: refused at first use
    with pytest.raises(ConfigurationError, match="BATCHRENDER_MATTING_MODEL_DIR .* cannot load"):
        cut_out(img, Matting(tmp_path))
    assert cut_out(img, Matting(None)).report["method"] == "key"


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_survives_encoding(fmt):
    from jobs.schemas import OutputFormat
    from worker.encode import encode, pixel_sha256

    img, _ = disc_on(GREEN)
    cut = key_out(img)
    with Image.open(io.BytesIO(encode(cut.image, OutputFormat(fmt), 90))) as back:
        assert back.mode == "RGBA"
        assert np.array_equal(np.asarray(back)[..., 3], np.asarray(cut.image)[..., 3])
    assert pixel_sha256(cut.image) != pixel_sha256(cut.image.convert("RGB"))
