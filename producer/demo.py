"""``batchrender demo``: the main job on the embedded default, start to finish.

Starts (or reuses) a broker, starts a worker, submits a batch of prompts, shows progress, and
writes the images and a JSONL manifest (one line per image) under ``output/demo/``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

PROMPTS = [
    "studio product shot of a ceramic coffee mug on a walnut table, soft morning light",
    "flat-lay of running shoes with a pastel background, marketing banner",
    "a cozy reading nook with a green armchair, warm lamp light, interior photography",
    "minimalist poster of a mountain lake at dawn, muted colours",
    "close-up of a glass perfume bottle with water droplets, luxury advertising",
    "isometric illustration of a small bakery storefront, cheerful palette",
    "a bowl of ramen with steam rising, overhead food photography",
    "a red vintage bicycle leaning against a brick wall, golden hour",
]


@click.command()
@click.option("--n", "count", default=8, show_default=True, help="How many prompts to render.")
@click.option("--out", default="output/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--timeout", default=600.0, show_default=True)
def demo(count: int, out: str, timeout: float) -> None:
    """Render a demo batch end to end and write images + manifest under --out."""
    from jobs.embedded import redis_url_for, running_url, stop
    from jobs.settings import redact_url
    from jobs.settings import Settings
    from producer.cli import _wait_batch, manifest_lines
    from producer.gallery import local_sheet
    from producer.client import Client

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # --out is this host's directory, written by the worker the demo starts here: shared by both.
    overrides = {} if os.environ.get("BATCHRENDER_STORAGE_URL") else {"storage_url": out_dir.as_uri(),
                                                                      "storage_shared": True}
    settings = Settings.from_env(**overrides)
    # The demo stops the embedded broker it started, and only that one: a broker that was already
    # running (a `batchrender worker` of this home uses it) keeps running.
    started_here = not settings.redis_url and running_url(settings) is None
    url = redis_url_for(settings, start=True)
    click.echo(f"broker: {redact_url(url) if settings.redis_url else 'embedded private redis-server at ' + url}"
               + (" (started for the demo; stopped at its end)" if started_here else ""), err=True)
    click.echo(f"storage: {settings.resolved_storage_url}", err=True)

    env = {**os.environ, **({"BATCHRENDER_STORAGE_URL": settings.resolved_storage_url,
                             "BATCHRENDER_STORAGE_SHARED": "true"} if overrides else {})}
    log_path = out_dir / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q", "render.tiny,webhooks",
             "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle", "-n", f"demo-{os.getpid()}@%h"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(settings, redis_url=url)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
        sub = client.submit_batch(
            [{"prompt": p, "seed": 1000 + i, "custom_id": f"demo-{i}", "model": "tiny"} for i, p in enumerate(prompts)],
            meta={"source": "demo"})
        click.echo(f"submitted batch {sub.batch_id} with {len(sub.job_ids)} jobs; worker log: {log_path}", err=True)
        started = time.monotonic()
        code = _wait_batch(client, sub.batch_id, timeout)
        elapsed = time.monotonic() - started
        manifest = out_dir / "manifest.jsonl"
        lines = [line for rec in client.batch_results(sub.batch_id) for line in manifest_lines(client, rec)]
        manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
        sheet = out_dir / "gallery.html"
        sheet.write_text(local_sheet(client, sub.batch_id), encoding="utf-8")
        click.echo(f"{len(lines)} images in {elapsed:.1f}s; manifest: {manifest}; contact sheet: {sheet}", err=True)
        click.echo("note: the tiny model has random weights, so its images are noise (see README to add a real model)",
                   err=True)
        sys.exit(code)
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: finishes the job in hand, acks, exits
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if started_here:
            stop(settings)
