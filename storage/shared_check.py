"""Is storage shared by every process of the deployment? Refused when it cannot be, proved when it can.

Two hosts that share only Redis must also share storage, or a job succeeds on a worker whose image
the API then cannot find (``output_not_found``). So:

- ``require_shared_storage``: local storage (``file://``, the default under the home) together with
  a configured Redis (a deployment that may span hosts) is refused at start, unless the directory
  is declared one shared mount (``BATCHRENDER_STORAGE_SHARED=1``, e.g. NFS on every host).
- Markers: each render worker writes a small object to storage at start and every
  ``MARKER_EVERY_S`` (its name, host, Redis ``TIME`` and a random nonce) and records its key in
  Redis. ``verify_markers`` (``/readyz``, ``doctor``) reads every recent marker back from its own
  storage and names the worker whose marker it cannot read: a declared-shared mount that is not,
  two S3 prefixes, two endpoints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import weakref
from typing import Any, Callable
from urllib.parse import urlparse

from jobs.errors import ConfigurationError
from jobs.names import KEY_PREFIX
from jobs.settings import Settings, redact_url

log = logging.getLogger(__name__)

#: Redis hash: worker name -> JSON of its latest marker (key, nonce, time, host, pid, storage URL).
MARKERS_KEY = f"{KEY_PREFIX}storage-markers"
#: Where markers live in storage (one object per worker name, overwritten).
MARKER_PREFIX = "_health/markers"
#: A worker rewrites its marker this often; a marker older than ``MARKER_STALE_S`` (by Redis
#: ``TIME``) belongs to a worker that stopped and is not checked; after ``MARKER_FORGET_S`` it is dropped.
MARKER_EVERY_S = 60.0
MARKER_STALE_S = 5 * MARKER_EVERY_S
MARKER_FORGET_S = 24 * 3600.0

SHORT_FIX = "use one S3 bucket/prefix, or one mount declared BATCHRENDER_STORAGE_SHARED=1, on every host"
SHARED_FIX = ("use S3 storage (BATCHRENDER_STORAGE_URL=s3://bucket/prefix) on every host, or mount one shared "
              "directory (NFS, ...) at the same path on every host and declare it with BATCHRENDER_STORAGE_SHARED=1")


def is_local(settings: Settings) -> bool:
    return urlparse(settings.resolved_storage_url).scheme == "file"


def require_shared_storage(settings: Settings) -> None:
    """ConfigurationError when local storage meets a configured (shareable) Redis undeclared.

    The embedded broker (no ``redis_url``) is one host by construction: its local storage is fine.
    """
    if settings.redis_url and is_local(settings) and not settings.storage_shared:
        where = "the default local storage" if settings.storage_url is None else "local storage"
        raise ConfigurationError(
            f"{where} ({settings.resolved_storage_url}) cannot be used with a shared Redis "
            "(BATCHRENDER_REDIS_URL is set): a worker's images would exist only on its own disk and the API "
            f"of another host answers output_not_found. Fix: {SHARED_FIX}"
        )


def redis_time(r: Any) -> float:
    """Redis' clock (``TIME``), in seconds: the one clock every host of the fleet reads alike."""
    seconds, micros = r.time()
    return int(seconds) + int(micros) / 1e6


def marker_key(worker: str) -> str:
    return f"{MARKER_PREFIX}/{hashlib.sha256(worker.encode()).hexdigest()[:24]}.json"


def write_marker(storage: Any, r: Any, worker: str, storage_url: str) -> dict[str, Any]:
    """Write this worker's marker object, then record it in Redis (in that order: a recorded
    marker always exists, unless storage lost it). Returns the record."""
    now = redis_time(r)
    record = {"key": marker_key(worker), "nonce": secrets.token_hex(16), "written_at": now,
              "host": socket.gethostname(), "pid": os.getpid(), "storage": redact_url(storage_url)}
    body = json.dumps({"worker": worker, **record}).encode()
    storage.put(record["key"], body, content_type="application/json")
    p = r.pipeline()
    p.hset(MARKERS_KEY, worker, json.dumps(record))
    p.expire(MARKERS_KEY, int(MARKER_FORGET_S))
    p.execute()
    return record


def forget_marker(storage: Any, r: Any, worker: str) -> None:
    """Remove a stopping worker's marker (its record first, so no reader meets a missing object)."""
    r.hdel(MARKERS_KEY, worker)
    storage.delete(marker_key(worker))


def start_markers(worker: str | None, context: Callable[[], Any], settings: Settings) -> None:
    """Write the marker now and every ``MARKER_EVERY_S`` from a daemon thread (worker start).

    ``context()`` returns the worker's per-process context (``.storage``, ``.store.r``). A failed
    write is logged and tried again next round: readiness reports the stale marker meanwhile.
    """
    from jobs.periodic import start_periodic

    name = worker or f"{socket.gethostname()}:{os.getpid()}"

    def write() -> None:
        ctx = context()
        write_marker(ctx.storage, ctx.store.r, name, settings.resolved_storage_url)

    try:
        write()
    except Exception as e:  # noqa: BLE001 - Redis or storage away at start: the periodic round retries
        log.warning("could not write this worker's storage marker (%s); retrying every %.0f s", e, MARKER_EVERY_S)
    start_periodic("storage-marker", 2 * MARKER_EVERY_S, write)


#: Markers already read back, per storage object: a marker is read once per nonce, not per probe.
_verified: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()
_verified_lock = threading.Lock()


def live_markers(r: Any) -> dict[str, dict[str, Any]]:
    """Recorded markers younger than ``MARKER_STALE_S`` (by Redis ``TIME``); very old ones are dropped."""
    now = redis_time(r)
    live, forget = {}, []
    for worker, raw in r.hgetall(MARKERS_KEY).items():
        worker = worker.decode() if isinstance(worker, bytes) else worker
        try:
            record = json.loads(raw)
            age = now - float(record["written_at"])
        except (ValueError, KeyError, TypeError):
            forget.append(worker)
            continue
        if age > MARKER_FORGET_S:
            forget.append(worker)
        elif age <= MARKER_STALE_S:
            live[worker] = {**record, "age_s": max(0.0, age)}
    if forget:
        r.hdel(MARKERS_KEY, *forget)
    return live


def verify_markers(storage: Any, r: Any, storage_url: str, *, role: str = "this API") -> str:
    """Read every live worker's marker back from ``storage``; RuntimeError naming the workers
    whose marker is missing or different here. Returns a one-line summary."""
    markers = live_markers(r)
    if not markers:
        return "no worker has written a storage marker yet (render workers write one at start)"
    with _verified_lock:
        seen = _verified.setdefault(storage, set())
    problems = []
    for worker, m in sorted(markers.items()):
        if m.get("nonce") in seen:
            continue
        try:
            body = json.loads(storage.get(m["key"]))
            if body.get("nonce") != m["nonce"] and not (
                    # rewritten since the record was read: a newer marker of the same worker proves as much
                    body.get("worker") == worker and float(body.get("written_at", 0)) > float(m["written_at"])):
                raise KeyError(m["key"])  # an older marker (another directory's leftover) proves nothing
        except KeyError:
            problems.append(f"{worker} (host {m.get('host')}): its marker is not in {redact_url(storage_url)} "
                            f"(it wrote to {m.get('storage')} {m['age_s']:.0f} s ago)")
            continue
        except Exception as e:  # noqa: BLE001 - unreadable for any reason: that worker is named
            problems.append(f"{worker} (host {m.get('host')}): its marker cannot be read from "
                            f"{redact_url(storage_url)}: {type(e).__name__}: {e}")
            continue
        with _verified_lock:
            seen.add(m["nonce"])
            if len(seen) > 10_000:  # a long-lived API in a fleet that restarts workers often
                seen.clear()
    if problems:
        raise RuntimeError(f"storage is not shared between {role} and worker " + "; worker ".join(problems)
                           + f"; {SHORT_FIX}")
    return f"reads the markers of {len(markers)} worker(s): {', '.join(sorted(markers))}"


__all__ = ["MARKERS_KEY", "MARKER_EVERY_S", "SHARED_FIX", "forget_marker", "live_markers", "marker_key",
           "redis_time", "require_shared_storage", "start_markers", "verify_markers", "write_marker"]
