"""``moderation check`` and ``moderation log`` through click's CliRunner."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from safety.cli import moderation


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"BATCHRENDER_HOME": str(tmp_path)}


def test_check_prints_action_and_categories(env):
    result = CliRunner().invoke(moderation, ["check", "n u d e ch1ld"], env=env)
    assert result.exit_code == 1, "a blocked prompt exits 1"
    out = json.loads(result.output)
    assert out["action"] == "block" and "minors_sexual" in out["categories"]


def test_check_file_reports_bad_lines_and_continues(env, tmp_path: Path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "a red car"}\nnot json\n{"text": "x"}\n{"prompt": "nude portrait"}\n', encoding="utf-8")
    result = CliRunner().invoke(moderation, ["check", "--file", str(f)], env=env)
    assert result.exit_code == 2, "unreadable lines are bad input"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["action"]) for r in rows] == [(1, "allow"), (4, "flag")]
    assert f"{f}:2: skipped" in result.stderr and f"{f}:3: skipped" in result.stderr


def test_check_real_person_flag_applies_stricter_rules(env):
    plain = CliRunner().invoke(moderation, ["check", "make her topless"], env=env)
    strict = CliRunner().invoke(moderation, ["check", "--real-person", "make her topless"], env=env)
    assert json.loads(plain.output)["action"] == "flag"
    assert json.loads(strict.output)["action"] == "block"


def test_log_prints_decisions_for_one_job(env):
    runner = CliRunner()
    runner.invoke(moderation, ["check", "a red car"], env=env)
    result = runner.invoke(moderation, ["log"], env=env)
    (entry,) = [json.loads(line) for line in result.output.splitlines()]
    assert entry["actor"].startswith("cli:") and "prompt" not in entry
    assert runner.invoke(moderation, ["log", "--job", "nope"], env=env).output == ""


def test_bad_settings_are_a_clean_error(env):
    result = CliRunner().invoke(moderation, ["check", "x"], env={**env, "BATCHRENDER_POLICY_FILE": "/nonexistent.yaml"})
    assert result.exit_code == 1 and "cannot read policy file" in result.output
