"""``batchrender tenants create``: the API key is printed once and only its hash is kept."""
from __future__ import annotations

import hashlib
import json

import pytest

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(60)


def test_tenants_create_prints_the_key_once_and_stores_only_its_hash(tmp_path, redis_url):
    import redis
    from click.testing import CliRunner

    from jobs.settings import Settings
    from producer.cli import cli
    from producer.tenants import Tenants

    env = {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url, **TEST_KEYS}
    result = CliRunner().invoke(cli, ["tenants", "create", "acme"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    key, tenant_id = out["api_key"], out["tenant_id"]
    assert key.startswith("br_") and len(key) > 40 and out["name"] == "acme"
    assert "cannot be shown again" in result.stderr and key not in result.stderr

    r = redis.Redis.from_url(redis_url)
    try:
        dump = []
        for k in r.scan_iter(count=1000):
            dump.append(k)
            kind = r.type(k)
            if kind == b"string":
                dump.append(r.get(k))
            elif kind == b"hash":
                dump.extend(b for kv in r.hgetall(k).items() for b in kv)
            elif kind in (b"list",):
                dump.extend(r.lrange(k, 0, -1))
            elif kind in (b"set",):
                dump.extend(r.smembers(k))
            elif kind == b"zset":
                dump.extend(r.zrange(k, 0, -1))
        blob = b"\n".join(dump)
        assert key.encode() not in blob, "the plain API key must not be stored anywhere in Redis"
        assert out["webhook_secret"].encode() not in blob, "webhook secrets are kept encrypted"
        assert hashlib.sha256(key.encode()).hexdigest().encode() in blob
        assert Tenants(redis.Redis.from_url(redis_url, decode_responses=True), Settings()).authenticate(key) == tenant_id
    finally:
        r.close()

    # a second tenant gets another key; the first is never printed again
    again = CliRunner().invoke(cli, ["tenants", "create", "acme-2"], env=env)
    assert again.exit_code == 0 and key not in again.output


def test_keys_can_be_revoked_and_tenants_disabled(tmp_path, redis_url):
    import redis
    from click.testing import CliRunner

    from jobs.settings import Settings
    from producer.cli import cli
    from producer.tenants import Tenants

    env = {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url, **TEST_KEYS}
    run = lambda *args: CliRunner().invoke(cli, list(args), env=env)  # noqa: E731
    out = json.loads(run("tenants", "create", "acme").stdout.strip().splitlines()[-1])
    second = run("tenants", "add-key", out["tenant_id"]).stdout.strip()
    tenants = Tenants(redis.Redis.from_url(redis_url, decode_responses=True), Settings(home=tmp_path / "home"))
    assert tenants.authenticate(out["api_key"]) == tenants.authenticate(second) == out["tenant_id"]

    assert run("tenants", "revoke-key", out["api_key"]).exit_code == 0
    assert tenants.authenticate(out["api_key"]) is None and tenants.authenticate(second) == out["tenant_id"]
    assert run("tenants", "revoke-key", out["api_key"]).exit_code == 2, "an unknown key is an error"

    assert run("tenants", "disable", out["tenant_id"]).exit_code == 0
    assert tenants.authenticate(second) is None, "a disabled tenant's keys stop working"
    assert run("tenants", "disable", out["tenant_id"], "--enable").exit_code == 0
    assert tenants.authenticate(second) == out["tenant_id"]
    assert run("tenants", "disable", "ten_nobody").exit_code == 2
