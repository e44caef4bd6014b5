"""A fleet of hosts that share only Redis and S3 (issue 25), on one machine, with real namespaces.

    sudo .venv/bin/python benchmarks/fleet.py [--jobs 40] [--link-down-s 60] [--failover-s 40]
                                              [--out benchmarks/results/fleet.json]

(``make fleet``; root is needed for network namespaces.) Real parts only:

* Redis behind Sentinel: a primary and a replica with ``requirepass`` and three sentinels, on the
  bridge's address; a moto S3 server and a webhook receiver there too (tests/netns.py);
* an API host and two render hosts (``batchrender api``, ``batchrender worker``), each in its own
  network, UTS and PID namespace with its own home, HOME, TMPDIR and working directory; the only
  things they share are the Redis URL (``sentinel://``), S3, and the keys every host must be given;
* a tenant submitting over HTTP to the API host, with an ``Idempotency-Key`` per job, retrying the
  same key on 503 (what a client does while Redis fails over).

Phases, in order:

``isolation``  a negative control: a worker on a host pointed at ``127.0.0.1`` (where the shared
               Redis is not) must fail, or the hosts are not hosts.
``steady``     N jobs with webhooks: N succeeded, N unique objects, N ``job.succeeded`` events,
               work on both render hosts.
``host_kill``  jobs long enough to be mid-call; PID 1 of one render host's PID namespace is
               SIGKILLed while it renders (the machine dies): its jobs finish on the other host.
               The host is started again.
``link_down``  one render host's link is down for ``--link-down-s`` while jobs flow; the other
               carries on; the link comes back and the host renders again (its processes never
               exited).
``failover``   jobs submitted for ``--failover-s``; the Redis primary is SIGKILLed part way; the
               sentinels promote the replica; every accepted job must succeed exactly once.

Accounting over every job accepted (the JSON has these keys): accepted, succeeded, failed, lost
(accepted, no record), stuck (not ended after the drain), duplicate_objects, orphan_objects,
webhook_missing (a job without its ``job.succeeded`` event), webhook_duplicates (one job's
terminal event under two event ids), workers_dead (host processes that exited on their own), per
phase the same, and which host rendered each job. Prints the table; exit 1 when any of lost,
stuck, duplicates, webhook missing or workers dead is not 0 (the test runs it and checks the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402 - test doubles of the repo, reused here
from tests.sentinels import MASTER, SentinelCluster  # noqa: E402
from tests.workers import wait_for  # noqa: E402

EXE = str(Path(sys.executable).with_name("batchrender"))
TERMINAL = {"succeeded", "failed", "blocked", "canceled"}
API_PORT = 8000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Fleet:
    """The shared services on the bridge, the API host and the render hosts."""

    def __init__(self, work: Path, *, visibility_s: int) -> None:
        from moto.server import ThreadedMotoServer

        from jobs.fleet import fresh_keys_env
        from provenance.devkeys import init_dev_keys
        from webhooks.testing import LoopbackReceiver
        from worker.tiny import build_tiny_pipeline

        self.work = work
        self.bridge = netns.Bridge(work / "hosts")
        addr = self.bridge.address
        self.redis = SentinelCluster(work / "redis", host=addr).start()
        from tests.conftest import free_port

        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address=addr, port=self.moto_port, verbose=False)
        self.moto.start()
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per S3 request
        self.receiver = LoopbackReceiver(host=addr).__enter__()
        self.bucket = f"fleet-{uuid.uuid4().hex[:8]}"
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=f"http://{addr}:{self.moto_port}", region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")
        self.s3.create_bucket(Bucket=self.bucket)
        # One CA for the fleet, its files given to every worker (a real deployment's chain from its
        # CA; dev keys made per host would each have a CA of their own, and the fleet check refuses
        # that). They are development keys, so the run says it knows.
        ca = init_dev_keys(work / "c2pa")
        self.ca_pem = ca.ca_cert.read_text()
        self.model = build_tiny_pipeline(work / "model" / "tiny")
        self.shared = {
            **self.redis.env(),
            "BATCHRENDER_STORAGE_URL": f"s3://{self.bucket}/renders",
            "BATCHRENDER_S3_ENDPOINT_URL": f"http://{addr}:{self.moto_port}", "BATCHRENDER_S3_PATH_STYLE": "true",
            "BATCHRENDER_S3_ACCESS_KEY_ID": "test", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "test",
            "BATCHRENDER_C2PA_CERT_CHAIN": str(ca.cert_chain), "BATCHRENDER_C2PA_PRIVATE_KEY": str(ca.private_key),
            "BATCHRENDER_C2PA_ALLOW_DEV_KEYS": "true",
            "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": addr,
            "BATCHRENDER_WEBHOOK_SCHEDULE_S": "0,1,2,4,8,15,30,30,60,60",
            # Far above a render here (2-40 steps of 64x64, 1-35 s on a loaded 2-core machine) and
            # below the visibility timeout: a job that fails is then a finding, not a slow machine.
            "BATCHRENDER_SOFT_TIME_LIMIT_S": "70", "BATCHRENDER_HARD_TIME_LIMIT_S": "80",
            "BATCHRENDER_VISIBILITY_TIMEOUT_S": str(visibility_s),
            "BATCHRENDER_JOB_SWEEP_EVERY_S": "10", "BATCHRENDER_JOB_SWEEP_OVERDUE_S": "30",
            "BATCHRENDER_WEBHOOK_SWEEP_EVERY_S": "10", "BATCHRENDER_WEBHOOK_SWEEP_OVERDUE_S": "30",
            **fresh_keys_env(),
        }
        base = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
        self.base = {**base, "PYTHONUNBUFFERED": "1"}
        self.api_host = self.bridge.host("fleet-api")
        self.render_hosts = [self.bridge.host("fleet-w1"), self.bridge.host("fleet-w2")]
        self.procs: dict[str, netns.HostProcess] = {}
        self.restarts: Counter = Counter()
        self.died: Counter = Counter()

    # -- processes -------------------------------------------------------------------------------
    def host_env(self, host: netns.Host, **extra: str) -> dict[str, str]:
        return {**self.base, **self.shared, **host.env(), **extra}

    def start_api(self) -> None:
        host = self.api_host
        self.procs[host.name] = host.spawn([EXE, "api", "--host", "0.0.0.0", "--port", str(API_PORT)],
                                           self.host_env(host), f"api-{self.restarts[host.name]}")
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "the API host to answer", every=0.5)

    def start_worker(self, host: netns.Host) -> netns.HostProcess:
        env = self.host_env(host)
        models = Path(env["BATCHRENDER_HOME"]) / "models"
        if not (models / "tiny").exists():  # each render host holds its own copy of the model files
            shutil.copytree(self.model, models / "tiny")
        n = self.restarts[host.name]
        proc = host.spawn([EXE, "worker", "--models", "tiny"], env, f"worker-{n}")
        self.procs[host.name] = proc
        wait_for(lambda: proc.log().count(" ready.") >= 2 or not proc.alive(), 180,
                 f"{host.name}'s render and webhook workers", every=0.5)
        if not proc.alive():
            raise RuntimeError(f"{host.name} exited at start:\n{proc.log()[-3000:]}")
        return proc

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host.address}:{API_PORT}"

    def dead_hosts(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]

    def close(self) -> None:
        for p in self.procs.values():
            p.stop(20)
        self.bridge.close()
        self.receiver.__exit__(None, None, None)
        self.moto.stop()
        self.redis.stop()


class Ledger:
    """Every job a caller was told was accepted, by phase."""

    def __init__(self) -> None:
        self.phase_of: dict[str, str] = {}
        self.lock = threading.Lock()
        self.retries = Counter()

    def add(self, job_id: str, phase: str) -> None:
        with self.lock:
            self.phase_of[job_id] = phase


def submit(api, ledger: Ledger, phase: str, request: dict, deadline_s: float = 180) -> str:
    """POST /v1/jobs with an Idempotency-Key; on 503 / a dropped connection, the same key again."""
    import httpx

    from producer.http_client import ApiError

    key = uuid.uuid4().hex
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            job = api.create_job(request, idempotency_key=key)
            ledger.add(job["id"], phase)
            return job["id"]
        except (ApiError, httpx.HTTPError) as e:
            if isinstance(e, ApiError) and e.status not in (429, 503):
                raise
            ledger.retries[phase] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def job_request(tag: str, webhook: str, steps: int = 2) -> dict:
    return {"prompt": f"a lighthouse on a cliff, {tag}", "width": 64, "height": 64, "steps": steps,
            "seed": abs(hash(tag)) % 10_000, "webhook": webhook}


def states(fleet: "Fleet", ids) -> dict[str, dict]:
    """Each job's status and the process that rendered it (the record's ``worker`` field,
    ``host:pid``), read from Redis through the sentinels (it follows a failover), as ``{"status",
    "worker", "error"}``; ``missing``: no record, ``unknown``: Redis did not answer for a minute."""
    from jobs.names import job_key

    out = {}
    for j in ids:
        for _ in range(60):
            try:
                status, worker, error = fleet.store.r.hmget(job_key(j), "status", "worker", "error")
                out[j] = ({"status": "missing"} if status is None else
                          {"status": status, "worker": worker, "error": json.loads(error) if error else None})
                break
            except Exception:  # noqa: BLE001 - Redis failing over: ask again
                time.sleep(1)
        else:
            out[j] = {"status": "unknown"}
    return out


def wait_ended(fleet, ids, limit_s: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        s = states(fleet, ids)
        if all(v["status"] in TERMINAL or v["status"] == "missing" for v in s.values()):
            return time.monotonic() - t0
        time.sleep(1)
    log(f"{what}: not all ended after {limit_s:.0f} s")
    return limit_s


def host_of(worker: str | None) -> str | None:
    return worker.split(":", 1)[0] if worker else None


# -- phases ------------------------------------------------------------------------------------
def isolation(fleet: Fleet) -> dict:
    """A worker on a host of its own pointed at 127.0.0.1: nothing of the fleet is there."""
    host = fleet.bridge.host("fleet-stray")
    env = fleet.host_env(host, BATCHRENDER_REDIS_URL=f"redis://:{fleet.redis.primary.password}@127.0.0.1:"
                         f"{fleet.redis.primary.port}/0")
    env.pop("BATCHRENDER_REDIS_MASTER_NAME", None)
    t0 = time.monotonic()
    done = host.run([EXE, "worker", "--models", "tiny", "--no-webhooks"], env, timeout=120)
    out = (done.stdout + done.stderr)[-600:]
    refused = done.returncode not in (0, -9)
    log(f"isolation: a worker pointed at 127.0.0.1 exited {done.returncode} after {time.monotonic() - t0:.1f} s")
    return {"exit_code": done.returncode, "refused": refused, "said": out.strip().splitlines()[-1:] if out else []}


def steady(fleet: Fleet, api, ledger: Ledger, n: int) -> dict:
    ids = [submit(api, ledger, "steady", job_request(f"steady {i}", fleet.receiver.url)) for i in range(n)]
    waited = wait_ended(fleet, ids, 300, "steady")
    s = states(fleet, ids)
    return {"jobs": n, "ended_s": round(waited, 1), "hosts": dict(Counter(host_of(v.get("worker")) for v in s.values()))}


def host_kill(fleet: Fleet, api, ledger: Ledger, n: int) -> dict:
    victim = fleet.render_hosts[0]
    ids = [submit(api, ledger, "host_kill", job_request(f"host kill {i}", fleet.receiver.url, steps=40))
           for i in range(n)]

    def rendering_on_victim():
        return [j for j, v in states(fleet, ids).items() if v["status"] == "running"
                and host_of(v.get("worker")) == victim.name]

    mid = wait_for(rendering_on_victim, 120, f"a job rendering on {victim.name}", every=0.2)
    log(f"host_kill: SIGKILL PID 1 of {victim.name} while it renders {len(mid)} job(s)")
    fleet.procs[victim.name].kill_init()
    fleet.restarts[victim.name] += 1
    waited = wait_ended(fleet, ids, 600, "host_kill")
    s = states(fleet, ids)
    finished_elsewhere = sum(1 for j in mid if s[j]["status"] == "succeeded"
                             and host_of(s[j].get("worker")) != victim.name)
    fleet.start_worker(victim)  # the machine comes back
    return {"jobs": n, "killed_mid_call": len(mid), "finished_on_the_other_host": finished_elsewhere,
            "ended_s": round(waited, 1)}


def link_down(fleet: Fleet, api, ledger: Ledger, n: int, down_s: float) -> dict:
    host = fleet.render_hosts[1]
    ids = [submit(api, ledger, "link_down", job_request(f"link down {i}", fleet.receiver.url, steps=12))
           for i in range(n)]
    wait_for(lambda: any(v["status"] == "running" and host_of(v.get("worker")) == host.name
                         for v in states(fleet, ids).values()), 120, f"a job rendering on {host.name}", every=0.2)
    log(f"link_down: {host.name}'s link down for {down_s:.0f} s")
    host.link(False)
    t_down = time.time()
    more = [submit(api, ledger, "link_down", job_request(f"while down {i}", fleet.receiver.url)) for i in range(n)]
    time.sleep(down_s)
    host.link(True)
    t_up = time.time()
    log(f"link_down: {host.name}'s link back")
    waited = wait_ended(fleet, ids + more, 600, "link_down")
    # It resumes: after the link is back, the host renders again (its processes never exited).
    after: list[str] = []

    def rendered_after() -> bool:
        after.extend(submit(api, ledger, "link_down", job_request(f"after {len(after)} {i}", fleet.receiver.url))
                     for i in range(4))
        wait_ended(fleet, after, 120, "link_down after")
        return any(host_of(v.get("worker")) == host.name for v in states(fleet, after).values())

    resumed = False
    try:
        resumed = bool(wait_for(rendered_after, 240, f"{host.name} to render again", every=1))
    except TimeoutError:
        pass
    s = states(fleet, ids + more)
    during = Counter(host_of(v.get("worker")) for j, v in s.items() if j in more)
    return {"jobs": len(ids) + len(more) + len(after), "down_s": round(t_up - t_down, 1), "ended_s": round(waited, 1),
            "rendered_while_down_by": dict(during), "resumed": resumed,
            "process_alive": fleet.procs[host.name].alive()}


def failover(fleet: Fleet, api, ledger: Ledger, duration_s: float) -> dict:
    stop = threading.Event()
    errors: list[str] = []
    count = [0]

    def flow() -> None:
        i = 0
        while not stop.is_set():
            try:
                submit(api, ledger, "failover", job_request(f"failover {i}", fleet.receiver.url, steps=4))
                count[0] += 1
            except Exception as e:  # noqa: BLE001 - counted: a job the caller was refused for good
                errors.append(f"{type(e).__name__}: {e}")
            i += 1
            time.sleep(0.25)

    t = threading.Thread(target=flow, daemon=True)
    t.start()
    time.sleep(duration_s / 3)
    old = fleet.redis.primary.port
    # Async replication: what the primary acknowledged in its last instant may not be on the
    # replica. The producer's WAIT is not in place yet; the run measures what survives as is.
    log(f"failover: SIGKILL the Redis primary (:{old})")
    t_kill = time.monotonic()
    fleet.redis.primary.kill()
    promoted = wait_for(lambda: (p := fleet.redis.master_port()) and p != old and p, 120, "a new master", every=0.2)
    promote_s = time.monotonic() - t_kill
    log(f"failover: the sentinels promoted :{promoted} after {promote_s:.1f} s")
    time.sleep(duration_s * 2 / 3)
    stop.set()
    t.join(60)
    return {"submitted_while_flowing": count[0], "refused_for_good": len(errors), "errors": errors[:5],
            "promoted_after_s": round(promote_s, 1), "retries_on_503": ledger.retries["failover"]}


# -- accounting --------------------------------------------------------------------------------
def account(fleet: Fleet, ledger: Ledger) -> dict:
    from standardwebhooks.webhooks import Webhook

    ids = list(ledger.phase_of)
    s = states(fleet, ids)
    statuses = Counter(v["status"] for v in s.values())
    verifier = Webhook(fleet.tenant.webhook_secret)
    terminal_events: dict[str, set[str]] = defaultdict(set)
    bad_signatures = 0
    for req in list(fleet.receiver.received):
        try:
            payload = verifier.verify(req.body, req.headers)
        except Exception:  # noqa: BLE001 - counted
            bad_signatures += 1
            continue
        if payload["type"].startswith("job.") and payload["type"] != "job.started":
            terminal_events[payload["data"]["job_id"]].add(req.headers["webhook-id"])
    expected: dict[str, str] = {}
    companions: set[str] = set()
    for j, v in s.items():
        if v["status"] != "succeeded":
            continue
        rec = fleet.store.get(j)  # noqa: the record of a succeeded job
        for img in rec.result.images:
            expected[img.key] = j
            companions.update(k for k in [img.thumbnail_key, *(x.key for x in img.renditions)] if k)
    objects = []
    for page in fleet.s3.get_paginator("list_objects_v2").paginate(Bucket=fleet.bucket):
        objects += [o["Key"] for o in page.get("Contents", [])]
    duplicates = orphans = 0
    for key in objects:
        rel = key.removeprefix("renders/")
        if rel in expected or rel in companions or rel.startswith("_health/"):
            continue
        owner = next((p for p in rel.split("/") if p in s), None)
        if owner and s[owner]["status"] == "succeeded":
            duplicates += 1
        else:
            orphans += 1
    objset = {k.removeprefix("renders/") for k in objects}
    per_phase = {}
    for phase in dict.fromkeys(ledger.phase_of.values()):
        mine = [j for j, p in ledger.phase_of.items() if p == phase]
        per_phase[phase] = {
            "accepted": len(mine),
            "succeeded": sum(1 for j in mine if s[j]["status"] == "succeeded"),
            "lost": sum(1 for j in mine if s[j]["status"] == "missing"),
            "webhook_missing": sum(1 for j in mine if s[j]["status"] in TERMINAL and not terminal_events.get(j)),
            "hosts": dict(Counter(host_of(s[j].get("worker")) or "-" for j in mine)),
        }
    return {
        "accepted": len(ids),
        "succeeded": statuses.get("succeeded", 0),
        "statuses": dict(statuses),
        "failed_codes": dict(Counter((v.get("error") or {}).get("code", "?") for v in s.values()
                                     if v["status"] == "failed")),
        "failures": [{"job": j, "phase": ledger.phase_of.get(j), "host": host_of(v.get("worker")),
                      "error": v.get("error")} for j, v in s.items() if v["status"] == "failed"],
        "lost": statuses.get("missing", 0),
        "stuck": sum(1 for v in s.values() if v["status"] not in TERMINAL and v["status"] != "missing"),
        "unique_objects": sum(1 for k in expected if k in objset),
        "objects_missing": sum(1 for k in expected if k not in objset),
        "duplicate_objects": duplicates,
        "orphan_objects": orphans,
        "webhook_missing": sum(1 for j, v in s.items() if v["status"] in TERMINAL and not terminal_events.get(j)),
        "webhook_duplicates": sum(1 for ids_ in terminal_events.values() if len(ids_) > 1),
        "webhook_bad_signatures": bad_signatures,
        "workers_dead": fleet.dead_hosts(),
        "per_phase": per_phase,
    }


def c2pa_check(fleet: Fleet, sample: list[str]) -> dict:
    """Images from both hosts verify against the one fleet CA."""
    from provenance.verify import verify

    states_ = Counter()
    for j in sample:
        rec = fleet.store.get(j)
        data = fleet.s3.get_object(Bucket=fleet.bucket, Key="renders/" + rec.result.images[0].key)["Body"].read()
        states_[verify(data, fleet.ca_pem).state] += 1
    return dict(states_)


def run(work: Path, *, jobs: int, link_down_s: float, failover_s: float, visibility_s: int) -> dict:
    import redis

    from jobs.settings import Settings
    from jobs.store import JobStore
    from producer.http_client import HttpClient
    from producer.tenants import Tenants

    why = netns.available()
    if why:
        raise SystemExit(f"cannot make hosts here: {why}")
    t_start = time.monotonic()
    fleet = Fleet(work, visibility_s=visibility_s)
    try:
        settings = Settings.from_env({**fleet.shared, "BATCHRENDER_HOME": str(work / "operator")})
        from jobs.redisconn import for_settings

        r = for_settings(settings)
        fleet.tenant = Tenants(r, settings).create("fleet-tenant")
        fleet.store = JobStore.from_url(settings.redis_url, settings.record_ttl_s, settings)
        out: dict = {"isolation": isolation(fleet)}
        fleet.start_api()
        for host in fleet.render_hosts:
            fleet.start_worker(host)
        ledger = Ledger()
        with HttpClient(fleet.api_url, fleet.tenant.api_key, timeout=30) as api:
            out["steady"] = steady(fleet, api, ledger, jobs)
            log(f"steady: {out['steady']}")
            out["host_kill"] = host_kill(fleet, api, ledger, max(8, jobs // 4))
            log(f"host_kill: {out['host_kill']}")
            out["link_down"] = link_down(fleet, api, ledger, max(6, jobs // 5), link_down_s)
            log(f"link_down: {out['link_down']}")
            out["failover"] = failover(fleet, api, ledger, failover_s)
            log(f"failover: {out['failover']}")
            t0 = time.monotonic()
            wait_ended(fleet, list(ledger.phase_of), 600, "drain")
            # Terminal events: delivered soon after the jobs end (retries span the failover).
            try:
                wait_for(lambda: account(fleet, ledger)["webhook_missing"] == 0, 180, "every terminal event", every=2)
            except TimeoutError:
                log("drain: terminal events still missing after 180 s")
            out["drain_s"] = round(time.monotonic() - t0, 1)
        out["accounting"] = account(fleet, ledger)
        hosts_seen = defaultdict(list)
        for j, v in states(fleet, ledger.phase_of).items():
            if v["status"] == "succeeded":
                hosts_seen[host_of(v.get("worker"))].append(j)
        out["c2pa"] = c2pa_check(fleet, [ids[0] for ids in hosts_seen.values() if ids])
        out["restarts"] = dict(fleet.restarts)
        out["total_s"] = round(time.monotonic() - t_start, 1)
        r.close()
        return out
    except BaseException:
        for name, p in fleet.procs.items():
            log(f"--- {name} log tail ---\n{p.log()[-2500:]}")
        raise
    finally:
        fleet.close()


def ok(out: dict) -> bool:
    a = out["accounting"]
    return (out["isolation"]["refused"] and a["accepted"] == a["succeeded"] and a["lost"] == 0 and a["stuck"] == 0
            and a["duplicate_objects"] == 0 and a["webhook_missing"] == 0 and a["webhook_duplicates"] == 0
            and not a["workers_dead"] and out["host_kill"]["finished_on_the_other_host"] == out["host_kill"]["killed_mid_call"]
            and out["link_down"]["resumed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--link-down-s", type=float, default=60)
    ap.add_argument("--failover-s", type=float, default=40)
    ap.add_argument("--visibility-s", type=int, default=90)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs of every host)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="br-fleet-"))
    import signal

    def stop(signum, frame):  # SIGTERM (timeout, kill): unwind, so the hosts and bridge go too
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        out = run(work, jobs=args.jobs, link_down_s=args.link_down_s, failover_s=args.failover_s,
                  visibility_s=args.visibility_s)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    import importlib.metadata as md

    out["ok"] = ok(out)
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                      "redis": _redis_version(), **{p: md.version(p) for p in ("celery", "kombu", "redis")}}
    out["settings"] = vars(args) | {"out": str(args.out) if args.out else None}
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    a = out["accounting"]
    print(f"\naccepted {a['accepted']}  succeeded {a['succeeded']}  lost {a['lost']}  stuck {a['stuck']}  "
          f"duplicates {a['duplicate_objects']}  webhook missing {a['webhook_missing']}  "
          f"workers dead {len(a['workers_dead'])}  -> {'OK' if out['ok'] else 'NOT OK'}")
    sys.exit(0 if out["ok"] else 1)


def _redis_version() -> str:
    import subprocess

    return subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
