"""Audit log: one line per decision, prompt hashed not stored by default, filter by job."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from jobs.settings import Settings
from safety import ModerationChain
from safety.audit import AuditLog

SECRET_PROMPT = "portrait of Jane Exampleperson, nude"


def test_audit_log_has_hash_but_not_prompt_by_default(tmp_path: Path):
    chain = ModerationChain.prompt_only(Settings(home=tmp_path))
    chain.check_prompt(SECRET_PROMPT, job_id="job-1", actor="tenant-a")
    path = tmp_path / "moderation" / "audit.jsonl"
    raw = path.read_text(encoding="utf-8")
    assert "Exampleperson" not in raw
    (entry,) = [json.loads(line) for line in raw.splitlines()]
    assert entry["prompt_sha256"] == hashlib.sha256(SECRET_PROMPT.encode()).hexdigest()
    assert (entry["actor"], entry["job_id"], entry["action"], entry["category"]) == ("tenant-a", "job-1", "flag", "nudity")
    assert entry["stage"] == "prompt_rules" and entry["policy_version"] == chain.policy_version


def test_audit_log_keeps_prompt_when_configured(tmp_path: Path):
    chain = ModerationChain.prompt_only(Settings(home=tmp_path, audit_log_prompts=True))
    chain.check_prompt(SECRET_PROMPT, job_id="job-1")
    (entry,) = AuditLog.from_settings(Settings(home=tmp_path)).read()
    assert entry["prompt"] == SECRET_PROMPT


def test_reader_filters_by_job_id_and_skips_torn_lines(tmp_path: Path):
    log = AuditLog(tmp_path / "a.jsonl")
    chain = ModerationChain.prompt_only(Settings(home=tmp_path), audit=False)
    for job in ("j1", "j2", "j1"):
        log.record(chain.check_prompt("a red car"), kind="prompt", job_id=job, prompt="a red car")
    with (tmp_path / "a.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"job_id": "j1", "trunc')
    assert [e["job_id"] for e in log.read("j1")] == ["j1", "j1"]
    assert len(list(log.read())) == 3


def test_concurrent_writers_never_interleave_lines(tmp_path: Path):
    log = AuditLog(tmp_path / "a.jsonl")
    decision = ModerationChain.prompt_only(Settings(home=tmp_path), audit=False).check_prompt("x" * 5000)

    def write(n: int) -> None:
        for i in range(50):
            log.record(decision, kind="prompt", job_id=f"{n}-{i}", prompt="x" * 5000)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200 and all(json.loads(line)["kind"] == "prompt" for line in lines)


def test_a_campaign_plan_audits_only_what_it_flags_or_blocks(tmp_path: Path):
    chain = ModerationChain.prompt_only(Settings(home=tmp_path))
    chain.check_prompt("a red ceramic mug, product photo", audit_allowed=False)
    chain.check_prompt(SECRET_PROMPT, audit_allowed=False)
    lines = (tmp_path / "moderation" / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["flag"]
