"""S3 backend against a real S3 HTTP endpoint (moto server) through boto3.

moto does not enforce credentials, checksums or presigned-URL expiry, so nothing here relies on
those. Retries are proven with a real fault-injecting HTTP proxy on loopback.
"""
from __future__ import annotations

import base64
import hashlib
import os
import urllib.request
import uuid

import pytest

from jobs.errors import StorageError, UnsafeKey
from jobs.settings import Settings
from storage import open_storage
from storage.s3 import S3Storage
from tests.faults import FaultProxy

MiB = 1024 * 1024


def make_settings(endpoint: str, bucket: str, **kw) -> Settings:
    base = dict(
        storage_url=f"s3://{bucket}/renders", s3_endpoint_url=endpoint, s3_path_style=True,
        s3_access_key_id="test", s3_secret_access_key="test", s3_max_attempts=5,
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    store = S3Storage(make_settings(s3_endpoint, name))
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.close()
    return name


@pytest.fixture
def store(s3_endpoint, bucket):
    s = open_storage(make_settings(s3_endpoint, bucket))
    assert isinstance(s, S3Storage)
    yield s
    s.close()


META = {"job_id": "j1", "batch_id": "b1", "model": "tiny", "seed": "42"}


def test_put_sets_content_type_metadata_and_sha256_checksum(store):
    data = os.urandom(1000)
    obj = store.put("b1/j1/0.png", data, content_type="image/png", metadata=META)
    assert obj.uri == f"s3://{store.bucket}/renders/b1/j1/0.png"
    assert store.get("b1/j1/0.png") == data
    head = store.client.head_object(Bucket=store.bucket, Key="renders/b1/j1/0.png", ChecksumMode="ENABLED")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {**META, "sha256": hashlib.sha256(data).hexdigest()}
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_object_over_threshold_is_uploaded_multipart(s3_endpoint, bucket):
    store = S3Storage(make_settings(s3_endpoint, bucket, s3_multipart_threshold=5 * MiB))
    data = os.urandom(12 * MiB)
    store.put("b/j/big.png", data, content_type="image/png", metadata=META)
    head = store.client.head_object(Bucket=bucket, Key="renders/b/j/big.png")
    # A multipart ETag is "<md5 of part md5s>-<parts>".
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"]["job_id"] == "j1"
    assert store.get("b/j/big.png") == data
    store.close()


def test_presigned_url_fetched_over_http_returns_the_bytes(store):
    store.put("b/j/0.png", b"pixels", content_type="image/png")
    url = store.url_for("b/j/0.png")
    assert "X-Amz-Signature" in url and "X-Amz-Expires=3600" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"pixels"


def test_quarantined_object_is_stored_but_never_presigned(store):
    obj = store.quarantine("b/j/0.png", b"held", content_type="image/png", metadata=META)
    assert obj.key == "_quarantine/b/j/0.png" and store.exists(obj.key)
    with pytest.raises(UnsafeKey, match="quarantined"):
        store.url_for(obj.key)


def test_missing_object_is_key_error_and_exists_false(store):
    assert not store.exists("b/j/missing.png")
    with pytest.raises(KeyError):
        store.get("b/j/missing.png")
    store.put("b/j/x.png", b"x", content_type="image/png")
    store.delete("b/j/x.png")
    assert not store.exists("b/j/x.png")


def test_unsafe_key_is_refused_before_any_request(store):
    with pytest.raises(UnsafeKey):
        store.put("../../other-bucket/x", b"x", content_type="image/png")


def test_client_is_created_lazily(s3_endpoint, bucket):
    store = S3Storage(make_settings(s3_endpoint, bucket))
    assert store._client is None


# -- fault injection: tests/faults.py -------------------------------------------------------
@pytest.mark.parametrize("mode", ["503", "reset"])
def test_transient_failures_are_retried_until_the_upload_succeeds(s3_endpoint, bucket, mode):
    with FaultProxy(s3_endpoint, failures=2, mode=mode) as proxy:
        store = S3Storage(make_settings(proxy.url, bucket, s3_max_attempts=5))
        store.put("b/j/0.png", b"retried", content_type="image/png", metadata=META)
        assert proxy.requests == 3  # two injected failures, then the real PUT
        store.close()
    direct = S3Storage(make_settings(s3_endpoint, bucket))
    assert direct.get("b/j/0.png") == b"retried"
    direct.close()


def test_permanently_failing_endpoint_raises_storage_error_after_max_attempts(s3_endpoint, bucket):
    with FaultProxy(s3_endpoint, failures=10**6) as proxy:
        store = S3Storage(make_settings(proxy.url, bucket, s3_max_attempts=3))
        with pytest.raises(StorageError) as e:
            store.put("b/j/0.png", b"x", content_type="image/png")
        assert proxy.requests == 3
        assert e.value.code == "storage_unavailable" and e.value.details["status"] == 503
        store.close()


def test_stream_reads_the_object_in_chunks_and_missing_is_key_error(store):
    data = os.urandom(300_000)
    store.put("j/big.png", data, content_type="image/png")
    size, chunks = store.stream("j/big.png", chunk_size=65536)
    parts = list(chunks)
    assert size == len(data) and b"".join(parts) == data and max(map(len, parts)) <= 65536 and len(parts) >= 5
    _, unread = store.stream("j/big.png")
    assert next(unread) and unread.close() is None  # dropped half-way: its connection is given back
    with pytest.raises(KeyError):
        store.stream("j/missing.png")


@pytest.mark.parametrize("size", [1000, 12 * MiB])
def test_put_file_uploads_from_the_file_whole_or_multipart(s3_endpoint, bucket, size):
    import io

    store = S3Storage(make_settings(s3_endpoint, bucket, s3_multipart_threshold=5 * MiB))
    data = os.urandom(size)
    fh = io.BytesIO(data)
    fh.seek(size // 2)
    obj = store.put_file("b/j/out.jsonl", fh, content_type="application/jsonl", metadata=META)
    assert obj.size == size and obj.sha256 == hashlib.sha256(data).hexdigest()
    head = store.client.head_object(Bucket=bucket, Key="renders/b/j/out.jsonl")
    assert head["ContentType"] == "application/jsonl" and head["Metadata"]["sha256"] == obj.sha256
    assert head["ETag"].strip('"').endswith("-3") == (size > 5 * MiB)
    assert store.get("b/j/out.jsonl") == data
    store.close()
