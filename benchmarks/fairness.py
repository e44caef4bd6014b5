"""Fair share (issue 24): does a tenant with one job wait while another floods the fleet?

For each scheduler (``fifo``, the old single queue per model, then ``fair``, jobs/fairshare.py)
in one run, on the same machine, with a fresh private redis-server, a real ``batchrender api``
process and one real ``batchrender worker`` (tiny model, file:// storage):

1. **Idle fleet**: after a warm-up, tenants B and C each submit ``--idle-samples`` interactive
   single jobs one after another on the idle fleet; a job's *wait* is its record's
   ``finished_at - created_at`` (submit accepted to image stored).
2. **Flood**: tenant A posts ``--flood`` bulk jobs in one ``POST /v1/batches``; meanwhile B and C
   each submit ``--singles`` interactive single jobs (``POST /v1/jobs``) spread evenly over
   ``--spread`` seconds (C offset by half a step). Waits as above; throughput = every job's rows
   / (last ``finished_at`` - the flood's submit); rows per image = rows rendered by the worker
   (padding included, ``br:stats:rows_rendered``) / images delivered; rows per call likewise.
   With ``fair``, the ETA the API gave each single job when it was submitted is kept beside the
   wait it had.
3. (``fair`` only, ``--weights-jobs`` > 0) **Weights 2:1**: tenants D (weight 2) and E (weight 1)
   each post ``--weights-jobs`` bulk jobs at once; the share of rows each got among the jobs
   started while both still had work queued.

Checks (the issue's "done when"): B's and C's p95 wait under ``fair`` <= 2 x their idle-fleet
median wait + one pipeline call (the mean call of the flood); ``fair`` throughput >= 95 % of
``fifo``'s; rows per image the same (within 2 %); D:E rows 2:1 within 10 %.

    .venv/bin/python benchmarks/fairness.py --out benchmarks/results/fairness-cpu.json
    .venv/bin/python benchmarks/fairness.py --rounds 3 --out benchmarks/results/fairness-cpu-rounds.json

``--rounds N`` repeats both schedulers in ABBA order (fifo, fair, fair, fifo, fifo, fair...): the
phases run one after the other, and a machine whose speed drifts over minutes (measured on the
2-core box: one run's FIFO calls 0.285 s, its fair calls 0.372 s) would otherwise decide the
throughput ratio. The checks then take the median ratio and need the singles' bound in every round.

``--paired`` runs FIFO and fair *at the same time*, each with its own API, worker (one torch thread)
and database of the private redis-server, their floods started together, and compares the images
each delivered while both were running: whatever the machine's speed does during the run, it does
to both. The throughput check then takes the rounds' median of that ratio; the singles' waits are
recorded but checked only by the sequential rounds (here both are measured beside the other fleet).

    .venv/bin/python benchmarks/fairness.py --paired --rounds 3 --weights-jobs 0 --out ...
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.campaign_plan import (  # noqa: E402 - shared process helpers
    CLK_TCK, RUNNING, Bench, Deadline, Proc, batchrender_cmd, free_port, machine, pid_stat, proc_stat_busy_s, stats,
    versions, wait_for)
from benchmarks.recorded import checkout  # noqa: E402
from jobs.names import job_key  # noqa: E402


def p95(xs: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def share_while_both_busy(started: list[tuple[float, str]], a: str, b: str, since: float = 0.0) -> dict[str, Any]:
    """Rows (1 per job here) of tenants ``a`` and ``b`` among jobs in start order, from ``since``
    (both have work queued) up to the moment one of them has nothing left to start: (count a,
    count b, ratio a/b)."""
    total = {a: sum(1 for s, t in started if t == a and s >= since), b: sum(1 for s, t in started if t == b and s >= since)}
    seen = {a: 0, b: 0}
    for s, t in sorted(started):
        if t not in seen or s < since:
            continue
        seen[t] += 1
        if seen[t] == total[t]:
            break  # one tenant's last job has started: from here the other runs alone
    ratio = seen[a] / seen[b] if seen[b] else None
    return {"rows": dict(seen), "ratio": None if ratio is None else round(ratio, 3), "since": since}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=2000, help="tenant A's bulk jobs")
    p.add_argument("--singles", type=int, default=20, help="interactive single jobs of B and of C")
    p.add_argument("--spread", type=float, default=60.0, help="seconds over which B's and C's singles are sent")
    p.add_argument("--idle-samples", type=int, default=5, help="idle-fleet singles of B and of C")
    p.add_argument("--weights-jobs", type=int, default=150, help="jobs of D (weight 2) and E (weight 1); 0: skip")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--max-batch", type=int, default=0, help="BATCHRENDER_MAX_BATCH (0: the worker's default)")
    p.add_argument("--schedulers", default="fifo,fair")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the schedulers this many times, in ABBA order (fifo, fair, fair, fifo, ...), so a "
                        "machine whose speed drifts over minutes weighs on both alike; checks use the median ratio")
    p.add_argument("--paired", action="store_true",
                   help="run FIFO and fair at the same time (each its own API, worker and Redis database, the "
                        "floods started together) and compare the images each delivered while both ran; "
                        "rounds alternate which one starts first")
    p.add_argument("--redis-url", default=None, help="use this Redis (its db is flushed!) instead of a private one")
    p.add_argument("--time-limit", type=float, default=3600)
    p.add_argument("--keep-temp", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.paired and args.redis_url:
        p.error("--paired uses databases 1 and 2 of a private redis-server; leave out --redis-url")
    return args


class Fleet:
    """An API process and a worker process with one scheduler, on the bench's (flushed) Redis."""

    def __init__(self, bench: Bench, scheduler: str, tenants: dict[str, str]) -> None:
        import httpx

        self.bench, self.scheduler = bench, scheduler
        env = bench.child_env(BATCHRENDER_SCHEDULER=scheduler, BATCHRENDER_API_RATE_PER_S="100000",
                              BATCHRENDER_API_BURST="100000", BATCHRENDER_API_MAX_QUEUED_PER_TENANT="100000",
                              BATCHRENDER_MAX_BATCH_JOBS="10000", BATCHRENDER_API_MAX_BODY_BYTES=str(64 * 2**20))
        self.port = free_port()
        self.api = Proc(batchrender_cmd("api", "--port", str(self.port)), env, bench.tmp / f"api-{scheduler}.log")
        self.worker = Proc(batchrender_cmd("worker", "--models", "tiny", "--no-webhooks", "--name", f"w-{scheduler}"),
                           env, bench.tmp / f"worker-{scheduler}.log")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self.keys = tenants

        def up() -> bool:
            for proc in (self.api, self.worker):
                if not proc.alive():
                    raise RuntimeError(f"a process exited:\n{proc.log()[-3000:]}")
            try:
                ok = self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False
            return ok and " ready." in self.worker.log()

        wait_for(up, bench.deadline, f"API and worker ({scheduler})", 240, every=0.25)

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def job(self, tenant: str, prompt: str, seed: int, priority: str = "interactive") -> dict[str, Any]:
        a = self.bench.args
        r = self.http.post("/v1/jobs", headers=self.headers(tenant), json={
            "prompt": prompt, "seed": seed, "width": a.size, "height": a.size, "steps": a.steps, "priority": priority})
        r.raise_for_status()
        return r.json()

    def batch(self, tenant: str, n: int, tag: str) -> dict[str, Any]:
        a = self.bench.args
        items = [{"prompt": f"{tag} product {i}", "seed": i, "width": a.size, "height": a.size, "steps": a.steps,
                  "custom_id": f"{tag}-{i}"} for i in range(n)]
        r = self.http.post("/v1/batches", headers=self.headers(tenant), json={"requests": items})
        r.raise_for_status()
        return r.json()

    def close(self) -> None:
        self.http.close()
        self.worker.stop()
        self.api.stop()


def session_cpu_s(sessions: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, and those of reaped children) used so far by the live processes
    of each named session (a ``Proc`` runs in its own session), and by the whole machine
    (``machine``). A process that starts and exits between two readings without being reaped by
    one that is still alive is missed: the API, worker and redis-server are long-lived."""
    by_sid = {sid: name for name, sid in sessions.items()}
    out = {name: 0.0 for name in sessions}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
            sid, ticks = pid_stat(text)
            rest = text[text.rindex(")") + 2:].split()
            ticks += int(rest[13]) + int(rest[14])  # cutime + cstime: children it waited for
        except (OSError, ValueError, IndexError):
            continue
        if sid in by_sid:
            out[by_sid[sid]] += ticks / CLK_TCK
    out["machine"] = proc_stat_busy_s(Path("/proc/stat").read_text(), CLK_TCK)
    return out


def records(r, job_ids: list[str]) -> list[dict[str, Any]]:
    from jobs.store import JobStore

    return [x.to_dict() | {"tenant": x.tenant} for x in JobStore(r).get_many(job_ids)]


def wait_done(bench: Bench, fleet: Fleet, job_ids: list[str], what: str, timeout: float) -> list[dict[str, Any]]:
    def done():
        if not fleet.worker.alive():
            raise RuntimeError(f"the worker exited:\n{fleet.worker.log()[-3000:]}")
        recs = records(bench.r, job_ids)
        return recs if all(x["status"] not in ("queued", "running") for x in recs) else None

    return wait_for(done, bench.deadline, what, timeout, every=0.5)


def waits(recs: list[dict[str, Any]]) -> list[float]:
    return [x["finished_at"] - x["created_at"] for x in recs if x["status"] == "succeeded"]


def run_scheduler(bench: Bench, scheduler: str, weights: bool = True,
                  barrier: threading.Barrier | None = None) -> dict[str, Any]:
    from producer.tenants import Tenants

    args = bench.args
    bench.r.flushdb()
    tenants = Tenants(bench.r, bench.settings())
    made = {name: tenants.create(name) for name in ("A", "B", "C", "D", "E")}
    tenants.set_weight(made["D"].tenant_id, 2)
    keys = {n: t.api_key for n, t in made.items()}
    fleet = Fleet(bench, scheduler, keys)
    out: dict[str, Any] = {"scheduler": scheduler}
    try:
        warm = [fleet.job("A", "warm up", i, "normal")["id"] for i in range(8)]
        wait_done(bench, fleet, warm, "the warm-up", 300)
        idle: dict[str, list[float]] = {"B": [], "C": []}
        for i in range(args.idle_samples):
            for t in ("B", "C"):
                j = fleet.job(t, f"idle {t} {i}", 1000 + i)["id"]
                idle[t] += waits(wait_done(bench, fleet, [j], "an idle-fleet job", 120))
        out["idle_wait_s"] = {t: {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
                              for t, v in idle.items()}

        before = stats(bench.r)
        sessions = {"api": fleet.api.proc.pid, "worker": fleet.worker.proc.pid,
                    **({"redis": bench.redis.proc.pid} if bench.redis is not None else {})}
        if barrier is not None:  # --paired: both schedulers' floods start together
            barrier.wait(timeout=max(1.0, bench.deadline.left()))
        cpu_before = session_cpu_s(sessions)
        t0 = time.time()
        flood = fleet.batch("A", args.flood, f"flood-{scheduler}")
        flood_ids = [x["id"] for x in bench_batch_jobs(bench, flood["id"])]
        singles: dict[str, list[dict[str, Any]]] = {"B": [], "C": []}
        step = args.spread / max(1, args.singles)

        def send(t: str, offset: float) -> None:
            for i in range(args.singles):
                due = t0 + offset + i * step
                time.sleep(max(0.0, due - time.time()))
                job = fleet.job(t, f"single {t} {i}", 2000 + i)
                singles[t].append({"id": job["id"], "eta_s": job.get("eta_s"), "queue_position": job.get("queue_position")})

        senders = [threading.Thread(target=send, args=(t, off)) for t, off in (("B", step / 4), ("C", step * 3 / 4))]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        single_ids = {t: [x["id"] for x in v] for t, v in singles.items()}
        recs = wait_done(bench, fleet, flood_ids + single_ids["B"] + single_ids["C"], "the flood",
                         max(600.0, bench.deadline.left()))
        after = stats(bench.r)
        cpu_after = session_cpu_s(sessions)
        by_id = {x["id"]: x for x in recs}
        d = {k: after[k] - before[k] for k in after}
        images = sum(1 for x in recs if x["status"] == "succeeded")
        end = max(x["finished_at"] for x in recs if x["finished_at"])
        call_s = d["busy_s"] / d["calls"] if d["calls"] else None
        out["flood"] = {
            "jobs": len(recs), "succeeded": images,
            "makespan_s": round(end - t0, 2),
            "throughput_images_per_s": round(images / (end - t0), 3),
            "rows_rendered": d["rows"], "calls": d["calls"],
            "rows_per_image": round(d["rows"] / images, 4) if images else None,
            "rows_per_call": round(d["rows"] / d["calls"], 3) if d["calls"] else None,
            "mean_call_s": None if call_s is None else round(call_s, 4),
            "render_busy_s": round(d["busy_s"], 2),
            # Who used the two cores while the flood ran: the worker (render and post-processing),
            # the API, the redis-server (the fair dispatch's scripts run there) and the machine.
            "cpu_s": {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_after},
        }
        for t in ("B", "C"):
            w = [by_id[j]["finished_at"] - by_id[j]["created_at"] for j in single_ids[t] if by_id[j]["finished_at"]]
            etas = [(x["eta_s"], by_id[x["id"]]["finished_at"] - by_id[x["id"]]["created_at"]) for x in singles[t]
                    if x["eta_s"] is not None and by_id[x["id"]]["finished_at"]]
            bound = 2 * out["idle_wait_s"][t]["median"] + (call_s or 0.0)
            # Where the wait goes: until the job's call started (its claim), and from there to stored.
            queued = [by_id[j]["started_at"] - by_id[j]["created_at"] for j in single_ids[t]
                      if by_id[j]["finished_at"] and by_id[j].get("started_at")]
            running = [by_id[j]["finished_at"] - by_id[j]["started_at"] for j in single_ids[t]
                       if by_id[j]["finished_at"] and by_id[j].get("started_at")]
            # ... of which in the tenant's lane, until the fair dispatch moved it to the queue.
            laned = []
            for j in single_ids[t]:
                at = bench.r.hget(job_key(j), "dispatched")
                if at and by_id[j]["finished_at"]:
                    laned.append(float(at) - by_id[j]["created_at"])
            out.setdefault("singles", {})[t] = {
                "in_lane_s": {"median": round(statistics.median(laned), 3), "p95": round(p95(laned), 3)} if laned else None,
                "queued_s": {"median": round(statistics.median(queued), 3), "p95": round(p95(queued), 3)} if queued else None,
                "call_to_stored_s": ({"median": round(statistics.median(running), 3), "p95": round(p95(running), 3)}
                                     if running else None),
                "p95_wait_s": round(p95(w), 3), "median_wait_s": round(statistics.median(w), 3),
                "max_wait_s": round(max(w), 3), "bound_s": round(bound, 3), "within_bound": p95(w) <= bound,
                "eta_given_vs_wait_s": [[round(e, 2), round(a, 2)] for e, a in etas]}
        # For --paired: when each job finished, from the flood's submit (dropped before writing).
        out["_finished_after_s"] = sorted(x["finished_at"] - t0 for x in recs if x["status"] == "succeeded")
        flood_recs = [by_id[j] for j in flood_ids]
        out["flood"]["flood_last_finished_after_s"] = round(max(x["finished_at"] for x in flood_recs) - t0, 2)
        # Per job, from its record: post-processing (encode, thumbnails, signing, storage), which
        # shares the CPU with the next call on this box.
        post = [x["timings"]["postprocess_s"] for x in flood_recs if (x.get("timings") or {}).get("postprocess_s")]
        if post:
            out["flood"]["postprocess_s"] = {"median": round(statistics.median(post), 4), "p95": round(p95(post), 4),
                                             "total": round(sum(post), 2)}
        if scheduler == "fair" and args.weights_jobs and weights:
            de = {t: [x["id"] for x in bench_batch_jobs(bench, fleet.batch(t, args.weights_jobs, f"w{t}")["id"])]
                  for t in ("D", "E")}
            recs = wait_done(bench, fleet, de["D"] + de["E"], "the weighted tenants", 1200)
            started = [(x["started_at"], "D" if x["id"] in set(de["D"]) else "E") for x in recs]
            # Counted once E's batch is queued too (D's was posted first and ran alone meanwhile).
            both = max(min(x["created_at"] for x in recs if x["id"] in set(ids)) for ids in de.values())
            out["weights_2_to_1"] = share_while_both_busy(started, "D", "E", since=both)
    finally:
        fleet.close()
    return out


class Side:
    """One scheduler's share of the bench in a ``--paired`` round: its own database of the bench's
    redis-server (its own Celery broker, lanes and records) and its own storage folder; the tiny
    model, the keys and the temp dir are the bench's."""

    def __init__(self, bench: Bench, db: int, tag: str) -> None:
        import redis

        self._bench = bench
        self.url = bench.url.rsplit("/", 1)[0] + f"/{db}"
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        # One torch thread each: two workers with a thread per core each on two cores spin against
        # each other (measured: a 4-row call 1.2-1.7 s instead of 0.3 s), and the ratio would then
        # weigh that contention rather than what the scheduler costs.
        self.env = {**bench.env, "BATCHRENDER_REDIS_URL": self.url,
                    "BATCHRENDER_STORAGE_URL": (bench.tmp / f"out-{tag}").as_uri(),
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bench, name)

    def child_env(self, **extra: str) -> dict[str, str]:
        return Bench.child_env(self, **extra)  # type: ignore[arg-type]

    def settings(self, **extra: str):
        return Bench.settings(self, **extra)  # type: ignore[arg-type]

    def close(self) -> None:
        self.r.close()


def paired_throughput(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Images each scheduler delivered while both were running (from the floods' common start to
    the first of the two to finish its last job), per second, and fair's over FIFO's: the two ran
    at once on the same cores, so a machine whose speed drifts weighs on both alike, and neither
    gets the cores to itself for its tail."""
    done = {k: v.pop("_finished_after_s") for k, v in results.items()}
    common = min(max(v) for v in done.values())
    out: dict[str, Any] = {"common_window_s": round(common, 2)}
    for k, v in done.items():
        n = sum(1 for t in v if t <= common)
        out[k] = {"images": n, "images_per_s": round(n / common, 3)}
    if "fifo" in out and "fair" in out:
        out["fair_over_fifo"] = round(out["fair"]["images_per_s"] / out["fifo"]["images_per_s"], 4)
    return out


def run_paired(bench: Bench, names: list[str], round_no: int) -> dict[str, Any]:
    """Both schedulers at once, each with its own API and worker on its own database; which one
    gets database 1 and is started first alternates between rounds."""
    order = names if round_no % 2 == 0 else names[::-1]
    barrier = threading.Barrier(len(order))
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    sides = {name: Side(bench, 1 + i, f"{name}-{round_no}") for i, name in enumerate(order)}

    def one(name: str) -> None:
        try:
            results[name] = run_scheduler(sides[name], name, weights=False, barrier=barrier)  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(name,)) for name in order]
    for t in threads:
        t.start()
        time.sleep(1.0)  # the first one's processes are starting: keep the start order
    for t in threads:
        t.join()
    for side in sides.values():
        side.close()
    if errors:
        raise errors[0]
    paired = paired_throughput(results)
    for name in order:
        results[name]["paired"] = {"redis_db": 1 + order.index(name), **paired[name],
                                   "common_window_s": paired["common_window_s"]}
    return {name: results[name] for name in names} | {"_paired": paired}


def bench_batch_jobs(bench: Bench, batch_id: str) -> list[dict[str, str]]:
    from jobs.store import JobStore

    return [{"id": j} for j in JobStore(bench.r).batch_job_ids(batch_id)]


def checks(results: dict[str, dict[str, Any]], rounds: list[dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The issue's checks on ``results`` (one run of each scheduler); with several ``rounds``, the
    singles' bound must hold in every round and the throughput ratio is the rounds' median."""
    if rounds and len(rounds) > 1:
        each = [_checks(r) for r in rounds]
        out = _checks(results)
        ratios = [c["throughput_fair_over_fifo"] for c in each if "throughput_fair_over_fifo" in c]
        if ratios:
            out["throughput_fair_over_fifo_per_round"] = ratios
            out["throughput_fair_over_fifo"] = round(statistics.median(ratios), 4)
            out["throughput_at_least_95pct"] = statistics.median(ratios) >= 0.95
        for key in ("singles_p95_within_bound", "rows_per_image_unchanged"):
            if any(key in c for c in each):
                out[key] = all(c.get(key, True) for c in each)
        return out
    return _checks(results)


def paired_checks(results: dict[str, dict[str, Any]], rounds: list[dict[str, dict[str, Any]]],
                  paired: list[dict[str, Any]]) -> dict[str, Any]:
    """``--paired``: the throughput check on the rounds' median of fair's over FIFO's rate while
    both ran at once; rows per image as in ``checks``. The singles' waits are kept in the results
    but not checked: with two fleets on two cores, the idle-fleet waits and the flood's calls are
    both measured beside the other fleet's work (the sequential rounds check the singles)."""
    ratios = [p["fair_over_fifo"] for p in paired if "fair_over_fifo" in p]
    out: dict[str, Any] = {}
    if ratios:
        out["throughput_fair_over_fifo_paired_per_round"] = ratios
        out["throughput_fair_over_fifo"] = round(statistics.median(ratios), 4)
        out["throughput_at_least_95pct"] = statistics.median(ratios) >= 0.95
    each = [_checks(r) for r in rounds]
    if any("rows_per_image_unchanged" in c for c in each):
        out["rows_per_image_unchanged"] = all(c.get("rows_per_image_unchanged", True) for c in each)
    return out


def _checks(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fifo, fair = results.get("fifo"), results.get("fair")
    out: dict[str, Any] = {}
    if fair:
        out["singles_p95_within_bound"] = all(v["within_bound"] for v in fair["singles"].values())
        if "weights_2_to_1" in fair and fair["weights_2_to_1"]["ratio"] is not None:
            out["weights_2_to_1_within_10pct"] = abs(fair["weights_2_to_1"]["ratio"] - 2) <= 0.2
    if fifo and fair:
        ratio = fair["flood"]["throughput_images_per_s"] / fifo["flood"]["throughput_images_per_s"]
        out["throughput_fair_over_fifo"] = round(ratio, 4)
        out["throughput_at_least_95pct"] = ratio >= 0.95
        a, b = fair["flood"]["rows_per_image"], fifo["flood"]["rows_per_image"]
        out["rows_per_image_unchanged"] = abs(a - b) <= 0.02 * b
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    rows = [("idle wait B / C, median s", lambda r: f"{r['idle_wait_s']['B']['median']:.2f} / {r['idle_wait_s']['C']['median']:.2f}"),
            ("B p95 wait s (bound)", lambda r: f"{r['singles']['B']['p95_wait_s']:.2f} ({r['singles']['B']['bound_s']:.2f})"),
            ("C p95 wait s (bound)", lambda r: f"{r['singles']['C']['p95_wait_s']:.2f} ({r['singles']['C']['bound_s']:.2f})"),
            ("B / C max wait s", lambda r: f"{r['singles']['B']['max_wait_s']:.2f} / {r['singles']['C']['max_wait_s']:.2f}"),
            ("throughput images/s", lambda r: f"{r['flood']['throughput_images_per_s']:.2f}"),
            ("rows per image", lambda r: f"{r['flood']['rows_per_image']:.3f}"),
            ("rows per call", lambda r: f"{r['flood']['rows_per_call']:.2f}"),
            ("mean call s", lambda r: f"{r['flood']['mean_call_s']:.3f}"),
            ("flood done after s", lambda r: f"{r['flood']['flood_last_finished_after_s']:.1f}")]
    lines = [f"{'':28}" + "".join(f"{n:>18}" for n in names)]
    for label, fn in rows:
        lines.append(f"{label:28}" + "".join(f"{fn(results[n]):>18}" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.time_limit)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    out: dict[str, Any] = {
        "command": "python benchmarks/fairness.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(), "versions": versions(), "checkout": checkout(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": {k: getattr(args, k) for k in ("flood", "singles", "spread", "idle_samples", "weights_jobs", "size",
                                                 "steps", "max_batch", "schedulers", "rounds", "paired")},
        "results": {}}

    def write() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")

    bench = None
    try:
        bench = Bench(args, deadline)
        from worker.batching import default_max_batch

        out["params"]["worker_max_batch"] = args.max_batch or default_max_batch("cpu")
        names = args.schedulers.split(",")
        rounds: list[dict[str, Any]] = []
        for i in range(max(1, args.rounds)):
            if args.paired:
                print(f"-- {' and '.join(names)} at once (round {i + 1})", file=sys.stderr, flush=True)
                rounds.append(run_paired(bench, names, i))
                out.setdefault("paired", []).append(rounds[-1].pop("_paired"))
                for scheduler in names:
                    out["results"].setdefault(scheduler, rounds[-1][scheduler])
                out["rounds"] = rounds
                write()
                continue
            rounds.append({})
            for scheduler in names if i % 2 == 0 else names[::-1]:
                print(f"-- {scheduler} (round {i + 1})", file=sys.stderr, flush=True)
                rounds[-1][scheduler] = run_scheduler(bench, scheduler, weights=(i == 0))
                rounds[-1][scheduler].pop("_finished_after_s", None)
                out["results"].setdefault(scheduler, rounds[-1][scheduler])
                if args.rounds > 1:
                    out["rounds"] = rounds
                write()
        out["checks"] = paired_checks(out["results"], rounds, out["paired"]) if args.paired else checks(out["results"], rounds)
        for i, r in enumerate(rounds if len(rounds) > 1 else []):
            print(f"round {i + 1}:")
            print(table(r))
            if args.paired:
                print("  at once, while both ran:", json.dumps(out["paired"][i]))
        print(table(out["results"]))
        print(json.dumps(out["checks"], indent=2))
        if "weights_2_to_1" in out["results"].get("fair", {}):
            print("weights 2:1:", json.dumps(out["results"]["fair"]["weights_2_to_1"]))
    finally:
        write()
        if bench is not None:
            bench.close()
        for p in list(RUNNING):
            p.stop()
    return 0 if all(v for k, v in out.get("checks", {}).items() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
