"""The batchrender CLI against real Redis and a real worker."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from producer.cli import cli

pytestmark = pytest.mark.timeout(180)


def test_submit_file_reports_bad_lines_by_number_and_queues_the_good_ones(br_env, start_worker, tmp_path, settings_for):
    from producer.client import Client

    lines = [
        json.dumps({"prompt": "a teapot on a shelf", "seed": 1, "custom_id": "ok-1"}),
        "{not json",
        json.dumps({"prompt": "a lamp", "width": 100, "height": 64}),
        "",
        json.dumps({"prompt": "a chair", "seed": 2, "custom_id": "ok-2"}),
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    out = runner.invoke(cli, ["submit", "--file", str(prompts)], env=br_env)
    assert out.exit_code == 0, out.output
    assert f"{prompts}:2: not valid JSON" in out.stderr
    assert f"{prompts}:3: invalid request: width: 100 is not a multiple of 8" in out.stderr
    assert "2 queued, 2 rejected" in out.stderr
    batch_id = out.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("bat_")

    start_worker(br_env)
    waited = runner.invoke(cli, ["wait", batch_id, "--timeout", "120"], env=br_env)
    assert waited.exit_code == 0, waited.output
    info = json.loads(waited.stdout)
    assert info["counts"]["succeeded"] == 2 and info["total"] == 2

    results = runner.invoke(cli, ["results", batch_id], env=br_env)
    rows = [json.loads(line) for line in results.stdout.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == ["ok-1", "ok-2"]
    assert all(r["status"] == "succeeded" and r["c2pa"] == "signed" for r in rows)
    client = Client(settings_for(br_env))
    assert len(client.batch_results(batch_id)) == 2


def test_submit_single_prompt_with_size_seed_and_format(br_env, start_worker):
    runner = CliRunner()
    start_worker(br_env)
    out = runner.invoke(cli, ["submit", "a kettle", "--n", "2", "--size", "16:9", "--seed", "7", "--format", "webp",
                              "--wait"], env=br_env)
    assert out.exit_code == 0, out.output
    rec = json.loads(out.stdout[out.stdout.index("{"):])
    assert rec["status"] == "succeeded"
    assert [o["seed"] for o in rec["outputs"]] == [7, 8]
    assert {o["format"] for o in rec["outputs"]} == {"webp"}
    assert rec["outputs"][0]["width"] > rec["outputs"][0]["height"]
    status = runner.invoke(cli, ["status", rec["id"]], env=br_env)
    assert json.loads(status.stdout)["status"] == "succeeded"


def test_bad_single_submit_exits_nonzero_with_the_field_named(br_env):
    out = CliRunner().invoke(cli, ["submit", "a kettle", "--size", "100x64"], env=br_env)
    assert out.exit_code == 2
    assert "width: 100 is not a multiple of 8; use 96 or 104" in out.stderr


def test_batchrender_worker_command_serves_its_models_queue(br_env, settings_for, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from producer.client import Client
    from tests.workers import ROOT

    client = Client(settings_for(br_env))
    job = client.submit({"prompt": "a vase", "seed": 3})
    log = open(tmp_path / "cli-worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "producer.cli", "worker", "--models", "tiny", "--no-webhooks",
                             "--name", "cli-test@%h"], env={**os.environ, **br_env}, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rec = client.wait(job, timeout=90)
        assert rec.status.value == "succeeded"
        text = (tmp_path / "cli-worker.log").read_text()
        assert "render.tiny" in text and "solo" in text, text[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
