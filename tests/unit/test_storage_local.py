"""Local disk backend: atomic overwrite, sidecar metadata, quarantine never shared."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.errors import ConfigurationError, UnsafeKey
from jobs.settings import Settings
from storage import open_storage
from storage.local import LocalStorage


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    s = open_storage(Settings(home=tmp_path, storage_url=(tmp_path / "out").as_uri()))
    assert isinstance(s, LocalStorage)
    return s


def test_put_then_get_round_trips_bytes_and_metadata(store):
    obj = store.put("b/j/0.png", b"abc", content_type="image/png", metadata={"job_id": "j"})
    assert store.get("b/j/0.png") == b"abc"
    assert obj.size == 3 and obj.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert store.head("b/j/0.png") == {"job_id": "j"}
    sidecar = json.loads((store.root / "b/j/0.png.json").read_text())
    assert sidecar["content_type"] == "image/png" and sidecar["sha256"] == obj.sha256


def test_retried_put_overwrites_without_leaving_temporaries(store):
    store.put("b/j/0.png", b"first", content_type="image/png")
    store.put("b/j/0.png", b"second", content_type="image/png")
    assert store.get("b/j/0.png") == b"second"
    assert sorted(p.name for p in (store.root / "b/j").iterdir()) == ["0.png", "0.png.json"]


def test_url_for_is_the_absolute_path(store):
    store.put("b/j/0.png", b"x", content_type="image/png")
    assert Path(store.url_for("b/j/0.png")).read_bytes() == b"x"


def test_quarantined_object_is_kept_but_never_given_a_url(store):
    obj = store.quarantine("b/j/0.png", b"bad", content_type="image/png")
    assert obj.key == "_quarantine/b/j/0.png" and store.get(obj.key) == b"bad"
    with pytest.raises(UnsafeKey, match="quarantined"):
        store.url_for(obj.key)


def test_missing_object_raises_key_error_and_delete_is_idempotent(store):
    assert not store.exists("b/j/0.png")
    with pytest.raises(KeyError):
        store.get("b/j/0.png")
    store.put("b/j/0.png", b"x", content_type="image/png")
    store.delete("b/j/0.png")
    store.delete("b/j/0.png")
    assert not store.exists("b/j/0.png")


def test_traversal_key_is_refused(store):
    with pytest.raises(UnsafeKey):
        store.put("../escape.png", b"x", content_type="image/png")


def test_default_storage_is_outputs_under_home(tmp_path):
    s = open_storage(Settings(home=tmp_path))
    assert isinstance(s, LocalStorage) and s.root == (tmp_path / "outputs").resolve()


@pytest.mark.parametrize("url", ["ftp://x/y", "file://relative/path", "gs://bucket"])
def test_unsupported_storage_url_names_the_allowed_forms(tmp_path, url):
    with pytest.raises(ConfigurationError, match="file:///absolute/path"):
        open_storage(Settings(home=tmp_path, storage_url=url))


def test_stream_gives_the_size_then_the_bytes_in_chunks_and_key_error_up_front(store):
    data = bytes(range(256)) * 1000  # 256,000 bytes: 4 chunks of 64 KiB
    store.put("j/big.png", data, content_type="image/png")
    size, chunks = store.stream("j/big.png")
    parts = list(chunks)
    assert size == len(data) and b"".join(parts) == data
    assert [len(p) for p in parts] == [65536, 65536, 65536, 59392]
    with pytest.raises(KeyError):
        store.stream("j/missing.png")


def test_put_file_copies_in_chunks_with_the_same_sidecar_as_put(store, tmp_path):
    import io
    import os

    data = os.urandom(300_000)
    fh = io.BytesIO(data)
    fh.seek(123)  # written from its start wherever it stands
    obj = store.put_file("b/j/out.jsonl", fh, content_type="application/jsonl", metadata={"tenant": "t"})
    assert store.get("b/j/out.jsonl") == data and obj.size == len(data)
    assert obj.sha256 == store.put("b/j/same", data, content_type="application/jsonl").sha256
    sidecar = json.loads((store.root / "b/j/out.jsonl.json").read_text())
    assert sidecar == {"content_type": "application/jsonl", "sha256": obj.sha256, "size": len(data),
                       "metadata": {"tenant": "t"}}
    assert sorted(p.name for p in (store.root / "b/j").iterdir()) == ["out.jsonl", "out.jsonl.json", "same",
                                                                     "same.json"]
