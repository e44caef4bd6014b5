"""``batchrender campaign``: plan, apply, status, results and gallery of campaigns, from a JSON or
YAML document on disk (its ``catalog.path`` relative to the document; ``--catalog`` overrides it).

Like ``submit``, the CLI runs without a tenant. Exit codes are the CLI's: 2 for bad input (a bad
catalog row, a refused cell, a plan over its budget), 75 when Redis or the broker is away, 1 when
``--wait`` saw a cell that did not succeed, 3 when ``--wait`` timed out.
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import click

_DOC = click.Path(exists=True, dir_okay=False, path_type=Path)
_CATALOG = click.option("--catalog", "catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="A local CSV or JSONL file in place of the document's catalog.")


def _client():
    from producer.cli import _client as make

    return make()


def _echo_json(obj) -> None:
    from producer.cli import _echo_json as echo

    echo(obj)


class _Group(click.Group):
    """Campaigns read Redis directly (cells, the result cache): Redis being away is a transient
    error here too, so the CLI exits 75 as for every other command."""

    def invoke(self, ctx):
        import redis

        from jobs.errors import BrokerUnavailable

        try:
            return super().invoke(ctx)
        except redis.RedisError as e:
            raise BrokerUnavailable(f"Redis is unavailable ({type(e).__name__}: {e}); retry when it is back") from e


@click.group(cls=_Group)
def campaign() -> None:
    """Campaigns: a catalog × a template × sweeps × renditions, planned and priced before they run."""


@campaign.command("plan")
@click.argument("doc", type=_DOC)
@_CATALOG
def campaign_plan(doc: Path, catalog: Path | None) -> None:
    """Dry run of DOC: cells, masters, renditions, reused and refused cells (by row), GPU-seconds
    per model and shape, ETA, cost, budget. Nothing is queued. Exit 2 when apply would refuse it
    (a refused cell, over budget)."""
    out = _client().campaign(doc, catalog=catalog, dry_run=True)
    _echo_json(out)
    sys.exit(_report(out["plan"], skip_refused=False))


def _report(plan: dict, skip_refused: bool) -> int:
    """Refused cells and budget reasons on stderr; 2 when apply would refuse the campaign."""
    for r in plan.get("refusals") or []:
        click.echo(f"row {r.get('row')} ({r.get('row_key')}): {r.get('message')}", err=True)
    if plan.get("refused", 0) > len(plan.get("refusals") or []):
        click.echo(f"... {plan['refused'] - len(plan['refusals'])} more refused cells", err=True)
    budget = plan.get("budget") or {}
    for reason in budget.get("reasons") or []:
        click.echo(f"budget: {reason}", err=True)
    return 2 if (plan.get("refused") and not skip_refused) or not budget.get("fits", True) else 0


@campaign.command("apply")
@click.argument("doc", type=_DOC)
@_CATALOG
@click.option("--skip-refused", is_flag=True, help="Render the cells that pass; leave refused ones out.")
@click.option("--wait", "wait_", is_flag=True, help="Wait until every cell has ended, with a progress bar.")
@click.option("--timeout", type=float, default=None, help="Seconds --wait waits; the campaign keeps running.")
def campaign_apply(doc: Path, catalog: Path | None, skip_refused: bool, wait_: bool, timeout: float | None) -> None:
    """Apply DOC: render only new and changed cells (the others are reused). Refused (exit 2) when
    a cell is refused (unless --skip-refused) or the plan is over its budget: nothing is queued."""
    client = _client()
    out = client.campaign(doc, catalog=catalog, skip_refused=skip_refused)
    _report(out["plan"], skip_refused=True)
    if not wait_:
        _echo_json(out)
        return
    click.echo(f"campaign {out['id']}: apply {out['apply']}, {out['applied']}", err=True)
    try:
        status = _wait(client, out["id"], timeout)
    except TimeoutError as e:
        click.echo(f"timeout: {e}", err=True)
        sys.exit(3)
    _echo_json(status)
    ok = all(k in ("succeeded", "reused_succeeded", "refused") for k in status["counts"])
    sys.exit(0 if ok else 1)


def _wait(client, cid: str, timeout: float | None, poll_s: float = 1.0) -> dict:
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    status = client.campaign_status(cid)
    with tqdm(total=status["progress"]["cells_total"], desc=cid[:14], unit="cell", file=sys.stderr) as bar:
        while True:
            progress = status["progress"]
            bar.update(progress["cells_done"] - bar.n)
            if status["status"] == "completed":
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"campaign {cid}: {progress['cells_done']}/{progress['cells_total']} cells done "
                                   f"after {timeout}s")
            time.sleep(poll_s)
            status = client.campaign_status(cid)


@campaign.command("status")
@click.argument("id_or_name")
def campaign_status(id_or_name: str) -> None:
    """A campaign (by id or name): status, progress, cells per state, the last plan."""
    _echo_json(_client().campaign_status(id_or_name))


@campaign.command("list")
def campaign_list() -> None:
    """Campaigns, most recently applied first."""
    from producer.campaigns import Campaigns

    _echo_json(Campaigns(_client()).list(None))


@campaign.command("results")
@click.argument("id_or_name")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--download", "download_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also save every delivered file as DIR/ROW_KEY/CELL/RENDITION.EXT (the manifest gets 'file').")
def campaign_results(id_or_name: str, fmt: str, download_dir: Path | None) -> None:
    """The manifest: a line per delivered file (each master, then its renditions) and per cell
    without images, with row, sweep values, rendition, status, links, C2PA and reused-from."""
    from producer.campaign_results import download, manifest_text, resolve_id
    from producer.campaigns import MANIFEST_COLUMNS, Campaigns, manifest_csv_line

    client = _client()
    campaigns = Campaigns(client)
    cid = resolve_id(None, id_or_name)
    if download_dir is None:
        for text in manifest_text(campaigns.manifest(None, cid), fmt):
            click.echo(text, nl=False)
        return
    lines = download(client, campaigns, None, cid, download_dir)
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*MANIFEST_COLUMNS, "file"])
        for line in lines:
            writer.writerow([*manifest_csv_line(line), line.get("file", "")])
    else:
        for text in manifest_text(lines, "jsonl"):
            click.echo(text, nl=False)


@campaign.command("gallery")
@click.argument("id_or_name")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write (self-contained: previews embedded).")
def campaign_gallery(id_or_name: str, out: Path) -> None:
    """Write a campaign's page: a row per cell, a column per rendition (the master first)."""
    from producer.campaign_results import local_gallery, resolve_id
    from producer.campaigns import Campaigns

    client = _client()
    out.write_text(local_gallery(client, Campaigns(client), None, resolve_id(None, id_or_name)), encoding="utf-8")
    click.echo(str(out))
