"""Append-only audit log of moderation decisions: one JSON line per decision.

Each line records when, who (tenant or actor), which job, the deciding stage/category/score/action,
the policy version and the SHA-256 of the prompt. The prompt itself is written only when
``audit_log_prompts`` is on: an audit log is read by more people than the prompts were meant for.

Every line goes to ``settings.home / "moderation" / "audit.jsonl"``: the deciding host's own,
complete archive. With ``redis_url`` set (a deployment that may span hosts: the API moderates the
prompt, a worker elsewhere the output) each line also goes to Redis, so any host reads every
stage of a job: a list per job (``br:audit:job:<id>``, kept ``record_ttl_s`` after its last
line, like job records) and a fleet-wide stream of the last ``STREAM_MAX`` lines (``br:audit``).

File writes take a process-local lock and an exclusive ``flock`` and go out as one ``write`` on an
``O_APPEND`` descriptor, so concurrent workers never interleave lines.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from jobs.names import KEY_PREFIX
from jobs.settings import Settings
from safety.verdict import Action, Decision


#: The fleet-wide stream keeps about this many of the latest lines (the files keep everything).
STREAM_MAX = 10_000
STREAM_KEY = f"{KEY_PREFIX}audit"


def job_audit_key(job_id: str) -> str:
    return f"{KEY_PREFIX}audit:job:{job_id}"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    """Appends decisions to a JSONL file (and to Redis when shared) and reads them back.

    ``redis``: a client, or a callable making one on first use (nothing connects before a decision).
    """

    def __init__(self, path: Path, *, log_prompts: bool = False, redis: Any = None,
                 ttl_s: int = 37 * 24 * 3600) -> None:
        self.path = Path(path)
        self.log_prompts = log_prompts
        self.ttl_s = ttl_s
        self._make_redis: Callable[[], Any] | None = redis if callable(redis) else None
        self._redis = None if callable(redis) else redis
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, redis: Any = None) -> "AuditLog":
        """The home's file, plus Redis when ``redis_url`` is set (``redis`` overrides the client)."""
        if redis is None and settings.redis_url:
            def make() -> Any:
                from jobs.redisconn import for_settings

                return for_settings(settings)  # the one builder: redis://, rediss://, sentinel://
            redis = make
        return cls(settings.home / "moderation" / "audit.jsonl", log_prompts=settings.audit_log_prompts,
                   redis=redis, ttl_s=settings.record_ttl_s)

    @property
    def shared(self) -> bool:
        """Whether lines also go to (and are read from) Redis."""
        return self._redis is not None or self._make_redis is not None

    def _client(self) -> Any:
        if self._redis is None:
            with self._lock:
                if self._redis is None and self._make_redis is not None:
                    self._redis = self._make_redis()
        return self._redis

    def record(
        self,
        decision: Decision,
        *,
        kind: str,
        actor: str | None = None,
        job_id: str | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        subject_sha256: str | None = None,
    ) -> dict[str, Any]:
        """Append one line for ``decision`` and return it. ``kind``: prompt/input_image/output_image."""
        # The deciding verdict: the first block, else the first flag, else the last stage run.
        decisive = next((v for v in decision.verdicts if v.action is Action.BLOCK), None) \
            or next((v for v in decision.verdicts if v.action is Action.FLAG), None) \
            or (decision.verdicts[-1] if decision.verdicts else None)
        entry: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "actor": actor,
            "job_id": job_id,
            "kind": kind,
            "stage": decisive.stage if decisive else None,
            "category": decisive.category if decisive else None,
            "score": round(decisive.score, 4) if decisive else None,
            "action": decision.action.value,
            "categories": list(decision.categories),
            "policy_version": decision.policy_version,
            "verdicts": [v.to_dict() for v in decision.verdicts],
        }
        if prompt is not None:
            entry["prompt_sha256"] = sha256_text(prompt)
            if negative_prompt:
                entry["negative_prompt_sha256"] = sha256_text(negative_prompt)
            if self.log_prompts:
                entry["prompt"] = prompt
                if negative_prompt:
                    entry["negative_prompt"] = negative_prompt
        if subject_sha256 is not None:
            entry["subject_sha256"] = subject_sha256
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line)
            finally:
                os.close(fd)  # closing releases the flock
        if self.shared:
            self._share(line.decode("utf-8").rstrip("\n"), job_id)
        return entry

    def _share(self, line: str, job_id: str | None) -> None:
        from jobs.store import translate_redis_errors

        @translate_redis_errors  # Redis away: BrokerUnavailable, a TransientError the job retries on
        def share() -> None:
            p = self._client().pipeline(transaction=False)
            if job_id:
                p.rpush(job_audit_key(job_id), line)
                p.expire(job_audit_key(job_id), self.ttl_s)
            p.xadd(STREAM_KEY, {"entry": line}, maxlen=STREAM_MAX, approximate=True)
            p.execute()
        share()

    def read(self, job_id: str | None = None, *, local: bool = False) -> Iterator[dict[str, Any]]:
        """Yield entries in order, only those of ``job_id`` when given. Shared: from Redis (every
        host's lines; without ``job_id`` the stream's latest ``STREAM_MAX``), unless ``local``
        asks for this host's file. A torn line is skipped."""
        if self.shared and not local:
            yield from self._read_shared(job_id)
            return
        try:
            f = self.path.open(encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a crash mid-write can leave a partial last line
                if job_id is None or entry.get("job_id") == job_id:
                    yield entry

    def _read_shared(self, job_id: str | None) -> Iterator[dict[str, Any]]:
        from jobs.store import translate_redis_errors

        @translate_redis_errors
        def lines() -> list[str]:
            r = self._client()
            if job_id:
                return r.lrange(job_audit_key(job_id), 0, -1)
            return [fields.get("entry", fields.get(b"entry")) for _id, fields in r.xrange(STREAM_KEY)]

        for line in lines():
            try:
                yield json.loads(line)
            except (TypeError, json.JSONDecodeError):
                continue
