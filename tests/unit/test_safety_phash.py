"""pHash distances and the blocklist stage."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.errors import ConfigurationError
from safety.blocklist import PhashBlocklistStage
from safety.phash import hamming, phash, to_hex
from safety.policy import load_policy
from safety.verdict import Action


def scene(seed: int, size: int = 512) -> Image.Image:
    """A smooth random picture (low-frequency structure, like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def jpeg_copy(img: Image.Image, size: int, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.resize((size, size), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_resized_jpeg_copy_is_close_and_unrelated_image_is_far():
    a = scene(1)
    assert hamming(phash(a), phash(jpeg_copy(a, 200, 60))) <= 4
    assert hamming(phash(a), phash(scene(2))) >= 16


def test_hamming_counts_differing_bits():
    assert hamming(0b1011, 0b0001) == 2 and hamming(2**64 - 1, 0) == 64


@pytest.mark.parametrize(("seed", "expected"), [(1, "8ce7f058b83a27ca"), (7, "b099f0a35892ee5e")])
def test_hash_equals_imagehash_phash(seed, expected):
    # expected values are str(imagehash.phash(scene(seed))) computed with imagehash 4.3.2
    assert to_hex(phash(scene(seed))) == expected


def test_blocklist_blocks_a_reencoded_copy_in_its_category(tmp_path: Path):
    bad = scene(3)
    path = tmp_path / "block.txt"
    path.write_text(f"# known bad\n{to_hex(phash(bad))} hate_symbols\n", encoding="utf-8")
    stage = PhashBlocklistStage(path, load_policy())
    (v,) = stage.check(jpeg_copy(bad, 300, 70))
    assert v.action is Action.BLOCK and v.category == "hate_symbols" and v.rule.startswith("distance:")
    assert stage.check(scene(4))[0].action is Action.ALLOW


def test_blocklist_entry_without_category_is_most_severe(tmp_path: Path):
    bad = scene(5)
    path = tmp_path / "block.txt"
    path.write_text(to_hex(phash(bad)) + "\n", encoding="utf-8")
    (v,) = PhashBlocklistStage(path, load_policy()).check(bad)
    assert v.category == "known_bad_image" and v.severity == 10 and v.score == 1.0


@pytest.mark.parametrize(("line", "reason"), [("xyz", "expected"), ("zzzzzzzzzzzzzzzz", "not a hex hash"),
                                              ("0123456789abcdef nope", "unknown category")])
def test_bad_blocklist_line_fails_at_construction_with_line_number(tmp_path: Path, line, reason):
    path = tmp_path / "block.txt"
    path.write_text("# header\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=rf"block.txt:2: .*{reason}"):
        PhashBlocklistStage(path, load_policy())
