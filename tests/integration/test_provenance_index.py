""""Did we make this?" against both index backends (SQLite file, real Redis)."""
from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.settings import Settings
from provenance.c2pa_sign import ImageSigner
from provenance.cli import provenance as provenance_cmd
from provenance.devkeys import init_dev_keys
from provenance.index import ProvenanceIndex, open_provenance_index
from provenance.index_redis import RedisProvenanceIndex
from provenance.index_sqlite import SQLiteProvenanceIndex
from provenance.phash import center_crop
from provenance.synthetic import encode, noise_render, structured

GENERATORS = {"noise": noise_render, "structured": structured}


@pytest.fixture(params=["sqlite", "redis"])
def index(request, tmp_path) -> ProvenanceIndex:
    if request.param == "sqlite":
        idx: ProvenanceIndex = open_provenance_index(Settings(home=tmp_path))
        assert isinstance(idx, SQLiteProvenanceIndex)
    else:
        url = request.getfixturevalue("redis_url")
        idx = open_provenance_index(Settings(home=tmp_path, redis_url=url))
        assert isinstance(idx, RedisProvenanceIndex)
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    keys = init_dev_keys(tmp_path_factory.mktemp("keys"))
    s = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    yield s
    s.close()


def deliver(index: ProvenanceIndex, signer: ImageSigner, kind: str, n: int = 6) -> list[bytes]:
    """Sign and record ``n`` renders the way the worker does; return the delivered bytes."""
    out = []
    for i in range(n):
        raw = encode(GENERATORS[kind](100 + i, 384))
        info = {"job_id": f"job-{kind}-{i}", "batch_id": f"batch-{kind}", "model": "tiny", "seed": i}
        signed = signer.sign(raw, "png", info)
        index.add(signed, job_id=info["job_id"], batch_id=info["batch_id"], key=f"b/{info['job_id']}/0.png")
        out.append(signed)
    return out


def jpeg(im: Image.Image, quality: int) -> bytes:
    return encode(im, "JPEG", quality=quality)


@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_exact_file_is_found_by_sha256(index, signer, kind):
    delivered = deliver(index, signer, kind)
    match = index.lookup(delivered[2])
    assert match is not None and match.exact and match.job_id == f"job-{kind}-2"
    assert match.distance == 0 and match.confidence == 1.0 and match.key == f"b/job-{kind}-2/0.png"


@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_copy_with_manifest_stripped_is_found(index, signer, kind):
    delivered = deliver(index, signer, kind)
    stripped = encode(Image.open(io.BytesIO(delivered[3])))
    match = index.lookup(stripped)
    assert match is not None and not match.exact and match.job_id == f"job-{kind}-3" and match.distance <= 1


@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_one_third_size_jpeg_q60_copy_is_found(index, signer, kind):
    delivered = deliver(index, signer, kind)
    im = Image.open(io.BytesIO(delivered[1]))
    small = im.resize((im.width // 3, im.height // 3), Image.Resampling.LANCZOS)
    match = index.lookup(jpeg(small, 60))
    assert match is not None and match.job_id == f"job-{kind}-1"
    assert match.confidence > 0.5


@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_copy_cropped_five_percent_each_side_is_found(index, signer, kind):
    delivered = deliver(index, signer, kind)
    for i, data in enumerate(delivered):
        cropped = center_crop(Image.open(io.BytesIO(data)), 0.05)
        match = index.lookup(jpeg(cropped, 90))
        assert match is not None and match.job_id == f"job-{kind}-{i}", (i, match)


@pytest.mark.parametrize("kind", ["noise", "structured"])
def test_unrelated_images_are_no_match(index, signer, kind):
    deliver(index, signer, kind)
    for seed in range(5000, 5030):
        assert index.lookup(encode(GENERATORS[kind](seed, 384))) is None


def test_retried_delivery_of_the_same_bytes_is_recorded_once(index, signer):
    delivered = deliver(index, signer, "noise", n=2)
    index.add(delivered[0], job_id="job-noise-0", batch_id="batch-noise", key="b/x.png")
    assert index.count() == 2


def test_provenance_command_prints_job_or_no_match(tmp_path, signer):
    idx = open_provenance_index(Settings(home=tmp_path))
    signed = deliver(idx, signer, "structured", n=1)[0]
    idx.close()
    (tmp_path / "found.png").write_bytes(signed)
    (tmp_path / "other.png").write_bytes(encode(structured(9999, 128)))
    runner = CliRunner()
    env = {"BATCHRENDER_HOME": str(tmp_path), "BATCHRENDER_PROVENANCE_INDEX": "sqlite"}
    hit = runner.invoke(provenance_cmd, [str(tmp_path / "found.png")], env=env)
    assert hit.exit_code == 0 and "job-structured-0" in hit.output and "confidence" in hit.output
    miss = runner.invoke(provenance_cmd, [str(tmp_path / "other.png")], env=env)
    assert miss.exit_code == 1 and "no match" in miss.output
