"""``producer.http_client.HttpClient`` against the API served by a real uvicorn server on loopback."""
from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import TEST_KEYS, free_port

pytestmark = pytest.mark.timeout(120)


class ApiServer:
    """The API app under uvicorn in a thread, on a loopback port."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ApiServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve(settings_for):
    from producer.api import create_app

    servers = []

    def start(env, **overrides) -> ApiServer:
        app = create_app(settings_for(env, **overrides))
        s = ApiServer(app).__enter__()
        servers.append((s, app))
        return s

    yield start
    for s, app in servers:
        s.__exit__()
        app.state.client.close()


@pytest.fixture
def api_env(tmp_path, redis_url):
    return {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
            "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "BATCHRENDER_STORAGE_SHARED": "1", **TEST_KEYS}


def test_http_client_round_trips_without_a_worker(serve, api_env, tenants):
    from producer.http_client import ApiError, HttpClient

    server = serve(api_env)
    alice = tenants.create("alice")
    with HttpClient(server.url, alice.api_key) as api:
        assert alice.api_key not in repr(api)
        job = api.create_job({"prompt": "a cat", "webhook": "http://127.0.0.1:9/hook"}, idempotency_key="k1")
        assert job["status"] == "queued" and job["queue_position"] == 0
        assert api.create_job({"prompt": "a cat", "webhook": "http://127.0.0.1:9/hook"},
                              idempotency_key="k1")["id"] == job["id"]
        with pytest.raises(ApiError) as e:
            api.create_job({"prompt": "a dog"}, idempotency_key="k1")
        assert e.value.status == 409 and e.value.code == "idempotency_conflict"
        assert api.get_job(job["id"])["id"] == job["id"]
        assert api.cancel_job(job["id"])["status"] == "canceled"
        assert [d["type"] for d in api.deliveries(job_id=job["id"])] == ["job.canceled"]
        assert len(api.deliveries()) == 1

        batch = api.create_batch([{"prompt": "a", "custom_id": "a"}, {"prompt": "", "custom_id": "b"}])
        assert batch["accepted"] == 1 and batch["errors"][0]["custom_id"] == "b"
        batch2 = api.create_batch('{"prompt": "x", "custom_id": "x"}\nnope\n{"prompt": "y", "custom_id": "y"}\n')
        assert batch2["accepted"] == 2 and batch2["errors"][0]["line"] == 2
        assert api.get_batch(batch2["id"])["counts"]["total"] == 2
        assert [r["custom_id"] for r in api.batch_results(batch2["id"])] == ["x", "y"]
        assert api.cancel_batch(batch2["id"])["counts"]["canceled"] == 2
        assert {r["status"] for r in api.batch_results(batch2["id"])} == {"canceled"}

        with pytest.raises(ApiError) as e:
            api.create_job({"prompt": "Nude photo of a child"})
        err = e.value
        assert err.status == 422 and err.code == "moderation_blocked"
        assert err.body["error"]["stage"] == "prompt_rules" and "minors_sexual" in err.body["error"]["categories"]
        assert api.get_job(err.body["error"]["job_id"])["status"] == "blocked"

        with pytest.raises(ApiError) as e:
            api.get_job("job_does_not_exist")
        assert e.value.status == 404 and e.value.code == "not_found"
        with pytest.raises(ApiError) as e:  # an id with a slash stays one path segment
            api.get_job("../batches/x")
        assert e.value.status == 404
        with pytest.raises(TimeoutError):
            api.wait_job(api.create_job({"prompt": "never rendered"})["id"], timeout=0.3, poll=0.1)

    with HttpClient(server.url, "br_wrong") as bad:
        with pytest.raises(ApiError) as e:
            bad.get_batch(batch["id"])
        assert e.value.status == 401 and e.value.code == "unauthorized"
        assert "br_wrong" not in repr(bad) and "br_wrong" not in str(e.value)


def test_http_client_sees_rate_limit_and_retry_after(serve, api_env, tenants):
    from producer.http_client import ApiError, HttpClient

    server = serve(api_env, api_rate_per_s=0.2, api_burst=1)
    with HttpClient(server.url, tenants.create("alice").api_key) as api:
        api.deliveries()
        with pytest.raises(ApiError) as e:
            api.deliveries()
        assert e.value.status == 429 and e.value.code == "rate_limited" and e.value.retry_after >= 1


def test_real_server_refuses_an_oversized_body(serve, api_env, tenants):
    import httpx

    server = serve(api_env, api_max_body_bytes=2048)
    key = tenants.create("alice").api_key

    def chunks():
        for _ in range(64):
            yield b'{"prompt": "' + b"a" * 100 + b'"}\n'

    r = httpx.post(f"{server.url}/v1/batches", content=chunks(), timeout=10,
                   headers={"Authorization": f"Bearer {key}", "Content-Type": "application/jsonl"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_wait_job_returns_the_rendered_job(serve, br_env, tenants, start_worker):
    from producer.http_client import HttpClient

    start_worker(br_env, queues="render.tiny")
    server = serve(br_env)
    with HttpClient(server.url, tenants.create("alice").api_key) as api:
        job = api.create_job({"prompt": "a lighthouse", "seed": 4})
        done = api.wait_job(job["id"], timeout=60, poll=0.1)
        assert done["status"] == "succeeded" and done["outputs"][0]["seed"] == 4
        finished = api.create_job({"prompt": "a lighthouse", "seed": 5}, wait=30)
        assert finished["status"] == "succeeded"
