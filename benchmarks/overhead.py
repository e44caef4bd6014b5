"""Platform overhead per job on the tiny model: (submit → result) minus render time.

Runs a real worker against Redis (BATCHRENDER_REDIS_URL, or the embedded one), then:
1. 100 jobs one after another: per-job latency overhead, p50/p95, next to the render time;
2. the same 100 jobs queued at once as a batch: wall time per job vs render time per job.
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=100)
    args = ap.parse_args()

    from jobs.embedded import redis_url_for, stop
    from jobs.settings import Settings
    from producer.client import Client

    tmp = Path(tempfile.mkdtemp(prefix="br-bench-"))
    env_over = {"BATCHRENDER_STORAGE_URL": (tmp / "out").as_uri(), "BATCHRENDER_STORAGE_SHARED": "1"}  # one host
    os.environ.update(env_over)
    settings = Settings.from_env()
    url = redis_url_for(settings, start=True)
    env = {**os.environ, **env_over}
    if not settings.redis_url:
        env["BATCHRENDER_REDIS_URL"] = url
    if not (settings.message_signing_key and settings.secrets_key):
        # The worker gets a Redis URL: it needs the keys the client signs with (jobs/fleet.py).
        from jobs.fleet import fresh_keys_env

        keys = fresh_keys_env(allow_dev_c2pa=True)
        env.update(keys)
        settings = Settings.from_env({**os.environ, **keys})
    log = open(tmp / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q",
                               "render.tiny", "--without-gossip", "--without-mingle", "-n", "bench@%h"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(settings, redis_url=url)
        for i in range(3):  # warm-up: model load, first-call allocations
            client.wait(client.submit({"prompt": f"warm {i}", "seed": i}), timeout=300)

        overhead, render, latency = [], [], []
        for i in range(args.jobs):
            t0 = time.perf_counter()
            job = client.submit({"prompt": f"a product photo number {i}", "seed": i})
            rec = client.wait(job, timeout=120, poll_s=0.005)
            total = time.perf_counter() - t0
            r = rec.result.timings.render_s
            latency.append(total)
            render.append(r)
            overhead.append(total - r)

        t0 = time.perf_counter()
        sub = client.submit_batch([{"prompt": f"batch item {i}", "seed": i} for i in range(args.jobs)])
        client.wait_batch(sub.batch_id, timeout=600, poll_s=0.02)
        wall = time.perf_counter() - t0
        batch_render = sum(r.result.timings.render_s for r in client.batch_results(sub.batch_id))
    finally:
        worker.terminate()
        worker.wait(30)
        if not settings.redis_url:
            stop(settings)

    import torch
    import diffusers
    import celery

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}, diffusers {diffusers.__version__}, celery {celery.__version__}")
    print(f"tiny model, 64x64, 4 steps, {args.jobs} jobs, one solo worker\n")
    print(f"{'per job (sequential)':<34}{'p50 ms':>10}{'p95 ms':>10}")
    for name, xs in (("render time (baseline)", render), ("platform overhead", overhead),
                     ("submit -> result", latency)):
        print(f"{name:<34}{pct(xs, 50) * 1e3:>10.1f}{pct(xs, 95) * 1e3:>10.1f}")
    print(f"\n{'batch of ' + str(args.jobs) + ' queued at once':<34}{'ms/job':>10}")
    print(f"{'render time (baseline)':<34}{batch_render / args.jobs * 1e3:>10.1f}")
    print(f"{'wall time':<34}{wall / args.jobs * 1e3:>10.1f}")
    print(f"{'overhead':<34}{(wall - batch_render) / args.jobs * 1e3:>10.1f}")
    print(f"mean overhead share of the sequential latency: {statistics.mean(overhead) / statistics.mean(latency):.0%}")


if __name__ == "__main__":
    main()
