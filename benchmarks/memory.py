"""Render-worker memory over many jobs: RSS after warm-up, at 1,000 and at 5,000 jobs.

    .venv/bin/python benchmarks/memory.py [--jobs 5000] [--warmup 200] [--s3] [--webhooks]
                                          [--realistic] [--size N] [--steps N] [--unique-prompts]
                                          [--log-level INFO] [--thumbnail-px N] [--trace FILE]
                                          [--out benchmarks/results/memory.json]

``--realistic`` is what a real run looks like: 64x64, 4 steps, a unique prompt per job, INFO logging,
thumbnails (256), S3 and webhooks. Without it the settings of the first figures (8x8, 1 step, one
prompt, WARNING logging, local storage).

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


def malloc_settings(env: dict[str, str]) -> dict[str, object]:
    """How the render worker's malloc was tuned (worker/malloc.py), as the worker reads it."""
    from jobs.settings import Settings

    s = Settings.from_env({**os.environ, **env})
    return {"arena_max": s.malloc_arena_max or "glibc default", "mmap_threshold": s.malloc_mmap_threshold or "glibc default",
            **{k: v for k, v in os.environ.items() if k in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")}}


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += _children(k)
    return out


_WORDS = ("quiet", "bright", "misty", "golden", "pale", "stormy", "late", "early", "warm", "cold", "soft",
          "hazy", "clear", "dim", "vivid", "faded", "silver",
          "lighthouse", "harbour", "fishing boat", "gull", "pier", "cliff", "dune", "village", "ferry",
          "heron", "breakwater", "beach hut", "sailboat", "tide pool", "rowing boat", "fisherman")

# The render worker under tracemalloc: a thread answers each ``<name>.req`` in the trace folder with
# ``<name>.snap`` (a tracemalloc snapshot) and ``<name>.types.json`` (live objects per type). Tracing
# starts at the first request (after warm-up), so the last snapshot holds what was allocated since
# and is still alive.
_TRACED_CELERY = """
import collections, gc, json, pathlib, sys, threading, time, tracemalloc
d = pathlib.Path(sys.argv.pop(1))
def watch():
    while True:
        for req in d.glob('*.req'):
            if not tracemalloc.is_tracing():  # from the first request on: imports untraced, fast
                tracemalloc.start(16)
            gc.collect()
            types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            (d / (req.stem + '.types.json')).write_text(json.dumps(types))
            tracemalloc.take_snapshot().dump(str(d / (req.stem + '.tmp')))
            (d / (req.stem + '.tmp')).rename(d / (req.stem + '.snap'))
            req.unlink()
        time.sleep(0.2)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ['celery', *sys.argv[1:]]
from celery.__main__ import main
main()
"""


def snap(trace_dir: Path | None, name: str) -> None:
    """Asks the traced worker for a snapshot (between waves: the worker is idle) and waits for it."""
    if trace_dir is None:
        return
    (trace_dir / f"{name}.req").touch()
    deadline = time.monotonic() + 600
    while not (trace_dir / f"{name}.snap").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no tracemalloc snapshot {name} from the worker")
        time.sleep(0.2)


def trace_report(trace_dir: Path, out: Path) -> None:
    """The top growth between the two snapshots, by line and by traceback, and by object type."""
    import tracemalloc

    a = tracemalloc.Snapshot.load(str(trace_dir / "base.snap"))
    b = tracemalloc.Snapshot.load(str(trace_dir / "end.snap"))
    lines = ["# by line"]
    lines += [str(st) for st in b.compare_to(a, "lineno")[:30]]
    lines.append("\n# by traceback (top 8)")
    for st in b.compare_to(a, "traceback")[:8]:
        lines.append(f"{st.size_diff / 1024:+.1f} KiB, {st.count_diff:+d} blocks")
        lines += ["    " + ln for ln in st.traceback.format()]
    ta = json.loads((trace_dir / "base.types.json").read_text())
    tb = json.loads((trace_dir / "end.types.json").read_text())
    grown = sorted(((tb.get(k, 0) - ta.get(k, 0), k) for k in set(ta) | set(tb)), reverse=True)[:30]
    lines.append("\n# live objects by type (growth)")
    lines += [f"{d:+8d}  {k}" for d, k in grown]
    out.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--wave", type=int, default=250)
    ap.add_argument("--mark", type=int, default=1000, help="read the RSS every this many jobs (and at the end)")
    ap.add_argument("--s3", action="store_true", help="store in a moto S3 server instead of local files")
    ap.add_argument("--webhooks", action="store_true", help="a webhook per job, delivered by a webhook worker")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--realistic", action="store_true",
                    help="the settings of a real run: 64x64, 4 steps, a unique prompt per job, INFO logging, "
                         "thumbnails, S3 and webhooks (each can still be set below)")
    ap.add_argument("--size", type=int, default=None, help="width and height (8; 64 with --realistic)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (1; 4 with --realistic)")
    ap.add_argument("--fixed-seed", action="store_true",
                    help="every job the same seed (with one prompt: the same image every time)")
    ap.add_argument("--unique-prompts", action="store_true", default=None,
                    help="a different prompt per job (one prompt for every job unless --realistic)")
    ap.add_argument("--log-level", default=None, help="the workers' -l (WARNING; INFO with --realistic)")
    ap.add_argument("--thumbnail-px", type=int, default=None,
                    help="BATCHRENDER_THUMBNAIL_PX (the settings' default, 256, unless given; 0: none)")
    ap.add_argument("--trace", type=Path, default=None,
                    help="trace the render worker's allocations from the warm-up mark on (tracemalloc) and write "
                         "what is still alive at the last mark to this file (slower; for finding a leak)")
    args = ap.parse_args()
    if args.realistic:
        args.s3 = args.webhooks = True
    args.size = args.size or (64 if args.realistic else 8)
    args.steps = args.steps or (4 if args.realistic else 1)
    if args.unique_prompts is None:
        args.unique_prompts = bool(args.realistic)
    args.log_level = (args.log_level or ("INFO" if args.realistic else "WARNING")).upper()

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
           "BATCHRENDER_RETENTION_S": "3600", "BATCHRENDER_MESSAGE_TTL_S": "3600",
           "BATCHRENDER_STORAGE_SHARED": "1",  # one host
           **fresh_keys_env(allow_dev_c2pa=True)}  # keys every process of a shared Redis must share
    if args.thumbnail_px is not None:
        env["BATCHRENDER_THUMBNAIL_PX"] = str(args.thumbnail_px)
    trace_dir = None
    if args.trace:
        trace_dir = work / "trace"
        trace_dir.mkdir()
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
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", args.log_level],
            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    runner = [sys.executable, "-m", "celery"]
    if trace_dir is not None:
        runner = [sys.executable, "-c", _TRACED_CELERY, str(trace_dir)]
    worker = subprocess.Popen(
        [*runner, "-A", "worker.app", "worker", "-P", "solo", "-Q", queues,
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", args.log_level],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        time.sleep(2)
        client = Client(Settings.from_env(env))
        request = {"prompt": "a small test render", "width": args.size, "height": args.size, "steps": args.steps,
                   **({"webhook": receiver.url} if receiver else {})}
        submitted = [0]

        def prompt() -> str:
            submitted[0] += 1
            if not args.unique_prompts:
                return request["prompt"]
            n = submitted[0]
            return (f"a {_WORDS[n % 17]} watercolour of a {_WORDS[17 + (n // 17) % 16]} by the sea, "
                    f"study {n}, {_WORDS[(n // 272) % 17]} light")

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
                ids = [client.submit({**request, "prompt": prompt(), "seed": 7 if args.fixed_seed else done + i})
                       for i in range(k)]
                for j in ids:
                    client.wait(j, timeout=600, poll_s=0.02)
                events_settled()
                done += k
            return time.perf_counter() - t

        run(args.warmup)
        snap(trace_dir, "base")
        base = rss_kib(worker.pid)
        marks = {0: base}
        hook_marks = {0: rss_kib(hooks.pid)} if hooks else {}
        t_total = 0.0
        done = 0
        for target in sorted({*range(args.mark, args.jobs, args.mark), args.jobs}):
            t_total += run(target - done)
            done = target
            marks[done] = rss_kib(worker.pid)
            if hooks:
                hook_marks[done] = rss_kib(hooks.pid)
        snap(trace_dir, "end")
        idle_before = rss_kib(worker.pid)
        time.sleep(min(60.0, t_total / 4))
        idle_after = rss_kib(worker.pid)
    finally:
        if client is not None:
            client.close()
        for proc in (worker, hooks):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)
        redis_proc.terminate()
        if receiver is not None:
            received = len(receiver.received)
            receiver.__exit__()
        if moto is not None:
            moto.stop()
        log.close()
        if trace_dir is not None and (trace_dir / "end.snap").exists():
            trace_report(trace_dir, args.trace)
        shutil.rmtree(work, ignore_errors=True)

    per_k = (marks[done] - base) / 1024 / (done / 1000)
    path = ("S3 (moto)" if args.s3 else "local storage") + (", a webhook per job (own worker)" if args.webhooks else "")
    settings = {"size": args.size, "steps": args.steps, "unique_prompts": args.unique_prompts,
                "log_level": args.log_level, "thumbnail_px": int(env.get("BATCHRENDER_THUMBNAIL_PX", 256)),
                "traced": args.trace is not None}
    print(f"render worker RSS, tiny model {args.size}x{args.size}/{args.steps} step(s), "
          f"{'unique prompts' if args.unique_prompts else 'one prompt'}, {args.log_level} logging, "
          f"thumbnails {settings['thumbnail_px'] or 'off'}, {path}, after {args.warmup} warm-up jobs")
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
        args.out.write_text(json.dumps({"warmup": args.warmup, "s3": args.s3, "webhooks": args.webhooks, **settings,
                                        "rss_kib": marks, "webhook_worker_rss_kib": hook_marks,
                                        "webhook_worker_growth_mib_per_1000": hook_per_k,
                                        "webhook_requests_received": received if receiver is not None else None, "growth_mib_per_1000": per_k,
                                        "idle_growth_mib": (idle_after - idle_before) / 1024,
                                        "jobs_per_s": done / t_total, "python": platform.python_version(),
                                        "malloc": malloc_settings(env),
                                        "platform": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
