"""Property-based: no input the OpenAPI schema allows (or nearly allows) makes the API answer 5xx."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error

from tests.conftest import TEST_KEYS

pytestmark = pytest.mark.timeout(600)
#: Every operation of the API: a new route must be added here, and so gets fuzzed.
EVERY_OPERATION = {
    "POST /v1/jobs", "GET /v1/jobs", "GET /v1/jobs/{job_id}", "DELETE /v1/jobs/{job_id}",
    "POST /v1/jobs/{job_id}/cancel", "POST /v1/jobs/{job_id}/refine", "GET /v1/jobs/{job_id}/lineage",
    "GET /v1/jobs/{job_id}/outputs/{index}",
    "GET /v1/jobs/{job_id}/outputs/{index}/thumbnail", "GET /v1/jobs/{job_id}/outputs/{index}/renditions/{name}",
    "POST /v1/batches", "GET /v1/batches",
    "GET /v1/batches/{batch_id}", "GET /v1/batches/{batch_id}/results", "POST /v1/batches/{batch_id}/cancel",
    "GET /v1/batches/{batch_id}/gallery", "GET /v1/deliveries",
    "POST /v1/images/generations", "POST /v1/images/edits", "GET /v1/models", "GET /v1/models/{model}",
    "POST /v1/files", "GET /v1/files/{file_id}", "GET /v1/files/{file_id}/content", "DELETE /v1/files/{file_id}",
    "POST /v1/campaigns", "GET /v1/campaigns", "GET /v1/campaigns/{campaign}", "GET /v1/campaigns/{campaign}/results",
    "GET /v1/campaigns/{campaign}/results.zip", "GET /v1/campaigns/{campaign}/gallery",
}
#: Per operation and generation mode (positive, negative): bounded so the test stays under a minute.
EXAMPLES = 25


@pytest.fixture
def api_key(tenants):
    return tenants.create("fuzz").api_key


@pytest.fixture
def api_schema(tmp_path, redis_url, api_key):
    from jobs.settings import Settings
    from producer.api import create_app

    # Generous limits: the fuzzer must meet the handlers, not the rate limiter.
    settings = Settings.from_env({"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": redis_url,
                                  "BATCHRENDER_STORAGE_URL": (tmp_path / "out").as_uri(), "BATCHRENDER_STORAGE_SHARED": "1",
                                  **TEST_KEYS},
                                 api_rate_per_s=10_000, api_burst=10_000, api_max_body_bytes=64 * 1024,
                                 openai_sync_timeout_s=0.2)  # no worker: renders never finish here
    app = create_app(settings)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_input_yields_a_server_error(api_schema, api_key):
    from hypothesis import given
    from schemathesis import GenerationMode

    auth = {"Authorization": f"Bearer {api_key}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} == EVERY_OPERATION
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                case.call_and_validate(headers=auth, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                # Nothing in the schema can be made invalid here (a free-form string path
                # parameter, say); the positive run covers the operation.
                assert mode is GenerationMode.NEGATIVE, op.label


def test_no_webhook_host_yields_a_server_error(api_schema, api_key):
    """The generic fuzzer rarely writes a URL that reaches DNS; here every case does. Hosts that
    getaddrinfo cannot encode (a 64-character label) once gave 500, unresolvable ones 503."""
    from hypothesis import given
    from hypothesis import strategies as st
    from starlette.testclient import TestClient

    client = TestClient(api_schema.app, raise_server_exceptions=False)
    label = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=70)
    hosts = st.one_of(label, st.lists(label, min_size=1, max_size=4).map(".".join))

    @given(host=hosts, scheme=st.sampled_from(["http", "https"]))
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(host, scheme):
        r = client.post("/v1/jobs", json={"prompt": "a cat", "webhook": f"{scheme}://{host}/hook"},
                        headers={"Authorization": f"Bearer {api_key}"})
        assert r.status_code < 500, (host, r.status_code, r.text)
        if r.status_code == 422:
            assert r.json()["error"]["code"] in ("webhook_target_refused", "invalid_request")

    run()
    client.close()


def test_every_documented_example_is_accepted(api_schema, api_key):
    """The examples /docs offers ("Try it out") are requests the API accepts, not 422s."""
    from starlette.testclient import TestClient

    client = TestClient(api_schema.app)
    doc = client.get("/openapi.json").json()
    tried = 0
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for ctype, media in (op.get("requestBody") or {}).get("content", {}).items():
                values = [e["value"] for e in media.get("examples", {}).values()]
                values += [media["example"]] if "example" in media else []
                for value in values:
                    kw = {"json": value} if ctype == "application/json" else {"content": value}
                    r = client.request(method.upper(), path, headers={"Authorization": f"Bearer {api_key}",
                                                                     "content-type": ctype}, **kw)
                    assert r.status_code < 300, (method, path, ctype, r.text)
                    tried += 1
    assert tried >= 4, tried
    assert doc["webhooks"].keys() == {"job-event", "batch-event", "campaign-event"}


def test_no_input_on_real_ids_yields_a_server_error(br_env, settings_for, tenants, start_worker):
    """The same fuzzing with the path pointing at a real rendered job and batch (and a webhook),
    so outputs, thumbnails, the gallery, results, refine, lineage and delete run their full paths,
    not only 404s. DELETE goes last: after it the job answers ``deleted``."""
    from hypothesis import given
    from schemathesis import GenerationMode
    from starlette.testclient import TestClient

    from producer.api import create_app
    from tests.workers import wait_for

    key = tenants.create("fuzz").api_key
    auth = {"Authorization": f"Bearer {key}"}
    # The OpenAI routes wait for their render at most 2 s (then a time-limit refusal, not a 5xx):
    # with the default (540 s) each fuzzed images.generations waited for a queue of the fuzzer's
    # own renders, past its 10 s read timeout on a loaded machine.
    app = create_app(settings_for(br_env, api_rate_per_s=10_000, api_burst=10_000, api_max_body_bytes=64 * 1024,
                                  openai_sync_timeout_s=2.0))
    client = TestClient(app)
    start_worker(br_env)
    small = {"width": 64, "height": 64, "steps": 2, "renditions": [{"name": "sq", "aspect_ratio": "1:1"}]}
    batch = client.post("/v1/batches", json={"requests": [{"prompt": "a cup", **small}, {"prompt": "a jar", **small}],
                                             "webhook": "http://127.0.0.1:9/hook"}, headers=auth).json()
    wait_for(lambda: client.get(f"/v1/batches/{batch['id']}", headers=auth).json()["status"] == "completed",
             timeout=120, every=0.2)
    job_id = client.get(f"/v1/jobs?batch_id={batch['id']}", headers=auth).json()["data"][0]["id"]
    real = {"job_id": job_id, "batch_id": batch["id"], "index": 0, "name": "sq"}
    assert client.get(f"/v1/jobs/{job_id}/outputs/0", headers=auth).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/outputs/0/renditions/sq", headers=auth).status_code == 200

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Refinements of the real job queue renders of their own: after the routes that wait for a render.
    operations = sorted((r.ok() for r in schema.get_all_operations()),
                        key=lambda op: (op.method.upper() == "DELETE", op.path.endswith("/refine")))
    assert {op.label for op in operations} == EVERY_OPERATION
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def run(case):
                if case.path_parameters:
                    case.path_parameters = {k: real.get(k, v) for k, v in case.path_parameters.items()}
                case.call_and_validate(headers=auth, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label


#: What schemathesis's full check set may still report: refusals the schema cannot express
#: (cross-field rules, budgets, cursors only the API issues), never a wrong answer shape, and
#: never a request the schema forbids answered 2xx (unknown query parameters were, until the API
#: refused them: tests/integration/test_api_listing.py).
SEMANTIC_ONLY = {"Schema-valid request rejected"}


def test_all_checks_find_no_server_error_and_only_semantic_refusals(api_schema, api_key, capsys):
    """Every operation, positive and negative, against schemathesis's whole check set
    (status codes, content types, response schemas, ...): 0 × 5xx, and responses as documented."""
    import collections

    from hypothesis import given
    from schemathesis import GenerationMode

    auth = {"Authorization": f"Bearer {api_key}"}
    # 413 is a refusal too: a batch of more than maxItems requests outgrows the body limit first.
    rejection = api_schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    statuses: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    for op in (r.ok() for r in api_schema.get_all_operations()):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def run(case):
                response = case.call(headers=auth)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response)
                except BaseException as e:  # noqa: BLE001 - schemathesis raises a FailureGroup
                    for failure in getattr(e, "exceptions", [e]):
                        failures[(op.label, getattr(failure, "title", type(failure).__name__))] += 1

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label
    with capsys.disabled():
        print(f"\nschemathesis all checks: {sum(statuses.values())} calls, "
              f"{sum(n for s, n in statuses.items() if s >= 500)} x 5xx, statuses {dict(sorted(statuses.items()))}, "
              f"findings {dict(collections.Counter(t for (_, t) in failures.elements()))}")
    assert not [s for s in statuses if s >= 500], statuses
    assert {title for _, title in failures} <= SEMANTIC_ONLY, failures
