"""``batchrender moderation ...``: check prompts against the policy without rendering; read the audit log.

Attach to the main CLI with ``cli.add_command(moderation)``. Settings come from the environment
(``Settings.from_env()``); only the prompt rules run, so no model or GPU is needed.
"""
from __future__ import annotations

import getpass
import json
from pathlib import Path

import click

from jobs.errors import ConfigurationError
from jobs.settings import Settings
from safety.audit import AuditLog
from safety.chain import ModerationChain


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigurationError as e:
        raise click.ClickException(e.message) from None


@click.group(name="moderation")
def moderation() -> None:
    """Check prompts against the moderation policy and read the audit log."""


@moderation.command()
@click.argument("prompt", required=False)
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSONL file with a 'prompt' field (and optional 'negative_prompt') per line.")
@click.option("--negative", default=None, help="Negative prompt for PROMPT.")
@click.option("--real-person", is_flag=True, help="Apply the stricter rules for requests with a real person's image.")
def check(prompt: str | None, file: Path | None, negative: str | None, real_person: bool) -> None:
    """Print one JSON verdict per prompt: its action (allow/flag/block) and categories.

    Exit 0 when every prompt is allowed (or only flagged), 1 when any is blocked, 2 when a line
    of --file could not be read (reported on stderr; the others are still checked).
    """
    if (prompt is None) == (file is None):
        raise click.UsageError("give either PROMPT or --file, not both")
    try:
        chain = ModerationChain.prompt_only(_settings())
    except ConfigurationError as e:
        raise click.ClickException(e.message) from None
    actor = f"cli:{getpass.getuser()}"

    blocked = []

    def emit(text: str, neg: str | None, line: int | None = None) -> None:
        d = chain.check_prompt(text, neg, real_person_context=real_person, actor=actor)
        if d.action.value == "block":
            blocked.append(line)
        out = {"action": d.action.value, "categories": list(d.categories), "policy_version": d.policy_version,
               "verdicts": [v.to_dict() for v in d.verdicts if v.category != "none"]}
        if line is not None:
            out = {"line": line, **out}
        click.echo(json.dumps(out, ensure_ascii=False))

    if prompt is not None:
        emit(prompt, negative)
        raise SystemExit(1 if blocked else 0)
    bad = 0
    assert file is not None
    with file.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                    raise ValueError("expected an object with a string 'prompt' field")
                neg = row.get("negative_prompt")
                if neg is not None and not isinstance(neg, str):
                    raise ValueError("'negative_prompt' must be a string")
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                bad += 1
                click.echo(f"{file}:{n}: skipped: {e}", err=True)
                continue
            emit(row["prompt"], neg, n)
    raise SystemExit(2 if bad else 1 if blocked else 0)


@moderation.command(name="log")
@click.option("--job", "job_id", default=None, help="Only decisions for this job id.")
@click.option("--local", is_flag=True, help="This host's file under the home instead of the shared log in Redis.")
def log_cmd(job_id: str | None, local: bool) -> None:
    """Print audit log entries (JSON lines), oldest first.

    With BATCHRENDER_REDIS_URL set, from Redis: every host's decisions (a job's as long as its
    record is kept; without --job the fleet's latest 10,000). Otherwise, or with --local, from
    this host's complete file, HOME/moderation/audit.jsonl."""
    for entry in AuditLog.from_settings(_settings()).read(job_id, local=local):
        click.echo(json.dumps(entry, ensure_ascii=False))
