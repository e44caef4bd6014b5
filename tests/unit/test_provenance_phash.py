"""The numpy pHash and the multi-index band arithmetic."""
from __future__ import annotations

import io
from itertools import combinations

import numpy as np
from PIL import Image

from provenance.index import BANDS, band_values, neighbours, popcount64
from provenance.phash import center_crop, from_signed, hamming, index_hashes, phash, to_signed
from provenance.synthetic import encode, noise_render, structured


def test_phash_matches_imagehash_reference_algorithm():
    # Reference: imagehash.phash = scipy dct on axis 0 then 1 of the 32x32 LANCZOS grayscale.
    im = structured(1, 200)
    pixels = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    n = np.arange(32)
    basis = np.cos(np.pi * n.reshape(-1, 1) * (2 * n + 1) / 64)
    dct = 2 * basis @ pixels @ (2 * basis).T
    low = dct[:8, :8]
    bits = "".join("1" if b else "0" for b in (low > np.median(low)).flatten())
    assert phash(im) == int(bits, 2)


def test_reencoded_and_resized_copies_stay_close_unrelated_images_far():
    for gen in (noise_render, structured):
        im = gen(5, 384)
        small = im.resize((128, 128), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=60)
        assert hamming(phash(im), phash(Image.open(buf))) <= 4
        assert hamming(phash(im), phash(gen(6, 384))) > 12


def test_five_percent_crop_is_close_to_an_indexed_crop_variant_not_to_the_original():
    far, near = [], []
    for seed in range(8):
        im = noise_render(seed, 384)
        q = phash(center_crop(im, 0.05))
        far.append(hamming(q, phash(im)))
        near.append(min(hamming(q, h) for h in index_hashes(im)))
    assert max(near) <= 4 and np.mean(far) > 8


def test_signed_round_trip_keeps_hash_bits():
    for h in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        assert from_signed(to_signed(h)) == h and -(1 << 63) <= to_signed(h) < 1 << 63


def test_any_hash_within_threshold_shares_a_probed_band_value():
    rng = np.random.default_rng(0)
    radius = 6 // BANDS
    for _ in range(200):
        h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=6, replace=False)
        other = h
        for f in flips:
            other ^= 1 << int(f)
        probes = [set(neighbours(v, radius)) for v in band_values(h)]
        assert any(v in probes[b] for b, v in enumerate(band_values(other)))


def test_neighbours_enumerates_all_values_within_radius():
    assert len(neighbours(0, 2)) == 1 + 16 + len(list(combinations(range(16), 2)))


def test_popcount64_counts_bits():
    arr = np.array([0, 1, 3, (1 << 64) - 1], dtype=np.uint64)
    assert popcount64(arr).tolist() == [0, 1, 2, 64]


def test_encode_produces_decodable_bytes():
    assert Image.open(io.BytesIO(encode(noise_render(0, 64), "WEBP"))).size == (64, 64)
