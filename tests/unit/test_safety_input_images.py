"""Reference images: allow-listed formats, size limits checked from the header, faces found."""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageDraw, ImageFilter

from safety.faces import HaarFaceDetector
from safety.input_images import InputImageStage
from safety.verdict import INVALID_IMAGE, Action


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def drawn_face(size: int = 240) -> Image.Image:
    """A blurred cartoon face: light oval, dark eyes and brows, nose, mouth. Haar finds it."""
    s = size / 240
    im = Image.new("L", (size, size), 60)
    d = ImageDraw.Draw(im)
    d.ellipse([50 * s, 30 * s, 190 * s, 210 * s], fill=190)
    for x in (80, 160):
        d.ellipse([(x - 18) * s, 86 * s, (x + 18) * s, 104 * s], fill=30)
        d.rectangle([(x - 22) * s, 70 * s, (x + 22) * s, 76 * s], fill=50)
    d.polygon([(120 * s, 100 * s), (108 * s, 140 * s), (132 * s, 140 * s)], fill=150)
    d.ellipse([95 * s, 155 * s, 145 * s, 170 * s], fill=70)
    return im.filter(ImageFilter.GaussianBlur(3 * s)).convert("RGB")


def stage(**kw) -> InputImageStage:
    return InputImageStage("v1", **{"max_pixels": 2048 * 2048, **kw})


def refused_rule(result) -> str:
    (v,) = result.verdicts
    assert v.action is Action.BLOCK and v.category == INVALID_IMAGE and result.image is None
    return v.rule


def test_decompression_bomb_is_refused_before_decode():
    data = png_header_only(100_000, 100_000)
    assert len(data) < 200
    assert refused_rule(stage(max_pixels=10**12).check(data)) == "decompression_bomb"


def test_pixel_limit_is_checked_from_the_header():
    # 5000x5000 is below PIL's own bomb limit; decoding this truncated file would fail, so the
    # "too_many_pixels" rule proves the stage refused it from the header alone
    assert refused_rule(stage().check(png_header_only(5000, 5000))).startswith("too_many_pixels:5000x5000")


def test_byte_limit_is_checked_first():
    assert refused_rule(stage(max_bytes=100).check(b"\0" * 101)).startswith("too_many_bytes")


def test_formats_outside_the_allow_list_are_refused():
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    assert refused_rule(stage().check(gif)).startswith("format_not_allowed")


def test_truncated_image_is_refused_not_raised():
    data = encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    assert refused_rule(stage().check(data[: len(data) // 2])) == "corrupt_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_to_rgb(fmt):
    result = stage().check(encode(Image.new("L", (32, 16), 128), fmt))
    assert result.verdicts[0].action is Action.ALLOW
    assert result.image is not None and result.image.mode == "RGB" and result.image.size == (32, 16)
    assert result.faces is None  # no detector configured


def test_haar_detector_finds_a_face_and_not_a_blank_image():
    detector = HaarFaceDetector()
    s = stage(face_detector=detector)
    face = s.check(encode(drawn_face(), "PNG"))
    blank = s.check(encode(Image.new("RGB", (240, 240), "white"), "PNG"))
    assert face.faces == 1 and face.verdicts[0].category == "real_person"
    assert blank.faces == 0 and blank.verdicts[0].category == "none"
