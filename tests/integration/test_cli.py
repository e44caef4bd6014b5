"""The batchrender CLI against real Redis and a real worker."""
from __future__ import annotations

import json
from pathlib import Path

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
    assert out.exit_code == 2, "rejected lines are bad input, even when the rest are queued"
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


def test_submit_transparent_with_a_palette(br_env, start_worker):
    start_worker(br_env)
    out = CliRunner().invoke(cli, ["submit", "a kettle", "--size", "64x64", "--background", "transparent",
                                   "--palette", "#1A73E8, #fbbc05", "--wait"], env=br_env)
    assert out.exit_code == 0, out.output
    rec = json.loads(out.stdout[out.stdout.index("{"):])
    image = rec["outputs"][0]
    assert image["alpha"]["method"] == "key" and 0 <= image["alpha"]["coverage"] <= 1
    assert [c["hex"] for c in image["palette"]["requested"]] == ["#1A73E8", "#FBBC05"]
    assert all("delta_e" in d for d in image["palette"]["dominant"])
    bad = CliRunner().invoke(cli, ["submit", "a kettle", "--background", "transparent", "--format", "jpeg"],
                             env=br_env)
    assert bad.exit_code == 2 and "background" in bad.stderr and "output_format" in bad.stderr


def test_bad_single_submit_exits_nonzero_with_the_field_named(br_env):
    out = CliRunner().invoke(cli, ["submit", "a kettle", "--size", "100x64"], env=br_env)
    assert out.exit_code == 2
    assert "width: 100 is not a multiple of 8; use 96 or 104" in out.stderr


def test_submit_with_a_webhook_no_event_could_reach_is_refused_up_front(br_env, redis_url, tmp_path):
    """``submit --webhook`` is refused before anything is queued (exit 2, README's exit codes) when
    no event could ever be sent: no BATCHRENDER_WEBHOOK_SECRET to sign a tenant-less job's events
    (the worker refused each one and only its log said so), or a loopback receiver that
    BATCHRENDER_WEBHOOK_ALLOW_HOSTS does not list (the refusal names it, for API and workers)."""
    import redis

    url = "http://127.0.0.1:9/hook"
    lines = tmp_path / "hooks.jsonl"
    lines.write_text(json.dumps({"prompt": "a teapot", "webhook": url}) + "\n" + json.dumps({"prompt": "a lamp"}) + "\n")
    r = redis.Redis.from_url(redis_url)
    no_secret = CliRunner().invoke(cli, ["submit", "a kettle", "--webhook", url], env=br_env)
    assert no_secret.exit_code == 2, no_secret.output
    assert "BATCHRENDER_WEBHOOK_SECRET" in no_secret.stderr and "none would ever be sent" in no_secret.stderr
    whole_file = CliRunner().invoke(cli, ["submit", "--file", str(lines)], env=br_env)
    assert whole_file.exit_code == 2 and "BATCHRENDER_WEBHOOK_SECRET" in whole_file.stderr, whole_file.output
    assert not list(r.scan_iter("br:job:*")), "nothing was queued"

    with_secret = {**br_env, "BATCHRENDER_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    loopback = CliRunner().invoke(cli, ["submit", "a kettle", "--webhook", url],
                                  env={**with_secret, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": ""})
    assert loopback.exit_code == 2, loopback.output
    assert "BATCHRENDER_WEBHOOK_ALLOW_HOSTS" in loopback.stderr and "every worker" in loopback.stderr
    assert not list(r.scan_iter("br:job:*"))

    ok = CliRunner().invoke(cli, ["submit", "a kettle", "--webhook", url], env=with_secret)
    assert ok.exit_code == 0 and ok.stdout.strip().startswith("job_"), ok.output
    r.close()


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


def test_results_download_gallery_delete_and_prune(br_env, start_worker, tmp_path, settings_for):
    """``results --download DIR`` saves the images; ``gallery --out`` writes a self-contained sheet;
    ``delete`` and ``prune --older-than`` remove outputs, provenance entries and records."""
    from producer.client import Client
    from provenance.index import open_provenance_index

    runner = CliRunner()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a vase {i}", "seed": i, "custom_id": f"v{i}", "width": 64,
                                           "height": 64, "steps": 2}) + "\n" for i in range(3)))
    batch_id = runner.invoke(cli, ["submit", "--file", str(prompts)], env=br_env).stdout.strip().splitlines()[-1]
    start_worker(br_env)
    assert runner.invoke(cli, ["wait", batch_id, "--timeout", "120"], env=br_env).exit_code == 0

    got = runner.invoke(cli, ["results", batch_id, "--download", str(tmp_path / "dl")], env=br_env)
    assert got.exit_code == 0, got.output
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["v0-0.png", "v1-0.png", "v2-0.png"]
    for row in rows:
        assert open(row["file"], "rb").read() == open(row["path"], "rb").read()
        assert "signature=" in row["download_url"]
    # A CLI job belongs to no tenant: no API key opens a stable URL, so none is given (it was, and
    # answered 404 for every key); its signed link is served by the API.
    from fastapi.testclient import TestClient

    from producer.api import create_app

    with TestClient(create_app(settings_for(br_env))) as api:
        for row in rows:
            assert row["url"] is None, row
            got_bytes = api.get(row["download_url"])
            assert got_bytes.status_code == 200 and got_bytes.content == open(row["path"], "rb").read()
        api.app.state.client.close()

    sheet = tmp_path / "sheet.html"
    assert runner.invoke(cli, ["gallery", batch_id, "--out", str(sheet)], env=br_env).exit_code == 0
    html = sheet.read_text()
    assert html.count('class="thumb" src="data:image/webp;base64,') == 3 and "v2" in html

    client = Client(settings_for(br_env))
    index = open_provenance_index(settings_for(br_env))
    first = rows[0]
    assert index.lookup(open(first["path"], "rb").read()).job_id == first["job_id"]
    deleted = runner.invoke(cli, ["delete", first["job_id"]], env=br_env)
    assert deleted.exit_code == 0, deleted.output
    assert index.lookup(open(tmp_path / "dl" / "v0-0.png", "rb").read()) is None, "provenance entry gone"
    assert not Path(first["path"]).exists()

    kept = runner.invoke(cli, ["prune", "--older-than", "1d"], env=br_env)
    assert json.loads(kept.stdout) == {"jobs": 0, "kept_in_flight": 0, "batches": 0, "files": 0}
    pruned = runner.invoke(cli, ["prune", "--older-than", "0s"], env=br_env)
    assert json.loads(pruned.stdout) == {"jobs": 2, "kept_in_flight": 0, "batches": 1, "files": 0}, pruned.output
    assert client.list_jobs(None)[0] == [] and client.list_batches(None)[0] == []
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and "_health" not in p.parts]  # workers' markers
    assert leftovers == [], leftovers
    bad = runner.invoke(cli, ["prune", "--older-than", "a month"], env=br_env)
    assert bad.exit_code == 2 and "30d" in bad.output
    client.close()
    index.close()
