"""Issue 26, hostile: the decode budget was per image, so one OpenAI edit (16 images and a mask)
could cost 17 budgets (~15 CPU-seconds in the probe). Now the images of one request share a
budget of pixels (from the headers, before anything is decoded) and CPU seconds
(safety/decode.py ``request_budget``), refused with a 400 naming the limit.

Through the real API app; the CPU counted is what the decoding children used (``RUSAGE_CHILDREN``
of this process, which runs the app) plus this process's own.
"""
from __future__ import annotations

import io
import resource

import pytest
from PIL import Image


pytestmark = pytest.mark.timeout(240)


def _png(side: int, colour=(200, 40, 40, 255), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side), colour[:len(mode)]).save(buf, "PNG")
    return buf.getvalue()


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.fixture
def api(br_env, settings_for):
    from starlette.testclient import TestClient

    from producer.api import create_app

    def make(**overrides):
        settings = settings_for(br_env, api_rate_per_s=10_000, api_burst=10_000, openai_sync_timeout_s=1,
                                **overrides)
        return TestClient(create_app(settings), raise_server_exceptions=False)

    return make


def _edit(client, tenant, images: list[bytes], mask: bytes | None):
    files = [("image[]", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return client.post("/v1/images/edits", files=files, data={"prompt": "make it blue", "model": "tiny"},
                       headers={"Authorization": f"Bearer {tenant.api_key}"})


def test_sixteen_big_images_and_a_mask_are_refused_by_the_request_pixel_budget(api, tenants, capsys):
    """16 images of 1536² and a mask: 40 MP against a request budget of 16.8 MP (4 × 2048²),
    refused from the headers: next to no CPU spent decoding."""
    alice = tenants.create("alice")
    images = [_png(1536, (i * 15, 40, 40)) for i in range(16)]
    mask = _png(1536, (0, 0, 0, 0), "RGBA")
    with api() as client:
        before = _cpu()
        r = _edit(client, alice, images, mask)
        after = _cpu()
    own, children = after[0] - before[0], after[1] - before[1]
    with capsys.disabled():
        print(f"\n16 x 1536² + mask: {r.status_code}, API CPU {own:.2f} s, decoding children {children:.2f} s")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "image" and "BATCHRENDER_IMAGE_DECODE_REQUEST_PIXELS" in error["message"], error
    assert "16 images and a mask hold 40108032 pixels" in error["message"], error
    assert children < 0.5, f"decoding children used {children:.2f} s of CPU for a request refused by its headers"


def test_the_images_of_one_edit_share_one_cpu_budget(api, tenants, capsys):
    """Fifteen 1024² images (15.7 MP: within the pixel budget), each well within the per-image
    CPU budget: with a request budget of 0.5 s the decoding stops once it is spent (each decode
    costs at least a child's start-up, ~0.05-0.1 s), and the request is refused naming it."""
    alice = tenants.create("alice")
    images = [_png(1024, (i * 15, 90, 40)) for i in range(15)]
    with api(image_decode_request_cpu_s=0.5) as client:
        before = _cpu()
        r = _edit(client, alice, images, None)
        after = _cpu()
    own, children = after[0] - before[0], after[1] - before[1]
    with capsys.disabled():
        print(f"\n15 x 1024² in one edit, request budget 0.5 s: {r.status_code}, API CPU {own:.2f} s, "
              f"decoding children {children:.2f} s")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "image" and "BATCHRENDER_IMAGE_DECODE_REQUEST_CPU_S" in error["message"], error
    # The budget plus the one child that ran past it, with room for a loaded machine's accounting.
    assert children < 2.0, f"decoding children used {children:.2f} s of CPU against a request budget of 0.5 s"


def test_an_ordinary_edit_fits_the_budget(api, tenants):
    """One image and a mask of 512²: decoded (twice each: the edit's checks and the job's) well
    within the budget; the request goes on to render (no worker here: it times out, a 5xx)."""
    from safety.decode import RequestBudget

    alice = tenants.create("alice")
    with api() as client:
        r = _edit(client, alice, [_png(512)], _png(512, (0, 0, 0, 0), "RGBA"))
    assert "decode_budget" not in r.text, r.text
    budget = RequestBudget(pixels=600_000, cpu_s=4)
    data = _png(512)
    assert budget.charge_pixels(data, 512 * 512) is None and budget.charge_pixels(data, 512 * 512) is None
    assert budget.used_pixels == 512 * 512, "the same image decoded twice is counted once"
