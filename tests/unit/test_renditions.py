"""worker/renditions.py: crop, pad and extend geometry on drawn masters (no I/O, no torch)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from jobs.schemas import OutputFormat, Rendition
from storage.links import rendition_key
from worker.renditions import (alpha_bbox, derive, extend_canvas, for_format, from_extended, pad_box,
                               saliency_crop_box, subject_crop_box)


def transparent_master(size=(160, 120), subject=(14, 30, 50, 100)) -> Image.Image:
    """A transparent master with an opaque subject (an ellipse, soft-edged) off-centre."""
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse(subject, fill=(200, 40, 40, 255))
    d.point((subject[0], (subject[1] + subject[3]) // 2), fill=(200, 40, 40, 1))  # barely there: still subject
    return img


def covers_every_visible_pixel(master: Image.Image, box) -> bool:
    """Every pixel with alpha > 0, mapped into the box, lies inside it."""
    ys, xs = np.nonzero(np.asarray(master.getchannel("A")) > 0)
    x0, y0, x1, y1 = box
    return bool(((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).all())


@pytest.mark.parametrize("width,height", [(1080, 1920), (1080, 1080), (1080, 1350)])
def test_crop_of_a_transparent_master_keeps_every_visible_pixel(width, height):
    master = transparent_master()
    got = derive(master, Rendition(name="r", width=width, height=height))
    assert got.subject == "alpha" and got.image.size == (width, height) and got.image.mode == "RGBA"
    x0, y0, x1, y1 = got.box
    assert (x1 - x0) / (y1 - y0) == pytest.approx(width / height, rel=0.02)
    assert covers_every_visible_pixel(master, got.box)
    # The window is the largest that fits, inside the master (the subject fits in it).
    assert x0 >= 0 and y0 >= 0 and x1 <= master.width and y1 <= master.height
    assert (x1 - x0 == master.width) or (y1 - y0 == master.height)


def test_crop_window_is_centred_on_the_subject_and_shifted_to_stay_inside():
    master = transparent_master(size=(400, 100), subject=(300, 20, 340, 80))
    x0, y0, x1, y1 = derive(master, Rendition(name="sq", aspect_ratio="1:1")).box
    assert (y0, y1, x1 - x0) == (0, 100, 100)
    assert x0 + 50 == pytest.approx((300 + 341) / 2, abs=1)  # centred on the subject's box
    master = transparent_master(size=(400, 100), subject=(370, 20, 399, 80))
    assert derive(master, Rendition(name="sq", aspect_ratio="1:1")).box == (300, 0, 400, 100)  # shifted inside


def test_subject_too_tall_for_the_window_is_padded_not_cut():
    # A 16:9 master whose subject spans its whole height and more width than a 9:16 window has.
    master = transparent_master(size=(320, 180), subject=(60, 0, 200, 179))
    got = derive(master, Rendition(name="story", width=180, height=320))
    x0, y0, x1, y1 = got.box
    assert covers_every_visible_pixel(master, got.box)
    assert y0 < 0 or y1 > master.height  # grown past the master's edges...
    assert (x1 - x0) / (y1 - y0) == pytest.approx(9 / 16, rel=0.02)
    # ...and the outside is transparent (the default fill of a transparent master).
    top = np.asarray(got.image)[:3, :, 3]
    assert (top == 0).all()
    assert subject_crop_box(100, 100, (0, 0, 100, 100), (1, 2)) == (0, -50, 100, 150)


def test_saliency_crop_finds_the_detail():
    rng = np.random.default_rng(3)
    px = np.full((200, 400, 3), 120, np.uint8)
    px[40:160, 290:390] = rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)  # texture on the right
    master = Image.fromarray(px)
    got = derive(master, Rendition(name="sq", width=64, height=64))
    x0, y0, x1, y1 = got.box
    assert got.subject == "saliency" and (y0, y1) == (0, 200) and x1 - x0 == 200
    assert x0 <= 290 and x1 >= 390  # the whole textured patch is inside
    assert 0 <= x0 and x1 <= 400  # never outside the master
    flat = Image.new("RGB", (400, 200), (10, 10, 10))
    assert saliency_crop_box(flat, (1, 1)) == (100, 0, 300, 200)  # nothing to see: the centre


def test_pad_keeps_the_whole_master_centred_on_the_fill_colour():
    master = Image.new("RGB", (100, 50), (0, 0, 255))
    got = derive(master, Rendition(name="p", width=200, height=200, fit="pad"))
    assert got.box == pad_box(100, 50, (1, 1)) == (0, -25, 100, 75) and got.subject == "none"
    px = np.asarray(got.image)
    assert got.image.mode == "RGB" and px[5, 100].tolist() == [255, 255, 255]  # white by default
    assert px[100, 100].tolist() == [0, 0, 255]
    red = derive(master, Rendition(name="p", width=200, height=200, fit="pad", pad_colour="#f00"))
    assert np.asarray(red.image)[5, 100].tolist() == [255, 0, 0]
    clear = derive(transparent_master(), Rendition(name="p", aspect_ratio="9:16", fit="pad"))
    assert clear.image.mode == "RGBA" and np.asarray(clear.image)[0, 0, 3] == 0
    assert covers_every_visible_pixel(transparent_master(), clear.box)


def test_aspect_ratio_renditions_are_not_scaled():
    master = Image.effect_noise((300, 200), 40).convert("RGB")
    got = derive(master, Rendition(name="sq", aspect_ratio="1:1"))
    x0, y0, x1, y1 = got.box
    assert got.image.size == (x1 - x0, y1 - y0) == (200, 200)
    assert np.array_equal(np.asarray(got.image), np.asarray(master.crop(got.box)))
    padded = derive(master, Rendition(name="tall", aspect_ratio="1:2", fit="pad"))
    assert padded.image.size == (300, 600)


def test_jpeg_renditions_of_transparent_masters_are_flattened():
    master = transparent_master()
    got = derive(master, Rendition(name="j", width=120, height=120, format="jpeg", pad_colour="#00FF00"))
    assert got.image.mode == "RGB"  # a colour given: laid on it
    assert np.asarray(got.image)[0, 0].tolist() == [0, 255, 0]
    rgba = derive(master, Rendition(name="k", width=120, height=120))
    flat = for_format(rgba.image, OutputFormat.JPEG, (0, 0, 0, 0))
    assert flat.mode == "RGB" and np.asarray(flat)[0, 0].tolist() == [255, 255, 255]  # onto white
    assert for_format(rgba.image, OutputFormat.PNG, (0, 0, 0, 0)).mode == "RGBA"


def test_extend_canvas_masks_the_new_area_and_maps_back_onto_the_master():
    master = Image.effect_noise((128, 128), 60).convert("RGB")
    canvas, mask, place = extend_canvas(master, (16, 9), (88, 48))
    assert canvas.size == mask.size == (88, 48)
    assert (place.x, place.y, place.width, place.height) == (20, 0, 48, 48)
    m = np.asarray(mask)
    assert (m[:, :20] == 255).all() and (m[:, 68:] == 255).all()  # the new area is redrawn...
    assert (m[:, 24:64] == 0).all() and (m[:, 20:22] == 255).all()  # ...overlapping a little into the master
    assert np.array_equal(np.asarray(canvas)[:, 0], np.asarray(canvas)[:, 20])  # edge-replicated prefill
    painted = Image.new("RGB", (88, 48), (0, 200, 0))
    got = from_extended(master, Rendition(name="wide", width=320, height=180, fit="extend"), painted, place)
    assert got.box == pad_box(128, 128, (16, 9)) and got.image.size == (320, 180)
    x0, _, x1, _ = got.box
    assert x0 < 0 and x1 > 128
    full = from_extended(master, Rendition(name="wide", aspect_ratio="16:9", fit="extend"), painted, place)
    px = np.asarray(full.image)
    assert px[64, 2].tolist() == [0, 200, 0]  # outpainted
    assert np.array_equal(px[:, -x0:-x0 + 128], np.asarray(master))  # the master's own pixels, untouched


def test_alpha_bbox_and_rendition_keys():
    assert alpha_bbox(Image.new("RGBA", (8, 8), (0, 0, 0, 0))) is None
    assert rendition_key("b/j/0.png", "story", "jpeg") == "b/j/0.story.jpeg"
    assert rendition_key("0.webp", "sq", "png") == "0.sq.png"
