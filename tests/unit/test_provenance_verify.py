"""verify(): Valid/Trusted for signed images, not ok for tampered or unsigned ones."""
from __future__ import annotations

import io

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.errors import InvalidRequest
from provenance.c2pa_sign import DIGITAL_SOURCE_TYPE, ImageSigner
from provenance.cli import verify as verify_cmd
from provenance.devkeys import init_dev_keys
from provenance.synthetic import encode, structured
from provenance.verify import verify

INFO = {"job_id": "job-9", "batch_id": "batch-9", "model": "tiny", "seed": 1, "params": {}}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return init_dev_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signed_png(keys) -> bytes:
    signer = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    data = signer.sign(encode(structured(3, 96)), "png", INFO)
    signer.close()
    return data


def test_signed_image_verifies_valid_with_job_and_signer(signed_png):
    report = verify(signed_png)
    assert report.ok and report.state == "Valid"
    assert report.generator.startswith("batchrender/")
    assert report.action == "c2pa.created" and report.digital_source_type == DIGITAL_SOURCE_TYPE
    assert report.job_id == "job-9" and report.batch_id == "batch-9"
    assert report.signer_subject == "batchrender dev signer" and report.signer_issuer


def test_signed_image_is_trusted_with_the_dev_ca(signed_png, keys):
    assert verify(signed_png, keys.ca_cert.read_text()).state == "Trusted"


def test_one_changed_pixel_byte_fails_verification(signed_png):
    # Flip a byte in the middle of the image data (the IDAT chunk), not the manifest.
    idat = signed_png.index(b"IDAT") + 40
    tampered = signed_png[:idat] + bytes([signed_png[idat] ^ 0xFF]) + signed_png[idat + 1:]
    report = verify(tampered)
    assert not report.ok and report.state == "Invalid"
    assert any("mismatch" in e for e in report.errors)


def test_resaved_image_has_no_manifest(signed_png):
    buf = io.BytesIO()
    Image.open(io.BytesIO(signed_png)).save(buf, "PNG")
    report = verify(buf.getvalue())
    assert report.state is None and not report.ok
    assert "no C2PA manifest" in report.summary()


def test_verify_command_exit_codes(signed_png, keys, tmp_path):
    good, bare = tmp_path / "good.png", tmp_path / "bare.png"
    good.write_bytes(signed_png)
    bare.write_bytes(encode(structured(4, 32)))
    runner = CliRunner()
    ok = runner.invoke(verify_cmd, [str(good), "--trust", str(keys.ca_cert)])
    assert ok.exit_code == 0 and "Trusted" in ok.output and "job-9" in ok.output
    missing = runner.invoke(verify_cmd, [str(bare)])
    assert missing.exit_code == 1 and "no C2PA manifest" in missing.output


def test_verify_on_a_file_that_is_not_an_image_is_a_clear_error_not_a_traceback(tmp_path):
    """Exit 2 (bad input, README's exit codes) naming the formats, through the real CLI entry."""
    from producer.cli import cli

    text, gif, missing = tmp_path / "notes.png", tmp_path / "a.gif", tmp_path / "gone.png"
    text.write_text("hello, not an image")
    Image.new("RGB", (8, 8)).save(gif)
    for path in (text, gif):
        res = CliRunner().invoke(cli, ["verify", str(path)])
        assert isinstance(res.exception, SystemExit) and res.exit_code == 2, (res.output, res.exception)
        assert "is not a PNG, JPEG or WebP image" in res.stderr and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["verify", str(missing)])
    assert res.exit_code == 2 and "cannot read" in res.stderr
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG or WebP"):
        verify(b"GIF89a" + bytes(32))


def test_a_refinement_verifies_naming_its_parent_job(signed_png, keys):
    from provenance.c2pa_sign import ParentImage

    signer = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    child = signer.sign(encode(structured(4, 96)), "png", {**INFO, "job_id": "job-10"},
                        parent=ParentImage(signed_png, "job-9-0.png", "job-9", 0, 1))
    signer.close()
    report = verify(child, keys.ca_cert.read_text())
    assert report.state == "Trusted" and report.job_id == "job-10" and report.parent_job_id == "job-9"
    assert report.action == "c2pa.opened" and report.digital_source_type == DIGITAL_SOURCE_TYPE
    assert "refines job  job-9" in report.summary()
    assert verify(signed_png).parent_job_id is None
