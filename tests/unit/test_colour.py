"""CIEDE2000 against Sharma, Wu & Dalal's published test data; names, dominant colours, reports."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from worker.colour import (ciede2000, colour_name, dominant_colours, hex_codes_in, name_hex_codes, palette_report,
                           srgb_to_lab)

# Sharma, Wu & Dalal (2005), Table 1: (L1, a1, b1, L2, a2, b2, ΔE00), all 34 pairs.
SHARMA = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


def test_ciede2000_matches_every_published_sharma_pair_to_four_decimals():
    data = np.array(SHARMA)
    got = ciede2000(data[:, 0:3], data[:, 3:6])
    np.testing.assert_allclose(got, data[:, 6], atol=5e-5)
    # Symmetric, as the paper notes for its implementation.
    np.testing.assert_allclose(ciede2000(data[:, 3:6], data[:, 0:3]), data[:, 6], atol=5e-5)


def test_srgb_to_lab_known_values():
    np.testing.assert_allclose(srgb_to_lab([255, 255, 255]), [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab([0, 0, 0]), [0, 0, 0], atol=0.01)
    # sRGB red in CIELAB D65 (Lindbloom): 53.24, 80.09, 67.20.
    np.testing.assert_allclose(srgb_to_lab([255, 0, 0]), [53.24, 80.09, 67.20], atol=0.05)


def test_hex_codes_become_names_an_encoder_can_read():
    assert colour_name("#1A73E8") in ("royal blue", "azure blue", "cobalt blue")
    assert colour_name("#FE0000") == "red" and colour_name("#FEFEFE") == "white"
    text = "a mug in #1a73e8 on a #FFFFFF table, logo #1A73E8"
    assert hex_codes_in(text) == ["#1A73E8", "#FFFFFF"]
    named = name_hex_codes(text)
    assert "#" not in named and "white table" in named and named.count(colour_name("#1A73E8")) == 2


def test_dominant_colours_find_flat_regions_and_their_shares():
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    img[:, :30] = (26, 115, 232)
    img[:, 30:] = (255, 191, 0)
    dom = dominant_colours(img.reshape(-1, 3))
    assert [(d.hex, round(d.share, 2)) for d in dom] == [("#1A73E8", 0.75), ("#FFBF00", 0.25)]


def test_transparent_pixels_do_not_count_as_dominant():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 177, 64)
    rgba[5:15, 5:15] = (200, 30, 30, 255)
    report = palette_report(Image.fromarray(rgba, "RGBA"), ["#C81E1E"])
    assert report["dominant"][0]["hex"] == "#C81E1E" and report["dominant"][0]["share"] == 1.0
    assert report["passes"] and report["score"] == 1.0


def test_palette_report_carries_delta_e_and_fails_off_palette_colours():
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:16] = (30, 120, 230)   # close to #1A73E8
    img[16:] = (40, 160, 40)    # green: far from both requested colours
    report = palette_report(Image.fromarray(img), ["#1A73E8", "#FFBF00"])
    blue, green = sorted(report["dominant"], key=lambda d: d["hex"])
    assert blue["nearest"] == "#1A73E8" and 0 < blue["delta_e"] <= 10 and blue["passes"]
    assert green["delta_e"] > 10 and not green["passes"]
    amber = report["requested"][1]
    assert amber["hex"] == "#FFBF00" and amber["name"] == "amber" and not amber["passes"] and amber["delta_e"] > 10
    assert report["compliant_share"] == 0.5 and not report["passes"]
    assert report["score"] == pytest.approx((0.5 + 0.5) / 2)
