"""Campaign plans (issue 23): is a plan's GPU-second figure right, and what does planning cost at scale?

1. **Planned vs measured GPU-seconds** (``--rounds`` times). A real ``batchrender worker`` process
   (tiny model, a private home, file:// storage, its own Redis) first renders a warm-up campaign
   (``--warmup-rows`` rows x the sweep) so the fleet's per-call history (``jobs/callstats.py``)
   has measurements of the shape. Then a campaign of ``--rows`` rows x ``--styles`` styles (other
   prompts and seeds than the warm-up: nothing is reused) is planned
   (``Campaigns(client).plan``: the planned total GPU-seconds), applied, and waited for. Measured
   = the increase of the worker's time inside pipeline calls in Redis
   (``br:stats:render_busy_s``, worker/runner.py ``STATS_BUSY_KEY``) over the campaign. The error
   is (planned - measured) / measured. Each round starts a fresh worker on an emptied Redis.
2. **Scale**: a ``--scale-rows`` catalog (CSV, every prompt distinct) x 1 cell. ``plan()`` in
   process (wall time); then through a real ``batchrender api`` process: the CSV uploaded
   (``POST /v1/files``, purpose ``campaign``), ``POST /v1/campaigns?dry_run=true`` and
   ``POST /v1/campaigns`` (apply; no worker, the jobs just queue), each in a fresh API process
   whose RSS (``/proc/PID/status`` VmRSS) is sampled every 0.1 s; baseline: the same jobs (the
   campaign's own expanded requests) as one JSONL batch through ``POST /v1/batches``.

Prints the figures side by side and, with ``--out``, writes them as JSON (command, machine,
versions, commit, every round). Everything is local: a private redis-server on a free loopback
port (or ``--redis-url``), loopback HTTP, temp dirs removed at the end; the whole run is bounded
by ``--time-limit``.

    .venv/bin/python benchmarks/campaign_plan.py --out benchmarks/results/campaign-plan-cpu.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recorded import checkout  # noqa: E402

STYLES = ["studio light", "watercolour", "line drawing", "flat lay", "on a kitchen table", "in soft daylight"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "teal", "orange", "grey", "pink"]
MATERIALS = ["ceramic", "enamel", "glass", "stoneware", "porcelain"]
SHAPES = ["mug", "cup", "tumbler", "beaker", "jug"]
#: How the worker stands when the warm-up campaign renders (accuracy_round).
MODES = ("fresh", "prewarmed")


# -- pure helpers (tests/unit/test_benchmark_campaign_plan.py) ----------------------------------
def error_pct(planned: float | None, measured: float | None) -> float | None:
    """(planned - measured) / measured, in percent; None when either is missing or measured is 0."""
    if planned is None or not measured:
        return None
    return (planned - measured) / measured * 100.0


def median(xs: list[float | None]) -> float | None:
    """The median of the known values (None when there are none)."""
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


def vm_rss_mb(status_text: str) -> float | None:
    """VmRSS from the text of /proc/PID/status, in MB (10^6 bytes); None when absent."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024 / 1e6  # kB (KiB) in /proc
    return None


def catalog_rows(n: int, series: str) -> list[dict[str, str]]:
    """``n`` catalog rows: sku, colour, material, style and a name that makes every prompt distinct.
    ``series`` tags the SKUs and names, so two catalogs of one run share no prompt."""
    rows = []
    for i in range(n):
        rows.append({"sku": f"{series}-{i:06d}", "colour": COLOURS[i % len(COLOURS)],
                     "material": MATERIALS[(i // len(COLOURS)) % len(MATERIALS)],
                     "style": STYLES[i % len(STYLES)],
                     # no bare numbers in prompts: moderation rightly refuses some (1488, 88)
                     "name": f"{SHAPES[(i // 7) % len(SHAPES)]} model {series}x{i:06d}"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def campaign_doc(name: str, catalog: dict[str, Any], *, steps: int, styles: int, renditions: int) -> dict[str, Any]:
    """The benchmark's campaign document: ``styles`` > 0 sweeps a style axis, 0 takes the catalog's
    ``style`` column; ``renditions`` crop renditions (post-processing, no extra pipeline call)."""
    doc: dict[str, Any] = {
        "v": 1, "name": name, "catalog": catalog,
        "template": {"prompt": ("a {colour} {material} {name}, {look}, product photo" if styles
                                else "a {colour} {material} {name}, {style}, product photo"),
                     "negative_prompt": "text, watermark",
                     "fields": {"model": "tiny", "steps": steps}}}
    if styles:
        doc["sweeps"] = {"axes": {"look": STYLES[:styles]}}
    if renditions:
        sizes = [("square", 128, 128), ("portrait", 128, 160), ("landscape", 160, 128), ("story", 72, 128)]
        doc["renditions"] = [{"name": n, "width": w, "height": h} for n, w, h in sizes[:renditions]]
    return doc


def proc_stat_busy_s(text: str, clk_tck: int) -> float:
    """CPU seconds all cores spent busy (user, nice, system, irq, softirq, steal) from /proc/stat."""
    first = text.splitlines()[0].split()
    assert first[0] == "cpu", first[0]
    v = [int(x) for x in first[1:]]
    return (v[0] + v[1] + v[2] + sum(v[5:8])) / clk_tck


def pid_stat(text: str) -> tuple[int, float]:
    """(session id, utime + stime in clock ticks) from the text of /proc/PID/stat."""
    rest = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(rest[3]), float(int(rest[11]) + int(rest[12]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="planned-vs-measured rounds (a fresh worker each)")
    ap.add_argument("--warmup-rows", type=int, default=8, help="rows of the warm-up campaign (x --styles cells)")
    ap.add_argument("--rows", type=int, default=32, help="rows of the measured campaign (x --styles cells)")
    ap.add_argument("--styles", type=int, default=2, help=f"values of the swept style axis (1-{len(STYLES)})")
    ap.add_argument("--renditions", type=int, default=2, help="crop renditions per cell (0-4)")
    ap.add_argument("--steps", type=int, default=4, help="steps of every cell")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="BATCHRENDER_MAX_BATCH of the worker (default: the worker's own, 4 on CPU)")
    ap.add_argument("--scale-rows", type=int, default=10_000, help="rows of the scale catalog (1 cell each)")
    ap.add_argument("--scale-rounds", type=int, default=1, help="scale measurements (fresh API processes each)")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip part 1 (planned vs measured)")
    ap.add_argument("--skip-scale", action="store_true", help="skip part 2 (10,000 rows)")
    ap.add_argument("--redis-url", default=None,
                    help="a Redis database to use (it is FLUSHED); default: a private redis-server on a free port")
    ap.add_argument("--quiet-cores", type=float, default=0.25,
                    help="before each round, wait for 5 s in which other work used fewer cores than this")
    ap.add_argument("--quiet-wait", type=float, default=300, help="the longest wait for a quiet machine (s)")
    ap.add_argument("--modes", default="fresh,prewarmed",
                    help="fresh: the warm-up is a new worker's first work; prewarmed: the worker has rendered "
                         "an untimed campaign of another shape first")
    ap.add_argument("--disturbed-cores", type=float, default=0.3,
                    help="a round in which other work used more cores than this is marked disturbed and run again")
    ap.add_argument("--max-tries", type=int, default=None,
                    help="rounds per mode at most, disturbed ones included (default: 2 x --rounds)")
    ap.add_argument("--time-limit", type=float, default=3600, help="seconds the whole run may take")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs, home) for a look afterwards")
    args = ap.parse_args(argv)
    if args.rounds < 0 or args.scale_rounds < 0:
        ap.error("--rounds and --scale-rounds must be 0 or more")
    if not 1 <= args.styles <= len(STYLES):
        ap.error(f"--styles must be 1-{len(STYLES)}")
    if not 0 <= args.renditions <= 4:
        ap.error("--renditions must be 0-4")
    if args.rows < 1 or args.warmup_rows < 1 or args.scale_rows < 1 or args.steps < 1:
        ap.error("--rows, --warmup-rows, --scale-rows and --steps must be at least 1")
    if args.max_batch is not None and args.max_batch < 1:
        ap.error("--max-batch must be at least 1")
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.mode_list or set(args.mode_list) - set(MODES):
        ap.error(f"--modes takes {', '.join(MODES)}")
    args.max_tries = 2 * args.rounds if args.max_tries is None else args.max_tries
    if args.max_tries < args.rounds:
        ap.error("--max-tries must be at least --rounds")
    if args.time_limit <= 0:
        ap.error("--time-limit must be positive")
    return args


# -- processes and bounds ---------------------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class CpuMeter:
    """Who used the cores over an interval: the whole machine (/proc/stat), the sessions of our own
    children (the worker's processes, the private redis-server) and this process; the rest is
    other work on the machine (this box is shared)."""

    def __init__(self, sessions: Callable[[], set[int]]) -> None:
        self.sessions = sessions

    def snapshot(self) -> dict[str, float]:
        total = proc_stat_busy_s(Path("/proc/stat").read_text(), CLK_TCK)
        ours = 0.0
        wanted = self.sessions()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                sid, ticks = pid_stat((d / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
            if sid in wanted:
                ours += ticks / CLK_TCK
        t = os.times()
        return {"t": time.monotonic(), "total": total, "children": ours, "self": t.user + t.system}

    @staticmethod
    def between(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """Cores in use over [a, b]: all, ours (children + this process) and others'."""
        wall = max(1e-9, b["t"] - a["t"])
        total = (b["total"] - a["total"]) / wall
        ours = ((b["children"] - a["children"]) + (b["self"] - a["self"])) / wall
        return {"wall_s": round(wall, 3), "busy_cores": round(total, 3), "our_cores": round(ours, 3),
                "other_cores": round(max(0.0, total - ours), 3)}


def wait_quiet(meter: CpuMeter, max_other_cores: float, max_wait_s: float, deadline: "Deadline",
               sample_s: float = 5.0) -> dict[str, Any]:
    """Wait (at most ``max_wait_s``) for a ``sample_s`` interval in which other work on the machine
    used under ``max_other_cores`` cores; what was seen, and whether it was quiet."""
    t0 = time.monotonic()
    last: dict[str, float] = {}
    while True:
        a = meter.snapshot()
        time.sleep(sample_s)
        last = CpuMeter.between(a, meter.snapshot())
        if last["other_cores"] < max_other_cores:
            return {"quiet": True, "waited_s": round(time.monotonic() - t0, 1), **last}
        if time.monotonic() - t0 > max_wait_s or deadline.left() < 120:
            return {"quiet": False, "waited_s": round(time.monotonic() - t0, 1), **last}

class Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"--time-limit reached while {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], deadline: Deadline, what: str, timeout: float, every: float = 0.1) -> Any:
    until = min(time.monotonic() + timeout, deadline.at)
    while time.monotonic() < until:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when this benchmark dies, even by SIGKILL (Linux), so no
    worker, API or redis-server outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the finally blocks still stop them
        pass


class Proc:
    """A child process in its own session (so its children go with it), logging to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)


#: Every child still running: stopped on the way out, whatever happens.
RUNNING: list[Proc] = []


def batchrender_cmd(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "batchrender"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-c", "from producer.cli import main; main()", *args]


class Bench:
    """The run's temp dir, Redis, tiny model and environment."""

    def __init__(self, args, deadline: Deadline) -> None:
        self.args, self.deadline = args, deadline
        self.tmp = Path(tempfile.mkdtemp(prefix="br-campaign-plan-"))
        self.redis: Proc | None = None
        if args.redis_url:
            self.url = args.redis_url
        else:
            port = free_port()
            self.redis = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(self.tmp), "--protected-mode", "no"],
                              dict(os.environ), self.tmp / "redis.log")
            self.url = f"redis://127.0.0.1:{port}/0"
        import redis

        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        wait_for(self._pings, deadline, "redis-server", 30)
        home = self.tmp / "home"
        (home / "models").mkdir(parents=True)
        # In a child process: this one plans in process as a client does (it never imports torch or
        # diffusers, whose objects would make its garbage collections scan ~4x more).
        made = subprocess.run(
            [sys.executable, "-c", "import json, sys; from worker.batching import default_max_batch; "
             "from worker.tiny import build_tiny_pipeline; build_tiny_pipeline(sys.argv[1]); "
             "print(json.dumps({'max_batch': default_max_batch('cpu')}))", str(home / "models" / "tiny")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            capture_output=True, text=True, timeout=max(30.0, deadline.left()))
        if made.returncode:
            raise RuntimeError(f"building the tiny model failed:\n{made.stderr[-3000:]}")
        self.default_max_batch = json.loads(made.stdout.strip().splitlines()[-1])["max_batch"]
        from jobs.fleet import fresh_keys_env

        self.env = {"BATCHRENDER_HOME": str(home), "BATCHRENDER_REDIS_URL": self.url,
                    "BATCHRENDER_STORAGE_URL": (self.tmp / "out").as_uri(), "BATCHRENDER_STORAGE_SHARED": "1",
                    **fresh_keys_env(allow_dev_c2pa=True)}  # keys every process of a shared Redis must share
        if args.max_batch:
            self.env["BATCHRENDER_MAX_BATCH"] = str(args.max_batch)
        self.meter = CpuMeter(lambda: {p.pid for p in RUNNING})

    def _pings(self) -> bool:
        import redis

        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def child_env(self, **extra: str) -> dict[str, str]:
        # Only this run's BATCHRENDER_* variables: none leaks in from the caller's shell.
        base = {k: v for k, v in os.environ.items() if not k.startswith("BATCHRENDER_")}
        return {**base, **self.env, **extra}

    def settings(self, **extra: str):
        from jobs.settings import Settings

        return Settings.from_env({**self.env, **extra})

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # noqa: BLE001
            pass
        if self.redis is not None:
            self.redis.stop()
        if self.args.keep_temp:
            print(f"kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- part 1: planned vs measured --------------------------------------------------------------------
def start_worker(bench: Bench, name: str) -> Proc:
    w = Proc(batchrender_cmd("worker", "--models", "tiny", "--no-webhooks", "--name", name),
             bench.child_env(), bench.tmp / f"{name}.log")

    def ready() -> bool:
        if not w.alive():
            raise RuntimeError(f"the worker exited with {w.proc.returncode}:\n{w.log()[-3000:]}")
        return " ready." in w.log()

    wait_for(ready, bench.deadline, "the worker to be ready", 180)
    return w


def apply_and_wait(campaigns, spec, worker: Proc, deadline: Deadline, timeout: float = 900) -> dict[str, Any]:
    out = campaigns.apply(None, spec)
    t0 = time.perf_counter()

    def done() -> dict[str, Any] | None:
        if not worker.alive():
            raise RuntimeError(f"the worker exited with {worker.proc.returncode}:\n{worker.log()[-3000:]}")
        st = campaigns.status(None, out["id"])
        return st if st["status"] == "completed" else None

    st = wait_for(done, deadline, f"campaign {spec.name} to complete", timeout, every=0.25)
    return {"apply": out, "status": st, "wall_s": time.perf_counter() - t0}


def stats(r) -> dict[str, float]:
    from worker.runner import STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY

    busy, calls, rows = r.mget(STATS_BUSY_KEY, STATS_CALLS_KEY, STATS_ROWS_KEY)
    return {"busy_s": float(busy or 0), "calls": int(calls or 0), "rows": int(rows or 0)}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def call_seconds(r, shape: dict[str, Any]) -> list[float]:
    """The warm calls of a shape in the fleet's recent window (jobs/callstats.py), oldest first."""
    from jobs import callstats

    key = callstats.window_key(shape["model"], shape["width"], shape["height"], shape["steps"], shape["kind"])
    return [round(float(e.split(",")[2]), 4) for e in reversed(r.lrange(key, 0, -1))]


def prewarm_steps(steps: int) -> int:
    """Steps of the pre-warm campaign: any other count, so its calls are another shape's history."""
    return 2 if steps != 2 else 3


def accuracy_round(bench: Bench, rnd: int, mode: str = "fresh") -> dict[str, Any]:
    """One planned-vs-measured round on a fresh worker. ``fresh``: the warm-up campaign is the
    worker's first work (as a newly started fleet); ``prewarmed``: the worker first renders an
    untimed campaign of the same size at another step count (another shape, so none of its calls
    enters the measured shape's history), then the warm-up."""
    from jobs.campaign import CampaignSpec
    from producer.campaigns import Campaigns
    from producer.client import Client

    args = bench.args
    bench.r.flushdb()
    quiet = wait_quiet(bench.meter, args.quiet_cores, args.quiet_wait, bench.deadline)
    worker = start_worker(bench, f"bench-{mode}-r{rnd}")
    client = Client(bench.settings(), redis_url=bench.url)
    tag = f"{mode[0]}{rnd}"
    try:
        campaigns = Campaigns(client, allow_paths=True)
        catalogs = {}
        parts = [("warmup", args.warmup_rows, args.steps), ("measured", args.rows, args.steps)]
        if mode == "prewarmed":
            parts.insert(0, ("prewarm", args.warmup_rows, prewarm_steps(args.steps)))
        for part, n, steps in parts:
            path = write_csv(bench.tmp / f"{part}-{tag}.csv", catalog_rows(n, f"{tag}{part[:2]}"))
            catalogs[part] = CampaignSpec.parse(campaign_doc(
                f"bench-{part}-{tag}", {"path": str(path), "key": "sku"}, steps=steps, styles=args.styles,
                renditions=args.renditions))
        prewarm = None
        if "prewarm" in catalogs:
            sp, cp0 = stats(bench.r), bench.meter.snapshot()
            pre = apply_and_wait(campaigns, catalogs["prewarm"], worker, bench.deadline)
            prewarm = {"cells": pre["status"]["progress"]["cells_total"], "steps": prewarm_steps(args.steps),
                       **delta(stats(bench.r), sp), "wall_s": pre["wall_s"],
                       "cpu": CpuMeter.between(cp0, bench.meter.snapshot())}
        s0, c0 = stats(bench.r), bench.meter.snapshot()
        warm = apply_and_wait(campaigns, catalogs["warmup"], worker, bench.deadline)
        s1, c1 = stats(bench.r), bench.meter.snapshot()
        t = time.perf_counter()
        plan = campaigns.plan(None, catalogs["measured"])["plan"]
        plan_s = time.perf_counter() - t
        if plan["reused"] or plan["refused"]:
            raise RuntimeError(f"the measured campaign reuses {plan['reused']} / refuses {plan['refused']} cells")
        planned = plan["gpu_seconds"]["total"]
        shape = plan["gpu_seconds"]["by_shape"][0]
        calls_before = call_seconds(bench.r, shape)
        s2, c2 = stats(bench.r), bench.meter.snapshot()
        run = apply_and_wait(campaigns, catalogs["measured"], worker, bench.deadline)
        s3, c3 = stats(bench.r), bench.meter.snapshot()
        measured = delta(s3, s2)
        calls_after = call_seconds(bench.r, shape)
        failed = {k: v for k, v in run["status"]["counts"].items() if k != "succeeded"}
        if failed:
            raise RuntimeError(f"cells that did not succeed: {failed}")
        warm_cpu, cpu = CpuMeter.between(c0, c1), CpuMeter.between(c2, c3)
        others = max(warm_cpu["other_cores"], cpu["other_cores"])
        return {
            "mode": mode, "round": rnd, "cells": plan["cells"], "masters": plan["masters"],
            "planned_gpu_s": planned, "measured_busy_s": measured["busy_s"],
            "error_pct": error_pct(planned, measured["busy_s"]),
            # Other work on the shared machine took cores while the warm-up or the campaign ran.
            "disturbed": others > args.disturbed_cores,
            "status_gpu_seconds_spent": run["status"]["progress"]["gpu_seconds_spent"],
            "calls": measured["calls"], "rows_rendered": measured["rows"], "wall_s": run["wall_s"],
            "prewarm": prewarm,
            "warmup": {"cells": warm["status"]["progress"]["cells_total"], **delta(s1, s0), "wall_s": warm["wall_s"],
                       "cpu": warm_cpu},
            "cpu": cpu, "before_round": quiet,
            "between_warmup_and_plan": delta(s2, s1),
            "plan_s": plan_s, "by_shape": plan["gpu_seconds"]["by_shape"], "eta": plan.get("eta"),
            # Each pipeline call's own seconds as the worker recorded them (oldest first): the
            # warm-up's warm calls (its first call is cold, kept apart), then the campaign's.
            "warmup_call_s": calls_before,
            "campaign_call_s": calls_after[-int(measured["calls"]):] if measured["calls"] else [],
        }
    finally:
        client.close()
        worker.stop()


# -- part 2: scale ---------------------------------------------------------------------------------
def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


class RssSampler:
    """VmRSS of one process every ``every`` seconds, in a thread; and the sum over its child
    processes (the API's prompt rules workers, safety/prompt_pool.py), sampled alongside."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.children: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> float | None:
        try:
            return vm_rss_mb(Path(f"/proc/{self.pid}/status").read_text())
        except OSError:
            return None

    def read_children(self) -> float:
        total = 0.0
        for child in child_pids(self.pid):
            try:
                total += vm_rss_mb(Path(f"/proc/{child}/status").read_text()) or 0.0
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self.read()
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self.children.append(self.read_children())
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> float | None:
        return max((v for _, v in self.samples), default=None)


class Api:
    """A real ``batchrender api`` process on a free loopback port."""

    def __init__(self, bench: Bench, name: str, env: dict[str, str]) -> None:
        import httpx

        self.port = free_port()
        self.proc = Proc(batchrender_cmd("api", "--host", "127.0.0.1", "--port", str(self.port)),
                         bench.child_env(**env), bench.tmp / f"{name}.log")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=900)

        def up() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"the API exited with {self.proc.proc.returncode}:\n{self.proc.log()[-3000:]}")
            try:
                return self.http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, bench.deadline, "the API to answer /healthz", 120, every=0.2)

    def close(self) -> None:
        self.http.close()
        self.proc.stop()


def checked(resp, what: str) -> dict[str, Any]:
    if resp.status_code >= 300:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:2000]}")
    return resp.json()


def measured_call(api: Api, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` (one HTTP request) while sampling the API's RSS: before (settled), peak, after."""
    sampler = RssSampler(api.proc.pid)
    time.sleep(0.5)
    before = statistics.median([sampler.read() or 0.0 for _ in range(3)])
    with sampler:
        t = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t
        time.sleep(1.0)
    after = sampler.read()
    peak = max(sampler.peak or 0.0, before)
    return {"wall_s": wall, "rss_before_mb": before, "rss_peak_mb": peak, "rss_after_mb": after,
            "rss_peak_growth_mb": peak - before, "rss_after_growth_mb": (after or before) - before,
            "rss_samples": len(sampler.samples),
            # the API's child processes (its prompt rules workers), not counted above
            "children_rss_peak_mb": max(sampler.children, default=0.0),
            "children_rss_after_mb": sampler.read_children(), "result": result}


def scale_round(bench: Bench, rnd: int) -> dict[str, Any]:
    from jobs.campaign import CampaignSpec
    from producer.campaigns import Campaigns
    from producer.catalog import read_path
    from producer.client import Client
    from producer.tenants import Tenants

    args = bench.args
    n = args.scale_rows
    series = f"s{rnd}"
    path = write_csv(bench.tmp / f"scale-{rnd}.csv", catalog_rows(n, series))
    api_env = {"BATCHRENDER_API_MAX_QUEUED_PER_TENANT": str(max(1000, 2 * n + 10)),
               "BATCHRENDER_MAX_BATCH_JOBS": str(min(10_000, max(1000, n))),
               "BATCHRENDER_CAMPAIGN_MAX_ROWS": str(max(10_000, n)),
               "BATCHRENDER_CAMPAIGN_MAX_CELLS": str(max(50_000, n)),
               # 10,000 requests as JSONL (renditions included) pass the 4 MiB default body limit.
               "BATCHRENDER_API_MAX_BODY_BYTES": str(32 * 2**20)}
    settings = bench.settings(**api_env)
    client = Client(settings, redis_url=bench.url)
    out: dict[str, Any] = {"round": rnd, "rows": n, "csv_bytes": path.stat().st_size}
    try:
        doc = campaign_doc(f"scale-{rnd}", {"path": str(path), "key": "sku"}, steps=args.steps, styles=0,
                           renditions=args.renditions)
        spec = CampaignSpec.parse(doc)
        campaigns = Campaigns(client, allow_paths=True)
        # Untimed: imports, moderation set-up, the registry (as an API process has them at start).
        campaigns.plan(None, CampaignSpec.parse({**doc, "name": f"scale-warm-{rnd}",
                                                 "catalog": {"rows": catalog_rows(2, "w" + series), "key": "sku"}}))
        out["plan_workers"] = settings.resolved_campaign_plan_workers
        out["torch_loaded_in_process"] = "torch" in sys.modules  # a client never loads it
        t = time.perf_counter()
        plan = campaigns.plan(None, spec)["plan"]
        out["in_process_plan_s"] = time.perf_counter() - t
        # The first plan of more than one chunk starts the prompt rules workers (safety/prompt_pool.py):
        # a second plan (other rows) in the same process finds them running.
        again = write_csv(bench.tmp / f"scale-{rnd}-again.csv", catalog_rows(n, series + "a"))
        t = time.perf_counter()
        again_plan = campaigns.plan(None, CampaignSpec.parse({**doc, "name": f"scale-again-{rnd}",
                                                              "catalog": {"path": str(again), "key": "sku"}}))["plan"]
        out["in_process_plan_again_s"] = time.perf_counter() - t
        if again_plan["cells"] != n:
            raise RuntimeError(f"the second plan has {again_plan['cells']} cells, not {n}")
        out["plan_cells"], out["plan_gpu_s"] = plan["cells"], plan["gpu_seconds"]["total"]
        if plan["refused"]:
            raise RuntimeError(f"{plan['refused']} cells of the scale catalog are refused: {plan['refusals'][:3]}")
        # The same jobs as plain requests, for the batch baseline: the campaign's own expanded cells.
        jobs = [c.request for c in campaigns.cells(spec, read_path(str(path), settings.campaign_max_rows))]
        jsonl = ("\n".join(json.dumps(j) for j in jobs) + "\n").encode()
        out["batch_body_bytes"] = len(jsonl)
        tenants = Tenants(bench.r, settings)

        def campaign_api(dry_run: bool) -> dict[str, Any]:
            who = tenants.create(f"scale-{rnd}-{'plan' if dry_run else 'apply'}")
            api = Api(bench, f"api-{rnd}-{'plan' if dry_run else 'apply'}", api_env)
            try:
                auth = {"Authorization": f"Bearer {who.api_key}"}
                up = checked(api.http.post("/v1/files", headers=auth, data={"purpose": "campaign"},
                                           files={"file": (path.name, path.read_bytes(), "text/csv")}), "upload")
                api_doc = {**doc, "catalog": {"file_id": up["id"], "key": "sku"}}
                # Untimed warm-up request: a 2-row inline plan through the same route.
                checked(api.http.post("/v1/campaigns", params={"dry_run": "true"}, headers=auth, json={
                    **doc, "name": f"warm-{rnd}", "catalog": {"rows": catalog_rows(2, "x" + series), "key": "sku"}}),
                    "warm-up plan")
                # skip_refused: a generated name can hit the content policy (row 1488 does: "1488" is a
                # hate code); those cells are refused by row, the rest are queued, as a user would.
                m = measured_call(api, lambda: checked(api.http.post(
                    "/v1/campaigns", params={"dry_run": "true"} if dry_run else {"skip_refused": "true"},
                    headers=auth, json=api_doc), "dry run" if dry_run else "apply"))
                res = m.pop("result")
                m["cells"] = res["plan"]["cells"]
                m["refused"] = res["plan"]["refused"]
                if not dry_run:
                    m["submitted"] = res["applied"]["submitted"]
                    m["tenant_active_after"] = client.store.tenant_active(who.tenant_id)
                else:
                    # a second dry run (other rows) in the same API process: its workers are running
                    other = write_csv(bench.tmp / f"scale-{rnd}-api-again.csv", catalog_rows(n, series + "b"))
                    up2 = checked(api.http.post("/v1/files", headers=auth, data={"purpose": "campaign"},
                                                files={"file": (other.name, other.read_bytes(), "text/csv")}),
                                  "upload")
                    m2 = measured_call(api, lambda: checked(api.http.post(
                        "/v1/campaigns", params={"dry_run": "true"}, headers=auth,
                        json={**doc, "name": f"scale-again-{rnd}", "catalog": {"file_id": up2["id"], "key": "sku"}}),
                        "second dry run"))
                    res2 = m2.pop("result")
                    m2["cells"], m2["refused"] = res2["plan"]["cells"], res2["plan"]["refused"]
                    m["again"] = m2
                return m
            finally:
                api.close()

        def batch_api() -> dict[str, Any]:
            who = tenants.create(f"scale-{rnd}-batch")
            api = Api(bench, f"api-{rnd}-batch", api_env)
            try:
                auth = {"Authorization": f"Bearer {who.api_key}", "Content-Type": "application/jsonl"}
                warm = (json.dumps({**jobs[0], "custom_id": "warm", "prompt": "warm-up " + jobs[0]["prompt"]}) +
                        "\n").encode()
                checked(api.http.post("/v1/batches", headers=auth, content=warm), "warm-up batch")
                m = measured_call(api, lambda: checked(api.http.post("/v1/batches", headers=auth, content=jsonl),
                                                       "batch"))
                res = m.pop("result")
                m["accepted"] = res.get("accepted", res.get("total"))
                m["rejected"] = res.get("rejected")
                return m
            finally:
                api.close()

        bench.deadline.check("starting the API measurements")
        out["api_dry_run"] = campaign_api(True)
        bench.deadline.check("planning through the API")
        out["api_apply"] = campaign_api(False)
        bench.deadline.check("applying through the API")
        out["api_batch"] = batch_api()
        return out
    finally:
        client.close()


# -- output ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(), "memory_gib": mem,
            "system": platform.platform()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "celery", "redis", "fastapi", "uvicorn"):
        try:
            out[name] = version(name)  # from the installed metadata: importing torch here would load it
        except PackageNotFoundError:
            out[name] = "?"
    try:
        v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        out["redis-server"] = next((p.split("=", 1)[1] for p in v.split() if p.startswith("v=")), v.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(out: dict[str, Any]) -> str:
    lines = []
    acc = out.get("accuracy") or []
    if acc:
        a, pr = acc[0], out["params"]
        lines.append(f"planned vs measured GPU-seconds: {a['cells']} cells ({pr['rows']} rows x {pr['styles']} styles, "
                     f"{pr['renditions']} renditions, {pr['steps']} steps), planned after a "
                     f"{a['warmup']['cells']}-cell warm-up; worker batch {pr.get('worker_max_batch')}")
        lines.append(f"{'mode':<11}{'round':<7}{'planned s':>10}{'measured s':>11}{'error':>10}{'calls':>7}"
                     f"{'warm-up s/call':>16}{'campaign s/call':>17}{'other cores':>13}  note")
        for a in acc:
            wc = a["warmup_call_s"]
            cc = a["campaign_call_s"]
            lines.append(f"{a['mode']:<11}{a['round']:<7}{fmt(a['planned_gpu_s'], '.3f'):>10}"
                         f"{a['measured_busy_s']:>11.3f}{fmt(a['error_pct'], '+.1f') + ' %':>10}{a['calls']:>7}"
                         f"{fmt(sum(wc) / len(wc) if wc else None, '.3f'):>16}"
                         f"{fmt(sum(cc) / len(cc) if cc else None, '.3f'):>17}"
                         f"{max(a['warmup']['cpu']['other_cores'], a['cpu']['other_cores']):>13.2f}"
                         f"  {'disturbed' if a['disturbed'] else ''}")
        for mode, sm in (out.get("accuracy_summary") or {}).items():
            lines.append(f"{mode:<11}{'median':<7}{fmt(sm['planned_gpu_s'], '.3f'):>10}{fmt(sm['measured_busy_s'], '.3f'):>11}"
                         f"{fmt(sm['error_pct'], '+.1f') + ' %':>10}   of {sm['rounds']} undisturbed round(s); "
                         f"|error| median {fmt(sm['abs_error_pct'], '.1f')} %, worst {fmt(sm['worst_abs_error_pct'], '.1f')} %"
                         f" (target: within 25 %)")
    sc = out.get("scale") or []
    if sc:
        lines.append("")
        lines.append(f"scale: {sc[0]['rows']}-row catalog x 1 cell ({sc[0]['csv_bytes'] / 1e6:.2f} MB CSV; "
                     f"batch baseline body {sc[0]['batch_body_bytes'] / 1e6:.2f} MB JSONL)")
        lines.append(f"prompt rules workers: {sc[0].get('plan_workers')} (BATCHRENDER_CAMPAIGN_PLAN_WORKERS; the "
                     "first plan of a process starts them, the second finds them running)")
        lines.append(f"{'round':<8}{'what':<40}{'wall s':>9}{'RSS before MB':>15}{'peak growth MB':>16}"
                     f"{'after growth MB':>17}{'workers MB':>12}")
        for s in sc:
            lines.append(f"{s['round']:<8}{'plan() in process, first':<40}{s['in_process_plan_s']:>9.2f}")
            if "in_process_plan_again_s" in s:
                lines.append(f"{'':<8}{'plan() in process, second':<40}{s['in_process_plan_again_s']:>9.2f}")
            rows = [("api_dry_run", "POST /v1/campaigns?dry_run=true", s["api_dry_run"])]
            if "again" in s["api_dry_run"]:
                rows.append(("", "  the same API process, second dry run", s["api_dry_run"]["again"]))
            rows += [("api_apply", "POST /v1/campaigns (apply, queues all)", s["api_apply"]),
                     ("api_batch", "baseline: POST /v1/batches (JSONL)", s["api_batch"])]
            for _key, what, m in rows:
                lines.append(f"{'':<8}{what:<40}{m['wall_s']:>9.2f}{m['rss_before_mb']:>15.1f}"
                             f"{m['rss_peak_growth_mb']:>16.1f}{m['rss_after_growth_mb']:>17.1f}"
                             f"{fmt(m.get('children_rss_peak_mb'), '.1f'):>12}")
    return "\n".join(lines)


def summarise_accuracy(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    errs = [r["error_pct"] for r in rounds]
    return {"planned_gpu_s": median([r["planned_gpu_s"] for r in rounds]),
            "measured_busy_s": median([r["measured_busy_s"] for r in rounds]),
            "error_pct": median(errs),
            "abs_error_pct": median([abs(e) if e is not None else None for e in errs]),
            "worst_abs_error_pct": max((abs(e) for e in errs if e is not None), default=None),
            "within_25_pct": bool(errs) and all(e is not None and abs(e) <= 25 for e in errs),
            "rounds": len(rounds)}


def summarise_modes(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, over its undisturbed rounds."""
    modes = dict.fromkeys(r["mode"] for r in rounds)
    return {m: summarise_accuracy([r for r in rounds if r["mode"] == m and not r["disturbed"]]) for m in modes}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = Deadline(args.time_limit)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    out: dict[str, Any] = {
        "command": "python benchmarks/campaign_plan.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(), "versions": versions(), "checkout": checkout(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": {k: getattr(args, k) for k in ("rounds", "warmup_rows", "rows", "styles", "renditions", "steps",
                                                 "max_batch", "scale_rows", "scale_rounds", "quiet_cores", "quiet_wait",
                                                 "modes", "disturbed_cores", "max_tries")},
        "accuracy": [], "scale": []}

    def write() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")

    bench = None
    try:
        bench = Bench(args, deadline)
        out["params"]["worker_max_batch"] = args.max_batch or bench.default_max_batch
        # Modes round-robin; a round disturbed by other work on the machine is kept (reported) and
        # run again, until each mode has --rounds undisturbed ones or --max-tries rounds.
        good = {m: 0 for m in args.mode_list}
        tries = {m: 0 for m in args.mode_list}
        while not args.skip_accuracy:
            todo = [m for m in args.mode_list if good[m] < args.rounds and tries[m] < args.max_tries]
            if not todo:
                break
            for mode in todo:
                deadline.check(f"starting a {mode} round")
                tries[mode] += 1
                r = accuracy_round(bench, tries[mode], mode)
                good[mode] += not r["disturbed"]
                out["accuracy"].append(r)
                out["accuracy_summary"] = summarise_modes(out["accuracy"])
                print(f"{mode} round {tries[mode]}: planned {fmt(r['planned_gpu_s'], '.3f')} s, measured "
                      f"{r['measured_busy_s']:.3f} s, error {fmt(r['error_pct'], '+.1f')} %"
                      f"{' (disturbed: other work used cores)' if r['disturbed'] else ''}", flush=True)
                write()
        for rnd in range(1, (0 if args.skip_scale else args.scale_rounds) + 1):
            deadline.check(f"starting scale round {rnd}")
            out["scale"].append(scale_round(bench, rnd))
            write()
            print(f"scale round {rnd} done", flush=True)
    finally:
        for p in list(RUNNING):
            if bench is None or p is not bench.redis:
                p.stop()
        if bench is not None:
            bench.close()
        write()
    print()
    print(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, {out['machine']['memory_gib']} GiB; "
          + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))
    print(f"commit: {out['checkout']['commit']}" + (f" (+{len(out['checkout']['modified'])} modified files)"
                                                   if out['checkout']['modified'] else ""))
    print()
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
