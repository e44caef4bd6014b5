"""Several reference images per job (``references``, up to 4): read by the model's IP-Adapter when
its directory has one (a tiny random-weight adapter built offline, loaded by diffusers'
``load_ip_adapter``), else the first is the image-to-image reference; each checked by the
input-image stage; bad input named. Real worker, real Redis."""
from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from jobs.errors import InvalidRequest
from jobs.registry import ModelSpec, Registry

pytestmark = pytest.mark.timeout(300)
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 11}


def data_uri(seed: int, size: int = 64) -> str:
    pixels = (np.random.RandomState(seed).rand(size, size, 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def ip_model_dir(tmp_path_factory, tiny_model_dir):
    from worker.tiny import add_tiny_ip_adapter

    target = tmp_path_factory.mktemp("ipmodel") / "tinyip"
    shutil.copytree(tiny_model_dir, target)
    add_tiny_ip_adapter(target)
    return target


def pixels(client, job_id: str) -> np.ndarray:
    rec = client.status(job_id)
    assert rec.status.value == "succeeded", rec.error
    return np.asarray(Image.open(io.BytesIO(client.storage.get(rec.result.images[0].key))).convert("RGB"), dtype=int)


def test_an_ip_adapter_reads_every_reference(br_env, client, settings_for, start_worker, ip_model_dir):
    from click.testing import CliRunner

    from producer.cli import cli

    added = CliRunner().invoke(cli, ["models", "add", "tinyip", str(ip_model_dir), "--steps", "2", "--base-size",
                                     "64"], env=br_env)
    assert added.exit_code == 0, added.output
    assert Registry(settings_for(br_env)).get("tinyip").ip_adapter, "models add finds the adapter"
    start_worker(br_env, queues="render.tinyip")
    base = {"model": "tinyip", "prompt": "a vase", **SMALL}
    two = client.submit({**base, "references": [data_uri(1), data_uri(2)]})
    other = client.submit({**base, "references": [data_uri(3), data_uri(4)]})
    none = client.submit(base)
    for j in (two, other, none):
        client.wait(j, timeout=180)
    assert client.status(two).result.references == {"given": 2, "used": 2, "method": "ip_adapter"}
    a, b, c = pixels(client, two), pixels(client, other), pixels(client, none)
    assert np.abs(a - b).mean() > 0, "the references condition the render"
    assert np.abs(a - c).mean() > 0
    # The references are the job's own uploads, kept privately like any reference image.
    msg = client.store.message(two)
    assert msg.reference_keys == [f"_inputs/{two}.ref0", f"_inputs/{two}.ref1"] and msg.request.references is None
    assert client.storage.exists(msg.reference_keys[1])


def test_without_an_ip_adapter_the_first_reference_is_the_image_to_image_reference(br_env, client, start_worker):
    start_worker(br_env)
    base = {"prompt": "a vase", **SMALL}
    refs = client.submit({**base, "references": [data_uri(5), data_uri(6), data_uri(7)]})
    image = client.submit({**base, "image": data_uri(5)})
    for j in (refs, image):
        client.wait(j, timeout=180)
    assert client.status(refs).result.references == {"given": 3, "used": 1, "method": "image_to_image"}
    assert np.array_equal(pixels(client, refs), pixels(client, image)), "the same render as image=<first>"


def test_bad_references_are_refused_by_name(client):
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a vase", **SMALL, "references": [data_uri(i) for i in range(5)]})
    assert "references" in str(e.value) and "4" in str(e.value)
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a vase", **SMALL, "references": ["file:///etc/passwd"]})
    assert "reference 0" in str(e.value)
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a vase", **SMALL, "image": data_uri(1), "references": [data_uri(2)]})
    assert "references" in str(e.value) and "not both" in str(e.value)
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    with pytest.raises(InvalidRequest) as e:
        client.submit({"prompt": "a vase", **SMALL, "references": [garbage]})
    assert "references[0]" in str(e.value)


def test_models_add_without_an_adapter_records_none(br_env, settings_for, tiny_model_dir):
    from click.testing import CliRunner

    from producer.cli import cli

    added = CliRunner().invoke(cli, ["models", "add", "plain", str(tiny_model_dir)], env=br_env)
    assert added.exit_code == 0, added.output
    spec = Registry(settings_for(br_env)).get("plain")
    assert isinstance(spec, ModelSpec) and not spec.ip_adapter
