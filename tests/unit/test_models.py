"""The VAE slicing/tiling decision (worker/models.py ``vae_plan``): pure arithmetic, no model."""
from __future__ import annotations

import pytest

from jobs.registry import ModelSpec
from worker.models import VAE_DECODE_BYTES_PER_PIXEL, VAE_MEMORY_HEADROOM, shape_buckets, vae_decode_bytes, vae_plan

GB = 1024 ** 3


def test_a_call_that_fits_decodes_without_slicing_or_tiling():
    # SD 1.5, 32 images of 512² in bf16 on a card with 100 GB free: no reason to cut the decode up.
    assert vae_plan(512, 512, 32, 100 * GB, 2) == (False, False)


def test_unknown_free_memory_counts_as_plenty():
    assert vae_plan(1024, 1024, 64, None, 4) == (False, False)


def test_a_batch_that_does_not_fit_is_sliced_but_one_image_is_not_tiled():
    one = vae_decode_bytes(512 * 512, 1, 2)
    free = int(one * 4 / VAE_MEMORY_HEADROOM)  # room for four images at once
    assert vae_plan(512, 512, 4, free, 2) == (False, False)
    assert vae_plan(512, 512, 5, free, 2) == (True, False)


def test_free_memory_never_turns_tiling_on_it_would_change_the_image_visibly(caplog):
    free = vae_decode_bytes(512 * 512, 1, 4)  # under one 1024² image
    assert vae_plan(1024, 1024, 1, free, 4, tile_pixels=512 * 512) == (False, False)
    assert "BATCHRENDER_VAE_TILING_ABOVE_PIXELS" in caplog.text, "but the operator is told how to tile"
    assert vae_plan(1024, 1024, 2, free, 4, tile_pixels=512 * 512) == (True, False)


def test_a_batch_of_tiles_that_does_not_fit_is_sliced():
    free = vae_decode_bytes(512 * 512, 1, 4)  # one 512² tile at a time
    assert vae_plan(1024, 1024, 1, free, 4, tile_pixels=512 * 512, tiling_above=1024 * 1024) == (False, True)
    assert vae_plan(1024, 1024, 2, free, 4, tile_pixels=512 * 512, tiling_above=1024 * 1024) == (True, True)


def test_the_tiling_threshold_forces_tiling_whatever_the_free_memory():
    assert vae_plan(1536, 1536, 1, 1000 * GB, 2, tiling_above=1536 * 1536) == (False, True)
    assert vae_plan(1536, 1528, 1, 1000 * GB, 2, tiling_above=1536 * 1536) == (False, False)


def test_always_and_never_override_the_slicing_decision():
    assert vae_plan(512, 512, 8, 100 * GB, 2, slicing="always") == (True, False)
    assert vae_plan(512, 512, 8, 1, 2, slicing="never") == (False, False)


def test_the_estimate_scales_with_pixels_rows_and_bytes_per_value():
    assert vae_decode_bytes(100, 1, 4) == 100 * VAE_DECODE_BYTES_PER_PIXEL
    assert vae_decode_bytes(100, 3, 2) == 3 * 100 * VAE_DECODE_BYTES_PER_PIXEL // 2


@pytest.mark.parametrize("family, base", [("sdxl", 1024), ("sd15", 512), ("flux", 1024), ("sd15", 64)])
def test_recompile_budget_counts_the_sizes_a_family_produces(family, base):
    # Ten aspect ratios, eight sizes: 4:5 and 3:4 land on one size, 5:4 and 4:3 on another.
    assert shape_buckets(ModelSpec(name="m", source="/x", family=family, base_size=base)) == 8
