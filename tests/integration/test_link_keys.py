"""Signed links against someone who can read Redis (issue 26): the link key is not there, and a
link whose expiry lies beyond ``BATCHRENDER_LINK_MAX_TTL_S`` is refused even with a good MAC.
In process (TestClient) against real Redis, no worker: a queued batch's signed gallery link."""
from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlparse

import pytest
import redis

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(tmp_path, redis_url, settings_for):
    from fastapi.testclient import TestClient

    from producer.api import create_app

    env = {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
           "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_STORAGE_SHARED": "1", **TEST_KEYS}
    with TestClient(create_app(settings_for(env)), raise_server_exceptions=False) as c:
        yield c
        c.app.state.client.close()


@pytest.fixture
def gallery(api, tenants) -> str:
    """The signed gallery URL of a freshly queued batch (path and query)."""
    headers = {"Authorization": f"Bearer {tenants.create('alice').api_key}"}
    r = api.post("/v1/batches", headers=headers, json={"requests": [{"prompt": "a cat", "custom_id": "c1"}]})
    assert r.status_code in (200, 201, 202), r.text
    url = urlparse(r.json()["gallery_url"])
    return url.path + "?" + url.query


def _everything_in(r: redis.Redis) -> set[bytes]:
    """Every value Redis holds as a string, or in a hash, list or set: what a reader of Redis has."""
    found: set[bytes] = set()
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"string":
            found.add(r.get(key))
        elif kind == b"hash":
            found.update(r.hvals(key))
        elif kind == b"list":
            found.update(r.lrange(key, 0, -1))
        elif kind == b"set":
            found.update(r.smembers(key))
    return {v for v in found if v and len(v) >= 16}


def test_a_link_forged_with_anything_read_from_redis_is_refused(api, gallery, redis_url):
    """Before: ``br:url-signing-key`` held the key; a link signed with it opened the gallery (200)."""
    assert api.get(gallery).status_code == 200, "the genuine link works"
    path = urlparse(gallery).path
    expires = int(time.time()) + 600
    candidates = _everything_in(redis.Redis.from_url(redis_url))
    assert candidates, "Redis holds the batch's records"
    opened = []
    for value in candidates:
        signature = hmac.new(value, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()
        r = api.get(path, params={"expires": expires, "signature": signature})
        if r.status_code != 403:
            opened.append((value[:40], r.status_code))
        else:
            assert r.json()["error"]["code"] == "link_expired"
    assert not opened, f"a key read from Redis signs links: {opened}"


def test_a_link_valid_until_2100_is_refused_though_its_mac_verifies(api, gallery):
    """Before: any expiry was honoured, so one signature opened the gallery until 2100."""
    links = api.app.state.client.links
    path = urlparse(gallery).path
    y2100 = 4102444800
    r = api.get(path, params={"expires": y2100, "signature": links._mac(path, y2100)})
    assert r.status_code == 403, r.text
    assert "BATCHRENDER_LINK_MAX_TTL_S" in r.json()["error"]["message"]
    week = int(time.time()) + 7 * 24 * 3600 - 60  # within the default cap: still honoured
    assert api.get(path, params={"expires": week, "signature": links._mac(path, week)}).status_code == 200
    q = parse_qs(urlparse(gallery).query)
    assert int(q["expires"][0]) <= time.time() + 3600, "links are signed for presign_expiry_s (1 h)"
