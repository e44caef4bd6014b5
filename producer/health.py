"""Readiness: what a deployment needs before it can take work, checked for real. Used by the
API's ``/readyz`` (and meant for ``batchrender doctor``)."""
from __future__ import annotations

import secrets
from typing import Any

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
        replies = client.app.control.inspect(timeout=inspect_timeout_s).active_queues() or {}
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
