"""verify() fetches a presigned S3 URL over HTTP and validates the image it gets back."""
from __future__ import annotations

import uuid

from jobs.settings import Settings
from provenance.c2pa_sign import ImageSigner
from provenance.devkeys import init_dev_keys
from provenance.synthetic import encode, noise_render
from provenance.verify import verify
from storage.s3 import S3Storage


def test_presigned_url_of_a_signed_upload_verifies_trusted(s3_endpoint, tmp_path):
    keys = init_dev_keys(tmp_path / "keys")
    signer = ImageSigner.from_pem(keys.cert_chain.read_bytes(), keys.private_key.read_bytes())
    signed = signer.sign(encode(noise_render(3, 64), "JPEG"), "jpeg",
                         {"job_id": "j-url", "batch_id": "b", "model": "tiny", "seed": 3})
    signer.close()
    store = S3Storage(Settings(
        home=tmp_path, storage_url=f"s3://v-{uuid.uuid4().hex[:10]}", s3_endpoint_url=s3_endpoint,
        s3_path_style=True, s3_access_key_id="t", s3_secret_access_key="t",
    ))
    store.ensure_bucket()
    store.put("b/j-url/0.jpeg", signed, content_type="image/jpeg", metadata={"job_id": "j-url"})
    report = verify(store.url_for("b/j-url/0.jpeg"), keys.ca_cert.read_text())
    store.close()
    assert report.ok and report.state == "Trusted" and report.job_id == "j-url"
    assert "X-Amz-Signature" not in report.source  # the credential part of the URL is not echoed
