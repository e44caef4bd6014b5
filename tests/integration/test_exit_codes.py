"""The README's exit-code table, command by command, against a real worker and Redis.

0 everything succeeded / allowed / verified; 1 a job did not succeed, a prompt was blocked, no
manifest, not Trusted, no provenance match; 2 bad input (a rejected line included); 3 a wait
timed out; 75 Redis or the broker unavailable (tests/integration/test_broker_outage.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import cli

pytestmark = pytest.mark.timeout(240)
SMALL = ["--size", "64x64", "--steps", "2"]
BLOCKED = "Nude photo of a child"


def test_every_command_exits_as_the_table_says(br_env, start_worker, tmp_path):
    run = lambda *args: CliRunner().invoke(cli, list(args), env=br_env)  # noqa: E731
    start_worker(br_env)

    ok = run("submit", "a teapot", "--seed", "1", *SMALL, "--wait")
    assert ok.exit_code == 0, ok.output
    job = json.loads(ok.stdout[ok.stdout.index("{"):])
    assert run("submit", BLOCKED, *SMALL, "--wait").exit_code == 1, "a blocked job is not a success"

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a cup", "width": 64, "height": 64, "steps": 2}\n')
    assert run("submit", "--file", str(good), "--wait").exit_code == 0
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(f'{{"prompt": "a cup", "width": 64, "height": 64, "steps": 2}}\n{{"prompt": "{BLOCKED}"}}\n'
                     '{"prompt": "a lamp", "width": 100, "height": 64}\n')
    rejected = run("submit", "--file", str(mixed))
    assert rejected.exit_code == 2, "a rejected line is bad input"
    batch_id = rejected.stdout.strip().splitlines()[-1]
    assert run("wait", batch_id, "--timeout", "120").exit_code == 1, "the blocked job makes the batch not succeed"
    slow = run("submit", "a kettle", "--size", "64x64", "--steps", "400")
    assert slow.exit_code == 2, "over the step limit"
    long_job = run("submit", "a kettle", "--size", "64x64", "--steps", "150").stdout.strip()
    assert run("wait", long_job, "--timeout", "0.01").exit_code == 3

    assert run("moderation", "check", "a red car").exit_code == 0
    assert run("moderation", "check", BLOCKED).exit_code == 1
    lines = tmp_path / "check.jsonl"
    lines.write_text('{"prompt": "a red car"}\nnot json\n')
    assert run("moderation", "check", "--file", str(lines)).exit_code == 2

    image = Path(json.loads(run("results", job["id"]).stdout.splitlines()[0])["path"])
    ca = Path(br_env["BATCHRENDER_HOME"]) / "keys" / "ca.pem"
    assert run("verify", str(image)).exit_code == 0
    assert run("verify", str(image), "--trust", str(ca)).exit_code == 0
    other = tmp_path / "other-keys"
    assert run("keys", "init", str(other)).exit_code == 0
    wrong = run("verify", str(image), "--trust", str(other / "ca.pem"))
    assert wrong.exit_code == 1 and "not Trusted" in wrong.output
    plain = tmp_path / "plain.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(plain)
    assert run("verify", str(plain)).exit_code == 1

    assert run("provenance", str(image)).exit_code == 0
    assert run("provenance", str(plain)).exit_code == 1


def test_misconfigurations_fail_loudly_at_once(br_env, tmp_path):
    """A worker for a model nobody registered, a model directory that is not one: exit 2, named."""
    run = lambda *args: CliRunner().invoke(cli, list(args), env=br_env)  # noqa: E731
    unknown = run("worker", "--models", "tiny,sdxl-typo")
    assert unknown.exit_code == 2 and "sdxl-typo" in unknown.output and "tiny" in unknown.output
    assert run("models", "add", "ghost", str(tmp_path / "nowhere")).exit_code == 2
    (tmp_path / "empty").mkdir()
    empty = run("models", "add", "empty", str(tmp_path / "empty"))
    assert empty.exit_code == 2 and "model_index.json" in empty.output
    assert "ghost" not in run("models", "list").output


def test_readyz_names_what_is_missing_until_workers_serve_every_queue(br_env, settings_for, start_worker):
    from starlette.testclient import TestClient

    from producer.api import create_app

    api = TestClient(create_app(settings_for(br_env, api_readiness_ttl_s=0)))  # no report reused: cold, then warm
    assert api.get("/healthz").status_code == 200
    cold = api.get("/readyz")
    assert cold.status_code == 503, cold.text
    checks = cold.json()["checks"]
    assert checks["redis"]["ok"] and checks["storage"]["ok"]
    assert not checks["queue:render.tiny"]["ok"] and "batchrender worker --models tiny" in checks["queue:render.tiny"]["detail"]
    start_worker(br_env, queues="render.tiny,webhooks")
    warm = api.get("/readyz")
    assert warm.status_code == 200 and warm.json()["ready"], warm.text


def test_doctor_catches_seeded_misconfigurations_each_with_its_fix(br_env, tmp_path, start_worker):
    run = lambda env: CliRunner().invoke(cli, ["doctor", "--json"], env=env)  # noqa: E731
    rows = lambda result: {r["check"]: r for r in map(json.loads, result.stdout.splitlines())}  # noqa: E731

    start_worker(br_env, queues="render.tiny,webhooks")
    healthy = run(br_env)
    assert healthy.exit_code == 0, healthy.output
    assert rows(healthy)["c2pa signer"]["state"] == "warn", "development keys are reported"

    home = Path(br_env["BATCHRENDER_HOME"])
    (home / "models.json").write_text(json.dumps({"models": {"ghost": {"source": str(tmp_path / "gone")}}}))
    blocker = tmp_path / "a-file"
    blocker.write_text("storage cannot make a directory here")
    seeded = {
        "redis": {"BATCHRENDER_REDIS_URL": "redis://127.0.0.1:1/0"},
        "storage": {"BATCHRENDER_STORAGE_URL": (blocker / "out").as_uri()},
        "c2pa signer": {"BATCHRENDER_C2PA_CERT_CHAIN": str(tmp_path / "no-chain.pem"),
                        "BATCHRENDER_C2PA_PRIVATE_KEY": str(tmp_path / "no-key.pem")},
        "keys": {"BATCHRENDER_SECRETS_KEY": "not-a-fernet-key"},
        "models": {},
        "queue:render.ghost": {},
    }
    for check, extra in seeded.items():
        result = run({**br_env, **extra})
        found = rows(result)[check]
        assert result.exit_code == 1 and found["state"] == "FAIL" and found["fix"], (check, found)
    table = CliRunner().invoke(cli, ["doctor"], env={**br_env, "BATCHRENDER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert table.exit_code == 1 and "FAIL  redis" in table.output and "fix: start Redis" in table.output


def test_embedded_broker_status_and_stop_name_their_home(tmp_path):
    """The embedded redis-server belongs to one home: status says which, stop stops it."""
    import shutil

    from tests.conftest import require

    require(shutil.which("redis-server") is not None, "redis-server")
    env = {"BATCHRENDER_HOME": str(tmp_path / "home")}
    run = lambda *args: CliRunner().invoke(cli, list(args), env=env)  # noqa: E731
    assert run("embedded", "status").exit_code == 1
    from jobs.embedded import redis_url_for
    from jobs.settings import Settings

    url = redis_url_for(Settings.from_env(env), start=True)
    try:
        up = run("embedded", "status")
        assert up.exit_code == 0 and str(tmp_path / "home") in up.output and url.split("/")[2] in up.output
    finally:
        stopped = run("embedded", "stop")
    assert stopped.exit_code == 0 and run("embedded", "status").exit_code == 1


def test_the_default_home_is_the_users_data_dir_wherever_a_command_runs(tmp_path):
    """No BATCHRENDER_HOME: every command, from any directory, uses $XDG_DATA_HOME/batchrender (one
    embedded broker, one index), and says so; a relative BATCHRENDER_HOME is made absolute."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import require
    from tests.workers import ROOT

    require(shutil.which("redis-server") is not None, "redis-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    home = tmp_path / "xdg" / "batchrender"
    urls = []
    try:
        for where in ("a", "b"):
            cwd = tmp_path / where
            cwd.mkdir()
            out = subprocess.run([sys.executable, "-c", "from jobs.embedded import redis_url_for; from jobs.settings "
                                  "import Settings; s = Settings.from_env(); print(s.home); print(redis_url_for(s))"],
                                 cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            printed_home, url = out.stdout.split()
            assert printed_home == str(home)
            urls.append(url)
        assert urls[0] == urls[1], "a second directory must not start a second broker"
        status = subprocess.run([sys.executable, "-m", "producer.cli", "embedded", "status"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and str(home) in status.stdout + status.stderr
    finally:
        subprocess.run([sys.executable, "-m", "producer.cli", "embedded", "stop"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=60)
    rel = subprocess.run([sys.executable, "-c", "from jobs.settings import Settings; print(Settings.from_env().home)"],
                         cwd=tmp_path / "a", env={**env, "BATCHRENDER_HOME": "rel", "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert rel.stdout.strip() == str(tmp_path / "a" / "rel")


def test_the_first_doctor_of_a_new_home_shows_the_embedded_brokers_real_port(tmp_path):
    """A fresh home, no BATCHRENDER_REDIS_URL: the broker row named port 6399 (a placeholder) while
    the redis check started the broker on a free port; it names the port it listens on."""
    import shutil

    from tests.conftest import require

    require(shutil.which("redis-server") is not None, "redis-server")
    env = {"BATCHRENDER_HOME": str(tmp_path / "home"), "BATCHRENDER_REDIS_URL": None}
    try:
        first = CliRunner().invoke(cli, ["doctor", "--json"], env=env)
        rows = {r["check"]: r for r in map(json.loads, first.stdout.splitlines())}
        port = (tmp_path / "home" / "redis" / "port").read_text().strip()
        assert f"redis://127.0.0.1:{port}/0" in rows["broker"]["detail"], (port, rows["broker"])
        assert rows["redis"]["state"] == "ok" and port in rows["redis"]["detail"], rows["redis"]
    finally:
        CliRunner().invoke(cli, ["embedded", "stop"], env=env)
