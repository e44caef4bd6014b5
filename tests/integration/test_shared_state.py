"""Shared state is shared (issue 25): hosts that share only Redis (and storage) see the same
outputs, registry and moderation audit, or are told at start and in ``/readyz`` / ``doctor`` why not.

"Hosts" here are processes with their own homes (and storage directories) on one machine; the
real multi-host run is tests/integration/test_fleet.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.status import JobStatus
from tests.conftest import free_port
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(300)
EXE = Path(sys.executable).with_name("batchrender")
SMALL = {"width": 64, "height": 64, "steps": 2}
FLEET_SIGNING_KEY = "shared-state-test-signing-key-" + "s" * 32
FLEET_SECRETS_KEY = "dGVzdC1zZWNyZXRzLWtleS1vZi0zMi1ieXRlcy4uLi4="  # Fernet: 32 url-safe base64 bytes


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
    return {**env, **extra}


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``batchrender ARGS`` in its own process group, killed whole if it outlives ``timeout``
    (a start that is not refused would otherwise leave its worker processes behind)."""
    proc = subprocess.Popen([str(EXE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def fleet_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """``env`` as another host sees it: its own home, the keys every host of a fleet shares."""
    return {**env, "BATCHRENDER_HOME": str(home), "BATCHRENDER_MESSAGE_SIGNING_KEY": FLEET_SIGNING_KEY,
            "BATCHRENDER_SECRETS_KEY": FLEET_SECRETS_KEY}


@pytest.mark.parametrize("command", [["api", "--port", "0"], ["worker", "--models", "tiny"]])
def test_local_storage_with_a_shared_redis_is_refused_at_start_naming_both_fixes(redis_url, tmp_path, command):
    if command[0] == "api":
        command = ["api", "--port", str(free_port())]
    env = clean_env(BATCHRENDER_HOME=str(tmp_path / "home"), BATCHRENDER_REDIS_URL=redis_url)
    proc = run_cli(command, env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "s3://bucket/prefix" in proc.stderr and "BATCHRENDER_STORAGE_SHARED=1" in proc.stderr
    assert (tmp_path / "home" / "outputs").as_uri() in proc.stderr


def markers(redis_url: str) -> dict[str, dict]:
    import redis

    from storage.shared_check import MARKERS_KEY

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {k: json.loads(v) for k, v in r.hgetall(MARKERS_KEY).items()}
    finally:
        r.close()


def test_readyz_fails_naming_the_worker_whose_marker_the_api_cannot_read(br_env, redis_url, tmp_path, settings_for,
                                                                        start_worker):
    from starlette.testclient import TestClient

    from producer.api import create_app

    start_worker(br_env, queues="render.tiny,webhooks")
    [worker] = wait_for(lambda: markers(redis_url), timeout=120, what="the worker's storage marker")
    # Another "host": the same Redis, its own storage directory, declared shared (wrongly).
    elsewhere = {**br_env, "BATCHRENDER_STORAGE_URL": (tmp_path / "elsewhere").as_uri()}
    with TestClient(create_app(settings_for(elsewhere))) as api:
        bad = api.get("/readyz")
    assert bad.status_code == 503, bad.text
    check = bad.json()["checks"]["storage shared"]
    assert not check["ok"] and f"storage is not shared between this API and worker {worker}" in check["detail"]
    assert (tmp_path / "elsewhere").as_uri() in check["detail"]

    with TestClient(create_app(settings_for(br_env))) as api:  # the worker's own storage
        good = api.get("/readyz")
    assert good.status_code == 200, good.text
    assert worker in good.json()["checks"]["storage shared"]["detail"]


def test_moderation_audit_of_every_stage_is_read_from_any_home(br_env, tmp_path, client_for, start_worker):
    worker_env = fleet_env(br_env, Path(br_env["BATCHRENDER_HOME"]))
    start_worker(worker_env, queues="render.tiny")  # home A renders and moderates the output
    producer = client_for(fleet_env(br_env, tmp_path / "home-b"))  # home B checks the prompt
    job = producer.submit({"prompt": "a lighthouse at dusk, oil painting", "seed": 3, **SMALL})
    assert producer.wait(job, timeout=120).status is JobStatus.SUCCEEDED

    home_c = tmp_path / "home-c"  # a third host that took no part
    proc = run_cli(["moderation", "log", "--job", job], clean_env(**fleet_env(br_env, home_c)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    entries = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {e["job_id"] for e in entries} == {job}
    stages = {(e["actor"] == "worker", e["kind"]) for e in entries}
    assert stages == {(False, "prompt"), (True, "prompt"), (True, "output_image")}, entries
    assert not (home_c / "moderation").exists(), "read from the shared log, nothing local"
    # Each deciding host still keeps its own complete file.
    local_a = CliRunner().invoke(_cli(), ["moderation", "log", "--job", job, "--local"], env=worker_env)
    assert {json.loads(line)["kind"] for line in local_a.output.splitlines()} == {"prompt", "output_image"}


def _cli():
    from producer.cli import cli

    return cli


def test_model_registry_is_shared_across_homes_and_an_old_file_is_imported(br_env, tmp_path, tiny_model_dir,
                                                                           settings_for):
    from jobs.registry import Registry

    run = lambda env, *args: CliRunner().invoke(_cli(), list(args), env=env)  # noqa: E731
    added = run(br_env, "models", "add", "shared-tiny", str(tiny_model_dir), "--steps", "3")
    assert added.exit_code == 0, added.output
    other = {**br_env, "BATCHRENDER_HOME": str(tmp_path / "home-b")}
    assert Registry(settings_for(other)).get("shared-tiny").default_steps == 3
    assert "shared-tiny" in run(other, "models", "list").output

    # A host's registry file from before: imported once, the file renamed, so a removal sticks.
    home_c = tmp_path / "home-c"
    home_c.mkdir()
    (home_c / "models.json").write_text(json.dumps({"models": {"legacy": {"source": str(tiny_model_dir)},
                                                               "shared-tiny": {"source": "/elsewhere"}}}))
    legacy = {**br_env, "BATCHRENDER_HOME": str(home_c)}
    assert Registry(settings_for(legacy)).get("legacy").source == str(tiny_model_dir)
    assert Registry(settings_for(other)).get("shared-tiny").source == str(tiny_model_dir.resolve()), "Redis wins"
    assert (home_c / "models.json.imported").exists() and not (home_c / "models.json").exists()
    Registry(settings_for(other)).remove("legacy")
    assert "legacy" not in Registry(settings_for(legacy)).all()


def test_doctor_on_an_api_only_home_does_not_demand_model_files(br_env, tmp_path):
    api_home = tmp_path / "api-home"  # no models directory: this host runs the API only
    env = {**br_env, "BATCHRENDER_HOME": str(api_home)}
    rows = lambda result: {r["check"]: r for r in map(json.loads, result.stdout.splitlines())}  # noqa: E731
    as_api = rows(CliRunner().invoke(_cli(), ["doctor", "--json", "--role", "api"], env=env))
    assert as_api["models"]["state"] == "ok" and "tiny" in as_api["models"]["detail"], as_api["models"]
    assert as_api["c2pa signer"]["state"] == "ok"
    as_worker = rows(CliRunner().invoke(_cli(), ["doctor", "--json", "--role", "worker"], env=env))
    assert as_worker["models"]["state"] == "FAIL" and "no model_index.json for: tiny" in as_worker["models"]["detail"]


def test_doctor_reports_this_hosts_clock_skew_against_redis_time(br_env, settings_for):
    from producer.doctor import WARN, diagnose

    def clock_row(**kw):
        [row] = [f for f in diagnose(settings_for(br_env), role="api", inspect_timeout_s=0.2, **kw) if f.check == "clock"]
        return row

    synced = clock_row()
    assert synced.state == "ok" and "Redis TIME" in synced.detail, synced
    ahead = clock_row(clock=lambda: time.time() + 5.0)  # this host 5 s fast; Redis TIME is read for real
    assert ahead.state == WARN and "ahead of Redis TIME" in ahead.detail and "more than 1 s" in ahead.detail
    assert float(ahead.detail.split(" is ")[1].split(" s ")[0]) == pytest.approx(5.0, abs=0.5)
    assert "chrony" in ahead.fix
