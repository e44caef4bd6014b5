"""A real worker renders into S3 (moto over HTTP) and every object carries valid Content Credentials.

Round trips only: the stored bytes are fetched through the presigned URL in the job result and read
back with ``c2pa.Reader``; the CLI's ``verify`` runs on the very same bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(240)

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture
def s3_env(br_env, s3_endpoint, settings_for):
    """br_env with S3 storage in a fresh bucket under the ``renders`` prefix."""
    from storage.s3 import S3Storage

    env = {
        **br_env,
        "BATCHRENDER_STORAGE_URL": f"s3://c2pa-{uuid.uuid4().hex[:12]}/renders",
        "BATCHRENDER_S3_ENDPOINT_URL": s3_endpoint,
        "BATCHRENDER_S3_PATH_STYLE": "true",
        "BATCHRENDER_S3_ACCESS_KEY_ID": "test",
        "BATCHRENDER_S3_SECRET_ACCESS_KEY": "test",
    }
    store = S3Storage(settings_for(env))
    store.ensure_bucket()
    store.close()
    return env


@pytest.fixture
def client(s3_env, settings_for):
    from producer.client import Client

    c = Client(settings_for(s3_env))
    yield c
    c.close()


@pytest.fixture
def s3(s3_env, s3_endpoint):
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test", config=Config(s3={"addressing_style": "path"}))
    yield c
    c.close()


def read_manifest(data: bytes, mime: str, ca_pem: str | None) -> tuple[str, dict]:
    """(validation state, active manifest) straight from c2pa.Reader."""
    import c2pa

    settings: dict = {"builder": {"thumbnail": {"enabled": False}}}
    if ca_pem:
        settings["trust"] = {"trust_anchors": ca_pem}
    ctx = c2pa.Context.from_dict(settings)
    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=ctx) as reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
    finally:
        ctx.close()
    return state, store["manifests"][store["active_manifest"]]


def fetch(url: str) -> tuple[bytes, str]:
    assert url.startswith("http://"), url
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read(), resp.headers.get("Content-Type", "")


def cli_verify(target: Path, *extra: str) -> tuple[int, str]:
    from producer.cli import cli

    res = CliRunner().invoke(cli, ["verify", str(target), *extra])
    return res.exit_code, res.output


def test_worker_signs_every_format_into_s3_and_tampering_is_detected(client, s3_env, s3, start_worker, tmp_path):
    start_worker(s3_env)
    jobs = {fmt: client.submit({"prompt": f"a teapot as {fmt}", "seed": 7, "width": 64, "height": 64,
                                "steps": 2, "output_format": fmt}) for fmt in FORMATS}
    ca_file = Path(s3_env["BATCHRENDER_HOME"]) / "keys" / "ca.pem"  # the worker's dev CA, made on first use
    bucket = s3_env["BATCHRENDER_STORAGE_URL"].removeprefix("s3://").split("/")[0]

    for fmt, job in jobs.items():
        rec = client.wait(job, timeout=90)
        assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
        img = rec.result.images[0]
        assert img.c2pa == "signed" and img.key == f"single/{job}/0.{fmt}"
        ca_pem = ca_file.read_text()

        data, content_type = fetch(img.url)  # the presigned URL, over HTTP
        assert content_type == FORMATS[fmt]
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt] and im.size == (64, 64)

        state, manifest = read_manifest(data, FORMATS[fmt], None)
        assert state == "Valid", (fmt, state)
        trusted, _ = read_manifest(data, FORMATS[fmt], ca_pem)
        assert trusted == "Trusted", (fmt, trusted)
        assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
        action = next(a for label, d in assertions.items() if label.startswith("c2pa.actions")
                      for a in d["actions"])
        assert action["action"] == "c2pa.created" and action["digitalSourceType"] == TRAINED
        job_info = assertions["org.batchrender.job"]
        assert job_info["job_id"] == job and job_info["seed"] == 7 and job_info["model"] == "tiny"

        head = s3.head_object(Bucket=bucket, Key=f"renders/{img.key}")
        assert head["ContentType"] == FORMATS[fmt]
        meta = head["Metadata"]
        assert meta["job_id"] == job and meta["seed"] == "7"
        assert meta["sha256"] == img.sha256 == hashlib.sha256(data).hexdigest()

        original = tmp_path / f"orig.{fmt}"
        original.write_bytes(data)
        code, out = cli_verify(original, "--trust", str(ca_file))
        assert code == 0 and "Trusted" in out and job in out, out
        assert cli_verify(original)[0] == 0

        tampered = bytearray(data)
        tampered[_pixel_offset(data, fmt)] ^= 0x01
        bad = tmp_path / f"tampered.{fmt}"
        bad.write_bytes(bytes(tampered))
        code, out = cli_verify(bad)
        assert code == 1 and "Invalid" in out, (fmt, out)


def test_file_without_manifest_fails_verify(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(plain)
    code, out = cli_verify(plain)
    assert code == 1 and "no C2PA manifest" in out, out


def _pixel_offset(data: bytes, fmt: str) -> int:
    """A byte inside the compressed pixels (covered by the C2PA hard binding), not the manifest."""
    marker = {"png": b"IDAT", "jpeg": b"\xff\xda", "webp": b"VP8"}[fmt]
    return data.index(marker) + 40
