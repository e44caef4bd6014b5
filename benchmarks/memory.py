"""Render-worker memory over many jobs: RSS after warm-up, at 1,000 and at 5,000 jobs.

    .venv/bin/python benchmarks/memory.py [--jobs 5000] [--warmup 200] [--s3] [--webhooks]
                                          [--out benchmarks/results/memory.json]

A real ``celery worker`` (solo pool, the tiny model at 8x8, 1 step) on a private redis-server, local
storage (or, with ``--s3``, a moto S3 server on loopback), signing and moderation on (the full
per-job path; ``--webhooks``: every job has a webhook to a loopback receiver, delivered by a
webhook worker of its own, whose RSS is reported too; each wave waits until every event is
delivered), jobs submitted in waves so the queue
never holds more than a few hundred. The worker's RSS is read from /proc after each wave. The
figure that matters is the growth per 1,000 jobs after warm-up; the baseline row is the same
worker idle for the same time. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` and its children (the solo worker is one process)."""
    total = 0
    for p in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += _children(k)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--wave", type=int, default=250)
    ap.add_argument("--s3", action="store_true", help="store in a moto S3 server instead of local files")
    ap.add_argument("--webhooks", action="store_true", help="a webhook per job, delivered by a webhook worker")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from jobs.fleet import fresh_keys_env
    from jobs.settings import Settings
    from producer.client import Client
    from worker.tiny import build_tiny_pipeline

    work = Path(tempfile.mkdtemp(prefix="br-memory-"))
    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"BATCHRENDER_HOME": str(work / "home"), "BATCHRENDER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "BATCHRENDER_STORAGE_URL": (work / "out").as_uri(), "BATCHRENDER_RECORD_TTL_S": "3600",
           "BATCHRENDER_RETENTION_S": "3600", "BATCHRENDER_STORAGE_SHARED": "1",  # one host
           **fresh_keys_env(allow_dev_c2pa=True)}  # keys every process of a shared Redis must share
    (work / "home" / "models").mkdir(parents=True)
    build_tiny_pipeline(work / "home" / "models" / "tiny")
    moto = receiver = None
    if args.s3:
        import boto3
        from moto.server import ThreadedMotoServer

        s3_port = free_port()
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
        moto.start()
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                     aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="memory")
        env.update({"BATCHRENDER_STORAGE_URL": "s3://memory/renders",
                    "BATCHRENDER_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "BATCHRENDER_S3_PATH_STYLE": "true",
                    "BATCHRENDER_S3_ACCESS_KEY_ID": "test", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "test"})
    queues = "render.tiny"
    if args.webhooks:
        from webhooks.testing import LoopbackReceiver

        receiver = LoopbackReceiver(lambda req: (204, {})).__enter__()
        env.update({"BATCHRENDER_WEBHOOK_SECRET": "whsec_" + "bWVtb3J5LWJlbmNobWFyay1zZWNyZXQtMDAwMA==",
                    "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"})
    log = open(work / "worker.log", "w")
    hooks = None
    if args.webhooks:
        hooks = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "webhooks.app", "worker", "-P", "solo", "-Q", "webhooks",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-P", "solo", "-Q", queues,
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        time.sleep(2)
        client = Client(Settings.from_env(env))
        request = {"prompt": "a small test render", "width": 8, "height": 8, "steps": 1,
                   **({"webhook": receiver.url} if receiver else {})}

        def events_settled() -> None:
            if hooks is None:
                return
            from webhooks.store import DeliveryStore

            store = DeliveryStore(client.store.r)
            while store.pending_ids(10):
                time.sleep(0.05)

        def run(n: int) -> float:
            t = time.perf_counter()
            done = 0
            while done < n:
                k = min(args.wave, n - done)
                ids = [client.submit({**request, "seed": done + i}) for i in range(k)]
                for j in ids:
                    client.wait(j, timeout=600, poll_s=0.02)
                events_settled()
                done += k
            return time.perf_counter() - t

        run(args.warmup)
        base = rss_kib(worker.pid)
        marks = {0: base}
        hook_marks = {0: rss_kib(hooks.pid)} if hooks else {}
        t_total = 0.0
        done = 0
        for target in (1000, args.jobs):
            if target <= done:
                continue
            t_total += run(target - done)
            done = target
            marks[done] = rss_kib(worker.pid)
            if hooks:
                hook_marks[done] = rss_kib(hooks.pid)
        idle_before = rss_kib(worker.pid)
        time.sleep(min(60.0, t_total / 4))
        idle_after = rss_kib(worker.pid)
    finally:
        if client is not None:
            client.close()
        for proc in (worker, hooks):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        redis_proc.terminate()
        if receiver is not None:
            received = len(receiver.received)
            receiver.__exit__()
        if moto is not None:
            moto.stop()
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    per_k = (marks[done] - base) / 1024 / (done / 1000)
    path = ("S3 (moto)" if args.s3 else "local storage") + (", a webhook per job (own worker)" if args.webhooks else "")
    print(f"render worker RSS, tiny model 8x8/1 step, {path}, after {args.warmup} warm-up jobs")
    if receiver is not None:
        print(f"webhook requests received: {received}")
    print(f"python {platform.python_version()}  {platform.platform()}")
    print(f"{'jobs after warm-up':<22}{'RSS MiB':>10}{'growth MiB':>12}")
    for n, kib in marks.items():
        print(f"{n:<22}{kib / 1024:>10.1f}{(kib - base) / 1024:>12.2f}")
    print(f"growth per 1,000 jobs: {per_k:.2f} MiB  (jobs/s {done / t_total:.1f})")
    print(f"baseline, the same worker idle: {(idle_after - idle_before) / 1024:+.2f} MiB")
    hook_per_k = None
    if hook_marks:
        hook_per_k = (hook_marks[done] - hook_marks[0]) / 1024 / (done / 1000)
        print("webhook worker RSS (every event delivered before each mark):")
        for n, kib in hook_marks.items():
            print(f"{n:<22}{kib / 1024:>10.1f}{(kib - hook_marks[0]) / 1024:>12.2f}")
        print(f"webhook worker growth per 1,000 jobs: {hook_per_k:.2f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"warmup": args.warmup, "s3": args.s3, "webhooks": args.webhooks,
                                        "rss_kib": marks, "webhook_worker_rss_kib": hook_marks,
                                        "webhook_worker_growth_mib_per_1000": hook_per_k,
                                        "webhook_requests_received": received if receiver is not None else None, "growth_mib_per_1000": per_k,
                                        "idle_growth_mib": (idle_after - idle_before) / 1024,
                                        "jobs_per_s": done / t_total, "python": platform.python_version(),
                                        "platform": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
