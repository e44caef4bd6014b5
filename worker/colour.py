"""Colour science for palettes: sRGB → CIELAB, CIEDE2000, colour names, dominant colours.

Text encoders read ``#1A73E8`` as five meaningless tokens, so hex codes are turned into the
nearest *named* colour (by CIEDE2000 over a table of names an encoder has seen in captions).
After rendering, the image's dominant colours (k-means in CIELAB) are compared with the
requested ones: a dominant colour passes at ΔE00 ≤ ``PASS_DELTA_E``.

CIEDE2000 follows Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula:
implementation notes, supplementary test data, and mathematical observations"; the unit tests
run the paper's 34 test pairs. Everything is numpy, vectorised, and deterministic (the k-means
starts from a fixed seed), so equal pixels give equal reports.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: A dominant colour within this CIEDE2000 distance of a requested colour passes.
PASS_DELTA_E = 10.0
#: Dominant colours looked for (fewer when the image has fewer distinct colours).
DOMINANT_K = 5
#: The longest side the image is reduced to before clustering (speed; shares barely move).
SAMPLE_SIDE = 96
_HEX = re.compile(r"#([0-9A-Fa-f]{6})\b")

#: Names an encoder knows from captions, with a representative sRGB value for each.
NAMED_COLOURS: tuple[tuple[str, str], ...] = (
    ("black", "#000000"), ("charcoal grey", "#36454F"), ("dark grey", "#555555"), ("grey", "#808080"),
    ("slate grey", "#708090"), ("silver", "#C0C0C0"), ("light grey", "#D3D3D3"), ("white", "#FFFFFF"),
    ("ivory", "#FFFFF0"), ("cream", "#FFFDD0"), ("beige", "#F5F5DC"), ("tan", "#D2B48C"),
    ("khaki", "#C3B091"), ("brown", "#964B00"), ("chocolate brown", "#7B3F00"), ("dark brown", "#5C4033"),
    ("rust", "#B7410E"), ("terracotta", "#E2725B"), ("peach", "#FFE5B4"), ("orange", "#FFA500"),
    ("dark orange", "#FF8C00"), ("amber", "#FFBF00"), ("gold", "#FFD700"), ("mustard yellow", "#FFDB58"),
    ("yellow", "#FFFF00"), ("lemon yellow", "#FFF44F"), ("pale yellow", "#FFFFBF"), ("lime green", "#32CD32"),
    ("chartreuse", "#7FFF00"), ("olive green", "#808000"), ("sage green", "#9CAF88"), ("mint green", "#98FF98"),
    ("green", "#008000"), ("emerald green", "#50C878"), ("forest green", "#228B22"), ("dark green", "#006400"),
    ("teal", "#008080"), ("turquoise", "#40E0D0"), ("aqua", "#00FFFF"), ("sky blue", "#87CEEB"),
    ("light blue", "#ADD8E6"), ("baby blue", "#89CFF0"), ("azure blue", "#007FFF"), ("royal blue", "#4169E1"),
    ("cobalt blue", "#0047AB"), ("blue", "#0000FF"), ("navy blue", "#000080"), ("midnight blue", "#191970"),
    ("indigo", "#4B0082"), ("violet", "#8F00FF"), ("purple", "#800080"), ("plum", "#8E4585"),
    ("lilac", "#C8A2C8"), ("lavender", "#E6E6FA"), ("magenta", "#FF00FF"), ("hot pink", "#FF69B4"),
    ("pink", "#FFC0CB"), ("blush pink", "#FEC5E5"), ("rose", "#FF007F"), ("coral", "#FF7F50"),
    ("salmon", "#FA8072"), ("red", "#FF0000"), ("crimson", "#DC143C"), ("scarlet", "#FF2400"),
    ("burgundy", "#800020"), ("maroon", "#800000"),
)


def hex_to_rgb(code: str) -> tuple[int, int, int]:
    h = code.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def rgb_to_hex(rgb) -> str:
    r, g, b = (int(round(float(c))) for c in rgb)
    return f"#{max(0, min(255, r)):02X}{max(0, min(255, g)):02X}{max(0, min(255, b)):02X}"


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0–255, any shape ``(..., 3)``."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1) between CIELAB arrays that broadcast."""
    lab1, lab2 = np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar ** 7 / (c_bar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, h1p)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, h2p)

    dLp = L2 - L1
    dCp = c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0.0, dh)
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)

    Lp_bar = (L1 + L2) / 2
    Cp_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    hp_bar = np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                      np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2))
    hp_bar = np.where(c1p * c2p == 0, h_sum, hp_bar)
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(Cp_bar ** 7 / (Cp_bar ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (Lp_bar - 50) ** 2 / np.sqrt(20 + (Lp_bar - 50) ** 2)
    s_c = 1 + 0.045 * Cp_bar
    s_h = 1 + 0.015 * Cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((dLp / s_l) ** 2 + (dCp / s_c) ** 2 + (dHp / s_h) ** 2 + r_t * (dCp / s_c) * (dHp / s_h))


_NAME_LAB = srgb_to_lab(np.array([hex_to_rgb(h) for _, h in NAMED_COLOURS]))


def colour_name(code: str) -> str:
    """The nearest named colour (CIEDE2000) to a ``#RRGGBB`` code."""
    lab = srgb_to_lab(np.array(hex_to_rgb(code)))
    return NAMED_COLOURS[int(np.argmin(ciede2000(_NAME_LAB, lab)))][0]


def hex_codes_in(text: str) -> list[str]:
    """``#RRGGBB`` codes written in ``text``, upper-cased, in order, without repeats."""
    seen: dict[str, None] = {}
    for m in _HEX.finditer(text):
        seen.setdefault("#" + m.group(1).upper(), None)
    return list(seen)


def name_hex_codes(text: str) -> str:
    """``text`` with every ``#RRGGBB`` replaced by its colour name (what an encoder can read)."""
    return _HEX.sub(lambda m: colour_name("#" + m.group(1)), text)


@dataclass(frozen=True)
class Dominant:
    hex: str
    share: float
    lab: tuple[float, float, float]


def dominant_colours(pixels: np.ndarray, weights: np.ndarray | None = None, k: int = DOMINANT_K,
                     iterations: int = 25, seed: int = 0) -> list[Dominant]:
    """k-means in CIELAB over ``pixels`` (N×3 sRGB 0–255), k-means++ start from a fixed seed.

    ``weights`` (N, 0–1), e.g. an alpha channel, count pixels partly: a transparent background
    does not make a dominant colour. Returned largest share first.
    """
    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    w = np.ones(len(px)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = w > 0
    px, w = px[keep], w[keep]
    if len(px) == 0:
        return []
    lab = srgb_to_lab(px)
    distinct = np.unique(np.round(lab, 1), axis=0)
    k = max(1, min(k, len(distinct)))
    rng = np.random.default_rng(seed)
    centres = [lab[rng.choice(len(lab), p=w / w.sum())]]
    for _ in range(1, k):
        d2 = np.min(((lab[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1) * w
        if d2.sum() == 0:
            break
        centres.append(lab[rng.choice(len(lab), p=d2 / d2.sum())])
    c = np.array(centres)
    for _ in range(iterations):
        labels = np.argmin(((lab[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        moved = np.array([np.average(lab[labels == j], axis=0, weights=w[labels == j])
                          if w[labels == j].sum() > 0 else c[j] for j in range(len(c))])
        if np.allclose(moved, c, atol=1e-3):
            c = moved
            break
        c = moved
    labels = np.argmin(((lab[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    total = w.sum()
    out = []
    for j in range(len(c)):
        mass = w[labels == j].sum()
        if mass <= 0:
            continue
        # The hex is the mean sRGB of the cluster's pixels (exact for flat colours).
        rgb = np.average(px[labels == j], axis=0, weights=w[labels == j])
        out.append(Dominant(rgb_to_hex(rgb), float(mass / total), tuple(float(x) for x in c[j])))
    return sorted(out, key=lambda d: -d.share)


def sample(image, side: int = SAMPLE_SIDE) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB pixels N×3, alpha weights N or None) of a PIL image reduced to at most ``side``."""
    from PIL import Image

    im = image.copy()
    im.thumbnail((side, side), Image.Resampling.BOX)
    if im.mode in ("RGBA", "LA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64).reshape(-1, 4)
        return rgba[:, :3], rgba[:, 3] / 255.0
    return np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3), None


def palette_report(image, palette: list[str], threshold: float = PASS_DELTA_E) -> dict:
    """The compliance report of one image against the requested ``#RRGGBB`` colours.

    * ``dominant``: each dominant colour (hex, share of the pixels), the nearest requested
      colour and its CIEDE2000 distance, ``passes`` when that is ≤ ``threshold``;
    * ``requested``: each requested colour, its name, the nearest dominant colour and ΔE,
      ``passes`` when some dominant colour is that close (the colour shows up);
    * ``compliant_share``: the share of pixels in passing dominant colours;
    * ``passes``: every requested colour shows up;
    * ``score`` (0–1, higher is better; what ``palette_strict`` ranks seeds by): the mean of the
      share of requested colours that show up and ``compliant_share``.
    """
    pixels, weights = sample(image)
    dom = dominant_colours(pixels, weights)
    want = np.array([hex_to_rgb(h) for h in palette], dtype=np.float64)
    want_lab = srgb_to_lab(want)
    dom_lab = np.array([d.lab for d in dom]) if dom else np.zeros((0, 3))
    de = ciede2000(dom_lab[:, None, :], want_lab[None, :, :]) if dom else np.zeros((0, len(palette)))
    dominant = []
    for i, d in enumerate(dom):
        j = int(np.argmin(de[i]))
        dominant.append({"hex": d.hex, "share": round(d.share, 4), "nearest": palette[j],
                         "delta_e": round(float(de[i, j]), 2), "passes": bool(de[i, j] <= threshold)})
    requested = []
    for j, code in enumerate(palette):
        if dom:
            i = int(np.argmin(de[:, j]))
            near, dist = dom[i].hex, float(de[i, j])
        else:
            near, dist = None, float("inf")
        requested.append({"hex": code, "name": colour_name(code), "nearest_dominant": near,
                          "delta_e": round(dist, 2) if dom else None, "passes": bool(dist <= threshold)})
    compliant = float(sum(d["share"] for d in dominant if d["passes"]))
    shown = sum(r["passes"] for r in requested) / len(requested)
    return {"threshold": threshold, "dominant": dominant, "requested": requested,
            "compliant_share": round(compliant, 4), "passes": all(r["passes"] for r in requested),
            "score": round((shown + compliant) / 2, 4)}
