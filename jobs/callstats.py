"""The fleet's measured per-call render history, for planning (GPU-seconds, ETAs). Torch-free.

Every pipeline call a render worker makes is recorded here (worker/runner.py), by *shape*: model,
width, height, steps and kind (``render``: text-to-image; ``img2img``; ``inpaint``: a mask, which
is what outpainting is). Redis keys, under ``jobs.names.KEY_PREFIX``:

``callstats:shape:{model}:{w}x{h}:{steps}:{kind}``  hash: ``calls``, ``rows`` (padding included: a
    padded row costs what a real one does), ``seconds`` (summed), ``last_at``; plus ``cold_calls``,
    ``cold_rows``, ``cold_seconds``: the first call of a shape in a worker process, kept apart
    because it carries one-off warm-up (CUDA kernels, ``torch.compile``'s first trace)
``callstats:window:{model}:{w}x{h}:{steps}:{kind}`` list: the last ``WINDOW`` records of that
    shape (``calls,rows,seconds``), newest first, so an estimate follows the fleet when it changes
    (new GPUs, a render option switched on)
``callstats:model-window:{model}``  list: the same for every shape of the model (its busy rate)
``callstats:shapes:{model}``        set: the model's measured shapes (``{w}x{h}:{steps}:{kind}``)
``callstats:workers:{model}``       sorted set: render workers that serve the model (member
    ``hostname:pid``, score: the last time it said so). A worker beats at start, every
    ``HEARTBEAT_EVERY_S`` while it runs (a thread, so a long render does not silence it) and at each
    call, and leaves at a warm shutdown; it is *live* while its beat is under ``LIVE_WITHIN_S``
    old. This is how the planner counts workers: Celery's ``inspect`` broadcasts and waits for
    replies, too slow (and too easily stuck) for an API request.

Shape records expire ``TTL_S`` after their last call, so sizes nobody renders any more fade away.
Steps of an image-conditioned call (img2img, inpaint) are the steps it denoises,
``int(steps * strength)`` as diffusers counts them, so its cost scales like a text-to-image call.

Recording is statistics: it never raises into the render path (errors are logged and dropped).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from jobs.names import KEY_PREFIX, job_key, queued_key

log = logging.getLogger(__name__)

#: Records kept per shape (and per model) in the recent windows.
WINDOW = 50
#: A shape's record expires this long after its last call.
TTL_S = 30 * 24 * 3600
#: A worker is live while its last beat is younger than this.
LIVE_WITHIN_S = 300.0
#: How often a running worker beats (worker/app.py).
HEARTBEAT_EVERY_S = 60.0
#: Queued jobs ``queue_snapshot`` reads the requests of; past that it extrapolates from them.
QUEUE_READ_LIMIT = 500
KINDS = ("render", "img2img", "inpaint")

_PREFIX = f"{KEY_PREFIX}callstats:"
#: Shapes this process has called once already (pid, model, w, h, steps, kind): later calls are warm.
_warm: set[tuple] = set()


def _shape_id(width: int, height: int, steps: int, kind: str) -> str:
    return f"{int(width)}x{int(height)}:{int(steps)}:{kind}"


def shape_key(model: str, width: int, height: int, steps: int, kind: str = "render") -> str:
    return f"{_PREFIX}shape:{model}:{_shape_id(width, height, steps, kind)}"


def window_key(model: str, width: int, height: int, steps: int, kind: str = "render") -> str:
    return f"{_PREFIX}window:{model}:{_shape_id(width, height, steps, kind)}"


def model_window_key(model: str) -> str:
    return f"{_PREFIX}model-window:{model}"


def shapes_key(model: str) -> str:
    return f"{_PREFIX}shapes:{model}"


def workers_key(model: str) -> str:
    return f"{_PREFIX}workers:{model}"


def kind_of(inpaint: bool = False, strength: float | None = None) -> str:
    return "inpaint" if inpaint else "img2img" if strength is not None else "render"


def denoised_steps(steps: int, strength: float | None) -> int:
    """Steps a call runs: all of them for text-to-image, ``int(steps * strength)`` (at least 1)
    for image-conditioned calls, as diffusers' img2img and inpaint pipelines count them."""
    if strength is None:
        return int(steps)
    return max(1, min(int(steps), int(int(steps) * float(strength))))


# -- recording (worker) --------------------------------------------------------------------------
def record_call(r: Any, *, model: str, width: int, height: int, steps: int, rows: int, seconds: float,
                inpaint: bool = False, kind: str | None = None, calls: int = 1, cold: bool | None = None,
                worker: str | None = None, now: float | None = None) -> bool:
    """Record ``calls`` pipeline calls of one shape that rendered ``rows`` rows (padding included)
    in ``seconds``. ``kind`` defaults to ``inpaint`` / ``render`` from ``inpaint``. ``cold``: None
    decides by this process's history (the first record of a shape in a process is cold). Also
    beats for ``worker`` (default: this process). True when recorded; never raises."""
    kind = kind or ("inpaint" if inpaint else "render")
    try:
        if calls <= 0 or rows <= 0 or not seconds > 0 or not math.isfinite(seconds):
            return False
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        now = time.time() if now is None else now
        if cold is None:
            seen = (os.getpid(), model, int(width), int(height), int(steps), kind)
            cold = seen not in _warm
            _warm.add(seen)
        key = shape_key(model, width, height, steps, kind)
        entry = f"{int(calls)},{int(rows)},{float(seconds):.6f}"
        pre = "cold_" if cold else ""
        with r.pipeline(transaction=False) as p:
            p.hincrby(key, pre + "calls", int(calls))
            p.hincrby(key, pre + "rows", int(rows))
            p.hincrbyfloat(key, pre + "seconds", float(seconds))
            p.hset(key, mapping={"last_at": repr(now), "model": model, "width": int(width), "height": int(height),
                                 "steps": int(steps), "kind": kind})
            p.expire(key, TTL_S)
            p.sadd(shapes_key(model), _shape_id(width, height, steps, kind))
            p.expire(shapes_key(model), TTL_S)
            if not cold:  # the windows are what estimates read: warm calls only
                for wkey in (window_key(model, width, height, steps, kind), model_window_key(model)):
                    p.lpush(wkey, entry)
                    p.ltrim(wkey, 0, WINDOW - 1)
                    p.expire(wkey, TTL_S)
            _beat(p, [model], worker or worker_id(), now)
            p.execute()
        return True
    except Exception as e:  # noqa: BLE001 - statistics must never fail a render
        log.warning("call statistics of %s %sx%s/%s not recorded: %s", model, width, height, steps, e)
        return False


def record_calls(r: Any, measured: Iterable[tuple[Any, int, float]]) -> int:
    """Record ``(shape, rows, seconds)`` per pipeline call, ``shape`` with the attributes of
    worker.render.CallShape (model, width, height, steps, strength, inpaint); calls of one shape
    are summed into one record. Returns the records written; never raises."""
    sums: dict[tuple, list] = {}  # (key, cold) -> [calls, rows, seconds]
    try:
        for shape, rows, seconds in measured:
            strength = getattr(shape, "strength", None)
            k = (shape.model, int(shape.width), int(shape.height), denoised_steps(shape.steps, strength),
                 kind_of(bool(getattr(shape, "inpaint", False)), strength))
            # Only the very first call of a shape in this process is cold, not its whole group.
            cold = (os.getpid(), *k) not in _warm
            _warm.add((os.getpid(), *k))
            s = sums.setdefault((k, cold), [0, 0, 0.0])
            s[0], s[1], s[2] = s[0] + 1, s[1] + int(rows), s[2] + float(seconds)
    except Exception as e:  # noqa: BLE001
        log.warning("call statistics not recorded: %s", e)
        return 0
    return sum(record_call(r, model=m, width=w, height=h, steps=st, kind=kind, calls=c, rows=n, seconds=s, cold=cold)
               for ((m, w, h, st, kind), cold), (c, n, s) in sums.items())


# -- workers -------------------------------------------------------------------------------------
def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _beat(p: Any, models: Iterable[str], worker: str, now: float) -> None:
    for model in models:
        p.zadd(workers_key(model), {worker: now})
        # Workers gone for a day are forgotten (the set stays small however often workers restart).
        p.zremrangebyscore(workers_key(model), "-inf", now - 24 * 3600)


def heartbeat(r: Any, models: Iterable[str], worker: str | None = None, now: float | None = None) -> bool:
    """Say that ``worker`` (default: this process) serves ``models``, now. Never raises."""
    try:
        with r.pipeline(transaction=False) as p:
            _beat(p, list(models), worker or worker_id(), time.time() if now is None else now)
            p.execute()
        return True
    except Exception as e:  # noqa: BLE001
        log.warning("worker heartbeat not recorded: %s", e)
        return False


def leave(r: Any, models: Iterable[str], worker: str | None = None) -> None:
    """``worker`` no longer serves ``models`` (a warm shutdown). Never raises."""
    try:
        with r.pipeline(transaction=False) as p:
            for model in models:
                p.zrem(workers_key(model), worker or worker_id())
            p.execute()
    except Exception as e:  # noqa: BLE001
        log.warning("worker heartbeat not removed: %s", e)


def live_workers(r: Any, model: str, within_s: float = LIVE_WITHIN_S, now: float | None = None) -> list[str]:
    """The workers that beat for ``model`` within the last ``within_s`` seconds."""
    now = time.time() if now is None else now
    return list(r.zrangebyscore(workers_key(model), now - within_s, "+inf"))


# -- estimating (planner) ------------------------------------------------------------------------
@dataclass
class Estimate:
    """Seconds per pipeline row for a shape, and what they were measured on.

    ``source``: ``measured`` (this very shape) or ``scaled`` (another shape of the same model, times
    ``factor`` = (w·h·steps)/(w0·h0·steps0); or the same size measured for another kind).
    ``calls``/``rows``: the calls and rows the figure comes from (the recent window when there is
    one, else the whole history); ``total_calls``: every warm call of the measured shape.
    ``warm``: False when only first calls of a process (warm-up included) were measured."""

    seconds_per_row: float
    source: str
    calls: int
    rows: int
    measured_shape: dict[str, Any]
    factor: float = 1.0
    total_calls: int = 0
    warm: bool = True
    recent: bool = True
    last_at: float | None = None
    note: str | None = None
    #: The kind asked for (``measured_shape["kind"]`` is the kind measured).
    kind: str = "render"

    def to_dict(self) -> dict[str, Any]:
        """For a plan entry: no top-level model/size/steps/kind/rows (the entry has its own);
        the measured row count is ``measured_rows``."""
        d = asdict(self)
        d.pop("kind")
        d["measured_rows"] = d.pop("rows")
        d["seconds_per_row"] = round(self.seconds_per_row, 6)
        d["factor"] = round(self.factor, 6)
        if d["note"] is None:
            d.pop("note")
        return d


def _parse_shape(member: str) -> tuple[int, int, int, str] | None:
    try:
        size, steps, kind = member.split(":")
        w, h = size.split("x")
        return int(w), int(h), int(steps), kind
    except ValueError:
        return None


def _window_sums(entries: list[str]) -> tuple[int, int, float]:
    calls = rows = 0
    seconds = 0.0
    for e in entries:
        try:
            c, n, s = e.split(",")
            calls, rows, seconds = calls + int(c), rows + int(n), seconds + float(s)
        except ValueError:
            continue
    return calls, rows, seconds


def _measurement(h: dict[str, str], window: list[str]) -> tuple[float, int, int, bool, bool] | None:
    """(seconds per row, calls, rows, warm, recent) of a shape's record, or None when empty."""
    calls, rows, seconds = _window_sums(window)
    if rows > 0 and seconds > 0:
        return seconds / rows, calls, rows, True, True
    for pre, warm in (("", True), ("cold_", False)):
        rows, seconds = int(h.get(pre + "rows") or 0), float(h.get(pre + "seconds") or 0.0)
        if rows > 0 and seconds > 0:
            return seconds / rows, int(h.get(pre + "calls") or 0), rows, warm, False
    return None


def estimate(r: Any, *, model: str, width: int, height: int, steps: int, kind: str = "render") -> Estimate | None:
    """Seconds per pipeline row of ``model`` at ``width`` x ``height``, ``steps``, ``kind``.

    The shape itself when measured. Otherwise the measured shape of the SAME model nearest in
    work (smallest ``|log(pixels·steps / pixels0·steps0)|``; ties: the most calls), scaled
    linearly by pixels × steps and marked ``scaled``. A kind without measurements of its own
    (``inpaint``: outpainting; ``img2img``) uses the model's ``render`` ones, then any kind, marked
    ``scaled``. None when the model has no measurement at all: scaling across models is refused,
    because models differ in architecture, precision and options far beyond their pixel count.
    Warm measurements (the recent window, else the history) are preferred; a shape measured only by
    first calls of a process (warm-up included, so an overestimate) is used when nothing else is
    and says ``warm: false``."""
    members = [s for s in (_parse_shape(m) for m in r.smembers(shapes_key(model))) if s is not None]
    if not members:
        return None
    with r.pipeline(transaction=False) as p:
        for w, h, st, k in members:
            p.hgetall(shape_key(model, w, h, st, k))
            p.lrange(window_key(model, w, h, st, k), 0, WINDOW - 1)
        got = p.execute()
    measured = []
    for i, (w, h, st, k) in enumerate(members):
        m = _measurement(got[2 * i] or {}, got[2 * i + 1] or [])
        if m is not None:
            measured.append(((w, h, st, k), m, got[2 * i]))
    if not measured:
        return None
    work = max(1, int(width) * int(height) * int(steps))
    order = [kind] + [k for k in ("render", *KINDS) if k != kind]

    def rank(item) -> tuple:
        (w, h, st, k), m, _ = item
        return (order.index(k) if k in order else len(order), not m[3],  # same kind first, then warm
                abs(math.log(work / max(1, w * h * st))), -m[1])

    (w0, h0, st0, k0), (spr, calls, rows, warm, recent), hrec = min(measured, key=rank)
    factor = work / max(1, w0 * h0 * st0)
    exact = (w0, h0, st0, k0) == (int(width), int(height), int(steps), kind)
    note = None
    if not exact:
        note = (f"scaled from {model} {w0}x{h0}, {st0} steps ({k0}) by pixels x steps (x{factor:.3g})"
                + ("" if k0 == kind else f"; no {kind} call of {model} measured yet"))
    return Estimate(seconds_per_row=spr * factor, source="measured" if exact else "scaled", calls=calls, rows=rows,
                    measured_shape={"model": model, "width": w0, "height": h0, "steps": st0, "kind": k0},
                    factor=1.0 if exact else factor, total_calls=int(hrec.get("calls") or 0), warm=warm,
                    recent=recent, last_at=float(hrec["last_at"]) if hrec.get("last_at") else None, note=note,
                    kind=kind)


def model_rate(r: Any, model: str) -> dict[str, Any]:
    """The model's recent per-worker busy rate, from its window: rows, seconds, calls, rows/s."""
    calls, rows, seconds = _window_sums(r.lrange(model_window_key(model), 0, WINDOW - 1))
    return {"recent_calls": calls, "recent_rows": rows, "recent_seconds": round(seconds, 3),
            "rows_per_second": round(rows / seconds, 6) if rows and seconds > 0 else None,
            "seconds_per_row": round(seconds / rows, 6) if rows and seconds > 0 else None}


def request_shapes(q: dict[str, Any]) -> dict[tuple[int, int, int, str], int]:
    """Pipeline rows per (w, h, denoised steps, kind) of one stored (resolved) request: images x
    palette tries; an outpainting render per ``extend`` rendition, counted as ``inpaint`` rows at
    the image's size (their canvas is of the model's native size for the rendition's ratio,
    about the same pixels). Empty when the request has no size (not resolved)."""
    try:
        w, h, steps = int(q["width"]), int(q["height"]), int(q["steps"])
    except (KeyError, TypeError, ValueError):
        return {}
    n = int(q.get("num_images") or 1)
    tries = int(q.get("palette_tries") or 1) if q.get("palette_strict") else 1
    # The stored request has its image and mask moved out (producer/client.py); a strength is
    # set exactly when there was an image. A masked job is priced as img2img (about the same).
    strength = q.get("strength")
    out = {(w, h, denoised_steps(steps, strength), kind_of(False, strength)): n * tries}
    extends = sum(1 for x in q.get("renditions") or [] if isinstance(x, dict) and x.get("fit") == "extend")
    if extends:
        key = (w, h, steps, "inpaint")
        out[key] = out.get(key, 0) + n * extends
    return out


def _queued_shapes(requests: list[str | None]) -> dict[tuple[int, int, int, str], int]:
    """Rows per shape of queued jobs' stored requests (``request_shapes``)."""
    out: dict[tuple[int, int, int, str], int] = {}
    for raw in requests:
        try:
            q = json.loads(raw or "{}")
        except ValueError:
            continue
        if not isinstance(q, dict):
            continue
        for key, rows in request_shapes(q).items():
            out[key] = out.get(key, 0) + rows
    return out


def queue_snapshot(r: Any, model: str, *, live_within_s: float = LIVE_WITHIN_S,
                   read_limit: int = QUEUE_READ_LIMIT) -> dict[str, Any]:
    """What an ETA for ``model`` needs, from Redis only (no Celery broadcast):

    ``queued_jobs``: jobs of the model still queued (not those rendering now); ``queued_rows`` and
    ``ahead_gpu_seconds``: their pipeline rows and GPU-seconds, from the stored requests of the
    first ``read_limit`` of them (extrapolated past that: ``sampled`` true), each shape priced by
    ``estimate`` (a shape it cannot price at the model's recent seconds per row; None when the model
    has no measurement at all); ``seconds_per_row``/``rows_per_second``: the model's recent
    per-worker busy rate; ``workers``: live workers that serve the model (``worker_ids``)."""
    queued = int(r.zcard(queued_key(model)))
    keys = r.zrange(queued_key(model), 0, read_limit - 1) if queued else []
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.hget(k if k.startswith(job_key("")) else job_key(k), "request")
        requests = p.execute() if keys else []
    rate = model_rate(r, model)
    shapes = _queued_shapes(requests)
    rows = sum(shapes.values())
    seconds: float | None = 0.0
    unpriced = 0
    for (w, h, st, kind), n in shapes.items():
        est = estimate(r, model=model, width=w, height=h, steps=st, kind=kind)
        if est is not None:
            seconds += est.seconds_per_row * n  # type: ignore[operator]
        elif rate["seconds_per_row"] is not None:
            seconds += rate["seconds_per_row"] * n  # type: ignore[operator]
            unpriced += n
        else:
            seconds = None
            break
    scale = queued / len(keys) if keys else 1.0
    workers = live_workers(r, model, live_within_s)
    return {
        "model": model,
        "queued_jobs": queued,
        "queued_rows": round(rows * scale) if keys else 0,
        "ahead_gpu_seconds": None if seconds is None else round(seconds * scale, 3),
        "sampled": len(keys) < queued,
        **({"unpriced_rows": round(unpriced * scale)} if unpriced else {}),
        **rate,
        "workers": len(workers),
        "worker_ids": sorted(workers)[:20],
        "live_within_s": live_within_s,
    }
