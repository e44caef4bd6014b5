"""Files under a quota and a retention time (issue 26: "the files API has no quota and no
retention: bytes never pruned, orphaned when the record expires"). Real Redis, local storage, the
API under uvicorn and the real ``openai`` SDK for the OpenAI-shaped refusal; no worker."""
from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import require
from tests.integration.test_api_http_client import ApiServer

pytestmark = pytest.mark.timeout(120)
try:
    import openai
except ImportError:  # a test dependency: skipped locally when missing, a failure under CI
    openai = None

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "a cat"}}\n'


def _files_dir(env: dict[str, str]) -> Path:
    return Path(env["BATCHRENDER_STORAGE_URL"].removeprefix("file://")) / "_files"


def _stored(env: dict[str, str]) -> list[str]:
    """The files whose bytes are in local storage (each has a metadata file ``<id>.json`` beside it)."""
    on_disk = _files_dir(env)  # gone once its last file is deleted
    return sorted(p.name for p in on_disk.iterdir() if not p.name.endswith(".json")) if on_disk.exists() else []


@pytest.fixture
def server(br_env, settings_for):
    from producer.api import create_app

    env = {**br_env, "BATCHRENDER_FILES_MAX_PER_TENANT": "2", "BATCHRENDER_FILES_MAX_BYTES_PER_TENANT": "1000"}
    app = create_app(settings_for(env, api_rate_per_s=1000, api_burst=1000))
    with ApiServer(app) as s:
        yield s
        app.state.client.close()


def _upload(api: httpx.Client, tenant, data: bytes, name: str = "in.jsonl") -> httpx.Response:
    return api.post("/v1/files", headers={"Authorization": f"Bearer {tenant.api_key}"},
                    files={"file": (name, data)}, data={"purpose": "batch"})


def test_uploads_past_the_count_quota_are_refused_naming_the_quota_and_the_usage(server, tenants):
    """Before: every upload was stored (no quota)."""
    require(openai is not None, "the openai package (pip install -e '.[test]')")
    alice, bob = tenants.create("alice"), tenants.create("bob")
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=alice.api_key)
    first = sdk.files.create(file=("a.jsonl", LINE), purpose="batch")
    sdk.files.create(file=("b.jsonl", LINE), purpose="batch")
    with pytest.raises(openai.RateLimitError) as e:
        sdk.files.create(file=("c.jsonl", LINE), purpose="batch")
    body = e.value.body
    assert e.value.status_code == 429 and body["code"] == "file_quota_exceeded" and body["param"] == "file"
    assert "holds 2 files" in body["message"] and "BATCHRENDER_FILES_MAX_PER_TENANT = 2" in body["message"]
    assert e.value.response.headers["x-should-retry"] == "false" and "retry-after" not in e.value.response.headers
    with httpx.Client(base_url=server.url, timeout=30) as api:
        assert _upload(api, bob, LINE).status_code == 200, "another tenant's quota is its own"
        sdk.files.delete(first.id)
        again = _upload(api, alice, LINE)
        assert again.status_code == 200, "a deleted file gives its place back"
        assert again.json()["expires_at"] == again.json()["created_at"] + 30 * 24 * 3600, "retention_s after"


def test_uploads_past_the_byte_quota_are_refused_before_their_bytes_are_stored(server, tenants, br_env):
    alice = tenants.create("alice")
    with httpx.Client(base_url=server.url, timeout=30) as api:
        assert _upload(api, alice, b"x" * 600, "a.csv").status_code == 200
        r = _upload(api, alice, b"y" * 600, "b.csv")
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "file_quota_exceeded" and err["type"] == "rate_limit_error"
    assert "600 bytes" in err["message"] and "BATCHRENDER_FILES_MAX_BYTES_PER_TENANT = 1000" in err["message"]
    assert len(_stored(br_env)) == 1, "the refused file's bytes were never stored"


def test_concurrent_uploads_cannot_race_past_the_quota(client, settings_for, br_env):
    from producer.files import Files
    from jobs.errors import StorageQuotaExceeded

    client.settings = settings_for(br_env, files_max_per_tenant=5, files_max_bytes_per_tenant=0)
    files, got, refused = Files(client), [], []
    barrier = threading.Barrier(20)

    def upload(i: int) -> None:
        barrier.wait()
        try:
            got.append(files.create("ten_race", f"{i}.jsonl", "batch", LINE))
        except StorageQuotaExceeded:
            refused.append(i)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(got), len(refused)) == (5, 15)
    assert files.store.usage("ten_race") == (5, 5 * len(LINE))
    # A finished batch's output file counts, but is never refused: the batch ran.
    files.create("ten_race", "out.jsonl", "batch_output", LINE, file_id="file-bat_x-output")
    assert files.store.usage("ten_race") == (6, 6 * len(LINE))


def test_retention_deletes_files_bytes_also_when_their_record_expired(client, br_env):
    """Before: prune never looked at files; a record's Redis expiry left its bytes behind for good."""
    from producer.files import Files, file_key

    files = Files(client)
    kept = files.create("ten_a", "kept.jsonl", "batch", LINE)
    expired = files.create("ten_a", "expired.jsonl", "batch", LINE)
    client.store.r.delete(file_key(expired.id))  # as Redis does record_ttl_s after creation
    assert _stored(br_env) == sorted([kept.id, expired.id])

    assert client.prune(3600)["files"] == 0, "younger than the retention time: kept"
    counts = client.prune(0)
    assert counts["files"] == 2
    on_disk = _files_dir(br_env)
    assert not on_disk.exists() or list(on_disk.iterdir()) == [], "both files' bytes (and metadata) are gone"
    assert not files.exists(kept.id) and files.store.usage("ten_a") == (0, 0)
    assert client.prune(0)["files"] == 0, "nothing left to prune"


def test_files_recorded_before_the_index_existed_are_found_by_the_first_sweep(client, br_env):
    """A deployment upgraded with files on it: their records (no index entries) are adopted once,
    counted, and pruned like the rest."""
    from dataclasses import asdict

    from producer.files import Files, FileRecord, file_key
    from storage.files import INDEXED_MARK

    old = FileRecord("file-from-before", "ten_old", "old.jsonl", "batch", len(LINE), 1.0)
    client.storage.put(old.storage_key, LINE, content_type=old.content_type)
    client.store.r.hset(file_key(old.id), mapping={k: str(v) for k, v in asdict(old).items()})
    assert client.prune(0)["files"] == 1 and client.store.r.exists(INDEXED_MARK)
    assert not Files(client).exists(old.id) and _stored(br_env) == []
    assert Files(client).store.usage("ten_old") == (0, 0)
