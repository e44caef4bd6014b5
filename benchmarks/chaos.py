"""Chaos on loopback: every part fails while jobs flow; afterwards, count what was lost.

    .venv/bin/python benchmarks/chaos.py [--scenario main|s3-outage|all] [--jobs 320] [--duration-s 300]
                                         [--outage-s 600] [--out benchmarks/results/chaos.json]

Real parts only: a private redis-server (AOF, fsync always), ``celery worker`` processes (solo
pool, the tiny random-weight model), a moto S3 server behind a fault-injecting proxy, a webhook
receiver that verifies every signature, the producer's Python client.

``main``: jobs are submitted in batches of 1-8 (each with a webhook) for ``--duration-s`` while
  * each render worker is SIGKILLed (whole process group) every 15-25 s and started again, the
    webhook worker every 40-70 s;
  * Redis drops every client connection every 3 s (``CLIENT KILL TYPE normal``) and is SIGKILLed
    once, then restarted on its AOF;
  * S3 answers 503 to 20 % of requests and drops 4 % of connections;
  * the webhook receiver answers 500 to 20 % of deliveries and is down for 60 s.
Then the faults stop, the fleet drains, and the accounting runs.

``s3-outage``: S3 refuses every request for ``--outage-s`` (default 600 s) while jobs run; the
rendered, signed images must wait (no re-render) and every job must succeed once S3 is back.

Accounting (per scenario; the JSON has these keys): submitted, succeeded, failed (with codes),
lost (accepted, no record), stuck (not ended after the drain), duplicate_objects (objects of a
succeeded job beyond its recorded outputs), orphan_objects (objects of no succeeded job),
webhook_missing (a job's terminal event or a batch's ``batch.completed`` never received),
webhook_duplicates_after_dedup (one logical event under two webhook ids),
webhook_pending_forever (events still pending after the drain), signature_failures (bad webhook
signatures + sampled C2PA manifests that are not Trusted), workers_dead_at_end, drain_s.
Prints figures; asserts nothing; exit 0 even when something was lost (read the table).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.fleet import fresh_keys_env  # noqa: E402
from tests.faults import FaultProxy  # noqa: E402 - test doubles of the repo, reused here
from tests.workers import RedisServer, WorkerProcess  # noqa: E402

SECRET = "whsec_" + "Y2hhb3MtYmVuY2htYXJrLXNlY3JldC0wMDAwMDA="
TERMINAL = {"succeeded", "failed", "blocked", "canceled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the webhook receiver ----------------------------------------------------------------------
class FlakyReceiver:
    """A loopback receiver on a fixed port: verifies each signature as it arrives, answers 500 to
    ``p_fail`` of deliveries, and can be taken down and brought back on the same port."""

    def __init__(self, p_fail: float, seed: int) -> None:
        from standardwebhooks.webhooks import Webhook

        self.port = free_port()
        self.p_fail = p_fail
        self.rng = random.Random(seed)
        self.verifier = Webhook(SECRET)
        self.lock = threading.Lock()
        self.events: list[tuple[str, dict]] = []  # (webhook-id, body) of each 2xx answered delivery
        self.deliveries = 0
        self.bad_signatures = 0
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _respond(self, req) -> tuple[int, dict]:
        try:
            self.verifier.verify(req.body, req.headers)
        except Exception:  # noqa: BLE001 - any verification failure counts
            with self.lock:
                self.bad_signatures += 1
            return 400, {}
        with self.lock:
            self.deliveries += 1
            if self.rng.random() < self.p_fail:
                return 500, {}
            self.events.append((req.headers["webhook-id"], json.loads(req.body)))
        return 204, {}

    def up(self) -> None:
        from webhooks.testing import LoopbackReceiver

        if self.server is None:
            self.server = LoopbackReceiver(self._respond, port=self.port).__enter__()

    def down(self) -> None:
        if self.server is not None:
            self.server.__exit__()
            self.server = None


# -- the fleet ---------------------------------------------------------------------------------
@dataclass
class Slot:
    name: str
    queues: str
    app: str
    proc: WorkerProcess | None = None
    kills: int = 0
    died_on_its_own: int = 0
    next_kill: float = 0.0


class Rig:
    def __init__(self, work: Path, *, bucket: str, visibility_s: int, seed: int,
                 record_ttl_s: int = 7 * 24 * 3600, scheduler: str = "fair") -> None:
        from moto.server import ThreadedMotoServer

        from worker.tiny import build_tiny_pipeline

        self.work = work
        # moto servers in one process share their state: each scenario gets a bucket of its own
        self.bucket = bucket
        self.rng = random.Random(seed)
        self.redis = RedisServer(free_port(), work / "redis").start()
        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.proxy = FaultProxy(f"http://127.0.0.1:{self.moto_port}", seed=seed).__enter__()
        home = work / "home"
        (home / "models").mkdir(parents=True)
        build_tiny_pipeline(home / "models" / "tiny")
        self.env = {
            "BATCHRENDER_HOME": str(home), "BATCHRENDER_REDIS_URL": self.redis.url,
            "BATCHRENDER_STORAGE_URL": f"s3://{bucket}/renders", "BATCHRENDER_S3_ENDPOINT_URL": self.proxy.url,
            "BATCHRENDER_S3_PATH_STYLE": "true", "BATCHRENDER_S3_ACCESS_KEY_ID": "test",
            "BATCHRENDER_S3_SECRET_ACCESS_KEY": "test", "BATCHRENDER_S3_MAX_ATTEMPTS": "3",
            "BATCHRENDER_WEBHOOK_SECRET": SECRET, "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            # ~7 minutes of retries: spans the receiver's outage several times over
            "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,1,2,4,8,15,30,30,60,60,60,60,60",
            "BATCHRENDER_WEBHOOK_TIMEOUT_S": "5",
            "BATCHRENDER_SOFT_TIME_LIMIT_S": "20", "BATCHRENDER_HARD_TIME_LIMIT_S": "25",
            "BATCHRENDER_VISIBILITY_TIMEOUT_S": str(visibility_s),
            "BATCHRENDER_BATCH_PUBLISH_GRACE_S": "20", "BATCHRENDER_RECORD_TTL_S": str(record_ttl_s),
            "BATCHRENDER_RETENTION_S": str(record_ttl_s),
            **fresh_keys_env(allow_dev_c2pa=True),  # keys every process of a shared Redis must share
            "BATCHRENDER_SCHEDULER": scheduler,
        }
        if visibility_s > 3000:  # the outage scenario: default time limits
            for k in ("BATCHRENDER_SOFT_TIME_LIMIT_S", "BATCHRENDER_HARD_TIME_LIMIT_S"):
                del self.env[k]
        self.slots: list[Slot] = []
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.moto_port}", region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.s3.create_bucket(Bucket=bucket)
        from jobs.settings import Settings
        from producer.client import Client

        self.settings = Settings.from_env(self.env)
        self.client = Client(self.settings)

    def add(self, name: str, queues: str, app: str) -> Slot:
        slot = Slot(name, queues, app)
        self.slots.append(slot)
        self.start(slot)
        return slot

    def start(self, slot: Slot) -> None:
        n = slot.kills + slot.died_on_its_own
        slot.proc = WorkerProcess(self.env, self.work / f"{slot.name}-{n}.log", queues=slot.queues,
                                  name=slot.name, app=slot.app)

    def kill(self, slot: Slot) -> None:
        if slot.proc.proc.poll() is not None:
            slot.died_on_its_own += 1
            log(f"{slot.name} had died on its own (exit {slot.proc.proc.returncode})")
        else:
            slot.proc.kill()
            slot.kills += 1
        slot.proc._log.close()
        self.start(slot)

    def revive_dead(self) -> None:
        for slot in self.slots:
            if slot.proc.proc.poll() is not None:
                self.kill(slot)  # counts it as died on its own, starts a new one

    def close(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.stop()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
        self.proxy.__exit__(None, None, None)
        self.moto.stop()
        self.redis.stop()


# -- submission --------------------------------------------------------------------------------
@dataclass
class Ledger:
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> batch id
    batches: set[str] = field(default_factory=set)
    not_queued: list[str] = field(default_factory=list)  # told to the caller by BatchIncomplete
    refused_batches: int = 0  # nothing recorded (Redis down at submit): the caller was told
    lock: threading.Lock = field(default_factory=threading.Lock)


def submitter(rig: Rig, ledger: Ledger, total: int, until: float, webhook: str, stop: threading.Event,
              seed: int) -> None:
    from jobs.errors import BatchIncomplete, BrokerUnavailable

    rng = random.Random(seed)
    n = 0
    while n < total and not stop.is_set():
        size = min(rng.randint(1, 8), total - n)
        reqs = [{"prompt": f"chaos test render {n + i}", "seed": n + i, "width": 32, "height": 32, "steps": 2,
                 "custom_id": f"c{n + i}", **({"webhook": webhook} if webhook else {})} for i in range(size)]
        try:
            sub = rig.client.submit_batch(reqs)
            queued, bid = sub.job_ids, sub.batch_id
        except BatchIncomplete as e:
            queued, bid = e.queued, e.batch_id
            with ledger.lock:
                ledger.not_queued += e.not_queued
            if not queued:
                with ledger.lock:
                    ledger.refused_batches += 1
                time.sleep(0.5)
                continue  # nothing queued: submit the same requests again, as a client would
        except BrokerUnavailable:
            with ledger.lock:
                ledger.refused_batches += 1
            time.sleep(0.5)
            continue
        with ledger.lock:
            ledger.batches.add(bid)
            for j in queued:
                ledger.accepted[j] = bid
        n += len(queued)
        left = max(0.0, until - time.monotonic())
        time.sleep(min(5.0, left / max(1, (total - n) / 4.5)))


# -- accounting --------------------------------------------------------------------------------
def record(rig: Rig, job_id: str):
    """The job's record, or None when it does not exist (a lost job)."""
    from jobs.errors import JobNotFound

    try:
        return rig.client.store.get(job_id)
    except JobNotFound:
        return None


def snapshot(rig: Rig, ledger: Ledger) -> dict[str, str | None]:
    out = {}
    for j in list(ledger.accepted) + list(ledger.not_queued):
        rec = record(rig, j)
        out[j] = rec.status.value if rec else None
    return out


def pending_events(rig: Rig) -> list[str]:
    import redis

    from webhooks.store import PENDING, DeliveryStore

    r = redis.Redis.from_url(rig.redis.url)
    try:
        store = DeliveryStore(r)
        return [i for i in store.pending_ids(100000) if (rec := store.get(i)) and rec.state == PENDING]
    finally:
        r.close()


def drain(rig: Rig, ledger: Ledger, receiver: FlakyReceiver | None, limit_s: float) -> float:
    """Wait until every job ended and every event settled; returns seconds taken (or the limit)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        rig.revive_dead()
        try:
            for bid in list(ledger.batches):
                rig.client.batch(bid)  # runs reconcile: a batch always completes
            states = snapshot(rig, ledger)
            ended = all(s in TERMINAL for s in states.values())
            settled = not pending_events(rig)
        except Exception as e:  # noqa: BLE001 - Redis may still be coming back
            log(f"drain: {type(e).__name__}: {e}")
            ended = settled = False
        if ended and settled and (receiver is None or not missing_events(rig, ledger, receiver, states)):
            return time.monotonic() - t0
        time.sleep(2)
    return limit_s


def missing_events(rig: Rig, ledger: Ledger, receiver: FlakyReceiver, states: dict[str, str | None]) -> list[str]:
    with receiver.lock:
        got = {(b["type"], b["data"].get("job_id") or b["data"].get("batch_id")) for _, b in receiver.events}
    missing = [j for j, s in states.items() if s in TERMINAL and (f"job.{s}", j) not in got]
    batches = {ledger.accepted.get(j) for j in ledger.accepted}
    missing += [b for b in batches if b and ("batch.completed", b) not in got]
    return missing


def account(rig: Rig, ledger: Ledger, receiver: FlakyReceiver | None, drain_s: float,
            c2pa_sample: int, seed: int) -> dict:
    from provenance.verify import verify

    states = snapshot(rig, ledger)
    accepted = list(ledger.accepted)
    statuses = Counter(states[j] or "missing" for j in accepted)
    failed_codes = Counter()
    expected_keys: dict[str, str] = {}
    companions: set[str] = set()
    succeeded = []
    for j in accepted:
        rec = record(rig, j)
        if rec is None:
            continue
        if rec.status.value == "failed":
            failed_codes[(rec.error or {}).get("code", "?")] += 1
        if rec.status.value == "succeeded":
            succeeded.append(rec)
            for img in rec.result.images:
                expected_keys[img.key] = j
                # Recorded beside the image: its preview and its renditions (not duplicates).
                companions.update(k for k in [img.thumbnail_key, *(x.key for x in img.renditions)] if k)
    job_of = {j: True for j in accepted + ledger.not_queued}
    objects = []
    for page in rig.s3.get_paginator("list_objects_v2").paginate(Bucket=rig.bucket):
        objects += [o["Key"] for o in page.get("Contents", [])]
    succeeded_ids = {r.job_id for r in succeeded}
    duplicates = orphans = 0
    orphan_examples: list[dict] = []
    for key in objects:
        rel = key.split("/", 1)[1] if key.startswith("renders/") else key
        if rel in expected_keys or key in expected_keys or rel in companions or key in companions \
                or rel.startswith("_health/"):
            continue  # _health/: the workers' storage markers (storage/shared_check.py), not outputs
        parts = rel.split("/")
        owner = next((p for p in parts if p in job_of), None)
        if owner in succeeded_ids:
            duplicates += 1
        else:
            orphans += 1
            if len(orphan_examples) < 10:  # whose, and how that job ended
                o = record(rig, owner) if owner else None
                orphan_examples.append({"key": key, "job": owner, "status": o.status.value if o else None,
                                        "error": (o.error or {}).get("code") if o else None,
                                        "attempts": o.attempts if o else None})
    found = sum(1 for k in expected_keys if ("renders/" + k) in set(objects) or k in set(objects))

    # C2PA: a sample of stored images, fetched from S3 directly, must verify as Trusted.
    ca = (Path(rig.env["BATCHRENDER_HOME"]) / "keys" / "ca.pem").read_text()
    rng = random.Random(seed)
    sample = rng.sample(sorted(expected_keys), min(c2pa_sample, len(expected_keys)))
    untrusted = 0
    objset = set(objects)
    for k in sample:
        key = k if k in objset else "renders/" + k
        data = rig.s3.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
        if verify(data, ca).state != "Trusted":
            untrusted += 1

    out = {
        "submitted": len(accepted),
        "batches": len(ledger.batches),
        "not_queued_told_to_caller": len(ledger.not_queued),
        "refused_at_submit_batches": ledger.refused_batches,
        "statuses": dict(statuses),
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "failed_codes": dict(failed_codes),
        "lost": statuses.get("missing", 0),
        "stuck": sum(1 for j in accepted if states[j] not in TERMINAL and states[j] is not None),
        "not_queued_stuck": sum(1 for j in ledger.not_queued if states[j] not in TERMINAL),
        "objects": len(objects),
        "outputs_found": found,
        "outputs_recorded": len(expected_keys),
        "duplicate_objects": duplicates,
        "orphan_objects": orphans,
        "orphan_examples": orphan_examples,
        "c2pa_sampled": len(sample),
        "c2pa_not_trusted": untrusted,
        "drain_s": round(drain_s, 1),
        "workers_dead_at_end": sum(1 for s in rig.slots if s.proc.proc.poll() is not None),
        "workers_died_on_their_own": sum(s.died_on_its_own for s in rig.slots),
        "worker_kills": sum(s.kills for s in rig.slots),
        "s3_requests": rig.proxy.requests,
        "s3_refused": rig.proxy.refused,
    }
    pending = pending_events(rig)
    out["webhook_pending_forever"] = len(pending)
    if receiver is not None:
        with receiver.lock:
            events = list(receiver.events)
        by_id: dict[str, dict] = {}
        for wid, body in events:
            by_id.setdefault(wid, body)
        logical = Counter((b["type"], b["data"].get("job_id") or b["data"].get("batch_id")) for b in by_id.values())
        out.update({
            "webhook_deliveries_accepted": len(events),
            "webhook_unique_ids": len(by_id),
            "webhook_duplicates_before_dedup": len(events) - len(by_id),
            "webhook_duplicates_after_dedup": sum(n - 1 for n in logical.values() if n > 1),
            "webhook_missing": len(missing_events(rig, ledger, receiver, states)),
            "webhook_bad_signatures": receiver.bad_signatures,
        })
        out["signature_failures"] = receiver.bad_signatures + untrusted
    else:
        out["signature_failures"] = untrusted
    return out


# -- scenarios ---------------------------------------------------------------------------------
def run_main(args) -> dict:
    import redis

    work = Path(tempfile.mkdtemp(prefix="br-chaos-"))
    rig = Rig(work, bucket="chaos-main", visibility_s=45, seed=args.seed, scheduler=args.scheduler)
    receiver = FlakyReceiver(p_fail=0.2, seed=args.seed)
    receiver.up()
    rig.proxy.p_503, rig.proxy.p_reset = 0.20, 0.04
    events: list[str] = []
    stop = threading.Event()
    ledger = Ledger()
    try:
        renders = [rig.add(f"render{i}", "render.tiny", "worker.app") for i in range(args.render_workers)]
        hooks = rig.add("webhooks", "webhooks", "webhooks.app")
        t0 = time.monotonic()
        end = t0 + args.duration_s
        for s in renders:
            s.next_kill = t0 + rig.rng.uniform(15, 25)
        hooks.next_kill = t0 + rig.rng.uniform(40, 70)
        sub = threading.Thread(target=submitter, args=(rig, ledger, args.jobs, t0 + args.duration_s * 0.8,
                                                       receiver.url, stop, args.seed), daemon=True)
        sub.start()
        admin = redis.Redis.from_url(rig.redis.url, socket_timeout=2)
        redis_kill_at = t0 + args.duration_s * 0.4
        rx_down_at, rx_up_at = t0 + args.duration_s * 0.55, t0 + args.duration_s * 0.55 + 60
        next_blip = t0 + 3
        blips = 0
        while time.monotonic() < end or sub.is_alive():
            now = time.monotonic()
            if now >= end and sub.is_alive():  # the faults keep going until every job is submitted
                end = now + 1
            for s in rig.slots:
                if now >= s.next_kill:
                    rig.kill(s)
                    s.next_kill = now + (rig.rng.uniform(15, 25) if s in renders else rig.rng.uniform(40, 70))
            if now >= next_blip:
                try:
                    blips += 1
                    admin.client_kill_filter(_type="normal", skipme=True)
                except redis.RedisError:
                    pass
                next_blip = now + 3
            if redis_kill_at and now >= redis_kill_at:
                log("SIGKILL redis; restart on its AOF in 3 s")
                rig.redis.kill()
                time.sleep(3)
                rig.redis.start()
                events.append(f"redis killed at {redis_kill_at - t0:.0f}s")
                redis_kill_at = 0
            if rx_down_at and now >= rx_down_at:
                log("webhook receiver down for 60 s")
                receiver.down()
                rx_down_at = 0
            if rx_up_at and not rx_down_at and now >= rx_up_at:
                receiver.up()
                log("webhook receiver back")
                rx_up_at = 0
            time.sleep(0.1)
        chaos_s = time.monotonic() - t0
        log(f"chaos over after {chaos_s:.0f}s ({len(ledger.accepted)} jobs accepted): faults stop, draining")
        receiver.up()
        rig.proxy.p_503 = rig.proxy.p_reset = 0.0
        admin.close()
        drain_s = drain(rig, ledger, receiver, args.drain_limit_s)
        result = account(rig, ledger, receiver, drain_s, args.c2pa_sample, args.seed)
        result.update({"scenario": "main", "chaos_s": round(chaos_s, 1), "redis_kills": 1, "redis_connection_drops": blips,
                       "receiver_outage_s": 60, "s3_fault_rates": {"503": 0.20, "reset": 0.04},
                       "receiver_fail_rate": 0.20, "render_workers": args.render_workers})
        return result
    finally:
        stop.set()
        receiver.down()
        rig.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")


def run_outage(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="br-chaos-outage-"))
    rig = Rig(work, bucket="chaos-s3-outage", visibility_s=3600, seed=args.seed, scheduler=args.scheduler)
    ledger = Ledger()
    try:
        for i in range(args.render_workers):
            rig.add(f"render{i}", "render.tiny", "worker.app")
        for s in rig.slots:
            s.proc.wait_ready(120)
        rig.proxy.down = True
        t0 = time.monotonic()
        log(f"S3 down for {args.outage_s:.0f}s; submitting {args.outage_jobs} jobs")
        stop = threading.Event()
        submitter(rig, ledger, args.outage_jobs, t0 + min(60.0, args.outage_s / 4), "", stop, args.seed)
        while time.monotonic() - t0 < args.outage_s:
            rig.revive_dead()
            time.sleep(1)
        states = snapshot(rig, ledger)
        during = Counter(states.values())
        rig.proxy.down = False
        log(f"S3 back; during the outage: {dict(during)}")
        drain_s = drain(rig, ledger, None, args.drain_limit_s)
        result = account(rig, ledger, None, drain_s, args.c2pa_sample, args.seed)
        attempts = Counter(r.attempts for j in ledger.accepted if (r := record(rig, j)))
        result.update({"scenario": "s3_outage", "outage_s": args.outage_s, "statuses_at_end_of_outage": dict(during),
                       "attempts": {str(k): v for k, v in sorted(attempts.items())}})
        return result
    finally:
        rig.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


ROWS = ["submitted", "succeeded", "failed", "lost", "stuck", "duplicate_objects", "orphan_objects",
        "webhook_missing", "webhook_duplicates_after_dedup", "webhook_pending_forever", "signature_failures",
        "workers_dead_at_end", "drain_s", "worker_kills", "redis_kills", "redis_connection_drops",
        "s3_refused", "webhook_duplicates_before_dedup", "c2pa_sampled", "not_queued_told_to_caller"]


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=["main", "s3-outage", "all"], default="all")
    ap.add_argument("--jobs", type=int, default=320)
    ap.add_argument("--duration-s", type=float, default=300.0)
    ap.add_argument("--render-workers", type=int, default=2)
    ap.add_argument("--outage-s", type=float, default=600.0)
    ap.add_argument("--outage-jobs", type=int, default=40)
    ap.add_argument("--drain-limit-s", type=float, default=900.0)
    ap.add_argument("--c2pa-sample", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scheduler", choices=["fair", "fifo"], default="fair",
                    help="BATCHRENDER_SCHEDULER of every process (jobs/fairshare.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    results: dict[str, dict] = {}
    if args.scenario in ("main", "all"):
        results["main"] = run_main(args)
    if args.scenario in ("s3-outage", "all"):
        results["s3_outage"] = run_outage(args)

    import celery
    import kombu

    print(f"\nchaos on loopback  python {platform.python_version()}  celery {celery.__version__}  "
          f"kombu {kombu.__version__}  {platform.platform()}  cores {os.cpu_count()}")
    names = list(results)
    print(f"{'':34}" + "".join(f"{n:>14}" for n in names))
    for row in ROWS:
        print(f"{row:34}" + "".join(f"{str(results[n].get(row, '-')):>14}" for n in names))
    for n in names:
        if results[n].get("failed_codes"):
            print(f"{n}: failed by code {results[n]['failed_codes']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "python": platform.python_version(), "platform": platform.platform(),
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
