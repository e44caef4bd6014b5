"""Readiness: what a deployment needs before it can take work, checked for real. Used by the
API's ``/readyz`` (through :class:`Readiness`: one check at a time, its report reused for a few
seconds) and by ``batchrender doctor``.

``/readyz`` is unauthenticated, so a crowd of probes must cost what one does. It used to run the
whole check, a Celery ``inspect`` included, in a request thread per probe: each broadcast held a
connection of the app's broker pool while asking the same pool for a producer, so ~20 at once
deadlocked every pooled connection and 40 hung every thread sync routes run in (issue 26). Now the
workers are asked over a connection of the check's own, with bounded retries and socket timeouts,
and probes wait for the one check under way without holding a thread.
"""
from __future__ import annotations

import asyncio
import secrets
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from jobs import fleet
from jobs.names import WEBHOOK_QUEUE, render_queue
from storage import shared_check


def readiness(client, inspect_timeout_s: float = 1.0) -> dict[str, Any]:
    """``{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}``."""
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, fn) -> None:
        try:
            detail = fn()
            checks[name] = {"ok": True, "detail": detail}
        except Exception as e:  # noqa: BLE001 - every failure is a finding, reported by name
            checks[name] = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:300]}

    def redis_ok() -> str:
        from jobs.redisconn import master_role

        return master_role(client.store.r)  # reachable, and the master: a replica refuses writes

    def storage_ok() -> str:
        key = f"_health/{secrets.token_hex(8)}"
        client.storage.put(key, b"ok", content_type="text/plain")
        try:
            if client.storage.get(key) != b"ok":
                raise RuntimeError("read back something else than was written")
        finally:
            client.storage.delete(key)
        return "write, read and delete work"

    check("redis", redis_ok)
    check("storage", storage_ok)
    # Keys that must be the same in every process (jobs/fleet.py): the hosts that differ, named.
    checks["fleet"] = fleet.agreement(client.store.r, client.settings, "api")
    check("storage shared", lambda: shared_check.verify_markers(
        client.storage, client.store.r, client.settings.resolved_storage_url))  # workers' markers readable here
    consumers: dict[str, list[str]] = {}
    try:
        replies = active_queues(client.app, inspect_timeout_s)
        for worker, queues in replies.items():
            for q in queues:
                consumers.setdefault(q["name"], []).append(worker)
        checks["workers"] = {"ok": True, "detail": f"{len(replies)} worker(s) answered"}
    except Exception as e:  # noqa: BLE001
        checks["workers"] = {"ok": False, "detail": f"cannot ask the workers: {e}"[:300]}
    for model in sorted(client.registry.all()):
        queue = render_queue(model)
        who = consumers.get(queue, [])
        checks[f"queue:{queue}"] = {"ok": bool(who), "detail": f"{len(who)} worker(s)" if who else
                                    f"no worker consumes {queue}: start 'batchrender worker --models {model}'"}
    who = consumers.get(WEBHOOK_QUEUE, [])
    checks[f"queue:{WEBHOOK_QUEUE}"] = {"ok": bool(who), "detail": f"{len(who)} worker(s)" if who else
                                        "no worker delivers webhooks: 'batchrender worker' starts one"}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


#: Socket timeouts of the readiness check's own broker connection (a Redis that accepts and then
#: says nothing must not hold the check for ever).
BROKER_SOCKET_TIMEOUT_S = 5.0
BROKER_CONNECT_TIMEOUT_S = 2.0
#: How long a probe waits for the check under way before it answers with the last report (or 503).
READINESS_WAIT_S = 10.0


def active_queues(app, timeout_s: float) -> dict[str, list[dict[str, Any]]]:
    """``{worker: [queue, ...]}`` from every worker that answers within ``timeout_s``: Celery's
    ``inspect().active_queues()``, asked over a broker connection of its own.

    Celery's ``inspect`` takes a connection from the app's pool and then a producer from the
    producer pool, which takes a second connection from the same pool: enough concurrent inspects
    hold every connection while each waits for another, for ever. Here nothing comes from either
    pool, a lost connection is retried once, and sockets time out.
    """
    from kombu import Producer
    from kombu.utils.uuid import uuid

    class _Bounded(Producer):  # kombu's pidbox publishes with retry=True, which retries for ever
        def publish(self, body, **kw):
            kw["retry_policy"] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
            return super().publish(body, **kw)

    options = {"socket_timeout": BROKER_SOCKET_TIMEOUT_S, "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S}
    with app.connection_for_write(transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_CONNECT_TIMEOUT_S)
        mailbox = app.control.mailbox(conn)  # a copy bound to this connection
        channel = conn.default_channel
        ticket = uuid()
        mailbox._publish("active_queues", {}, reply_ticket=ticket, channel=channel, timeout=timeout_s,
                         serializer=mailbox.serializer, producer=_Bounded(channel, auto_declare=False))
        replies = mailbox._collect(ticket, timeout=timeout_s, channel=channel)
    return {worker: reply for answer in replies or [] for worker, reply in answer.items()}


class Readiness:
    """``/readyz``'s report: made by at most one check at a time, in a thread of its own, and
    reused for ``ttl_s`` seconds. A probe never runs the check in its request thread: it gets the
    fresh report, or waits (asynchronously, up to ``wait_s``) for the check under way, starting
    one if none is; past ``wait_s`` it gets the last report, or a 503 saying the check is late.
    """

    def __init__(self, compute: Callable[[], dict[str, Any]], ttl_s: float, wait_s: float = READINESS_WAIT_S):
        self._compute, self.ttl_s, self.wait_s = compute, ttl_s, wait_s
        self._lock = threading.Lock()
        self._report: dict[str, Any] | None = None
        self._made = 0.0  # time.monotonic() when _report was made
        self._running: Future | None = None

    def _current(self) -> tuple[dict[str, Any] | None, Future | None]:
        """The fresh report and no future, or the last report (if any) and the check under way."""
        with self._lock:
            if self._report is not None and self._running is None and time.monotonic() - self._made < self.ttl_s:
                return self._report, None
            if self._running is None:
                self._running = Future()
                threading.Thread(target=self._run, args=(self._running,), name="readiness", daemon=True).start()
            return self._report, self._running

    def _run(self, future: Future) -> None:
        future.set_running_or_notify_cancel()
        try:
            report = self._compute()
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a finding, not a crash
            failed = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:300]}
            report = {"ready": False, "checks": {"readiness": failed}}
        report = {**report, "checked_at": time.time()}
        with self._lock:
            self._report, self._made, self._running = report, time.monotonic(), None
        future.set_result(report)

    async def report(self) -> dict[str, Any]:
        """The report a probe answers with (``ready`` false when the check is late)."""
        last, running = self._current()
        if running is None:
            return last  # type: ignore[return-value]
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(running)), self.wait_s)
        except asyncio.TimeoutError:
            if last is not None:
                return last
            return {"ready": False, "checks": {"readiness": {
                "ok": False, "detail": f"the readiness check has not finished within {self.wait_s:g} s"}}}
