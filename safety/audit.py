"""Append-only audit log of moderation decisions: one JSON line per decision.

Lives at ``settings.home / "moderation" / "audit.jsonl"``. Each line records when, who (tenant or
actor), which job, the deciding stage/category/score/action, the policy version and the
SHA-256 of the prompt. The prompt itself is written only when ``audit_log_prompts`` is on:
an audit log is read by more people than the prompts were meant for.

Writes take a process-local lock and an exclusive ``flock`` and go out as one ``write`` on an
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
from typing import Any

from jobs.settings import Settings
from safety.verdict import Action, Decision


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    """Appends decisions to a JSONL file and reads them back."""

    def __init__(self, path: Path, *, log_prompts: bool = False) -> None:
        self.path = Path(path)
        self.log_prompts = log_prompts
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "AuditLog":
        return cls(settings.home / "moderation" / "audit.jsonl", log_prompts=settings.audit_log_prompts)

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
        return entry

    def read(self, job_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield entries in order, only those of ``job_id`` when given. A torn line is skipped."""
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
