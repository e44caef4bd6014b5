"""Click commands for the torch-free CLI: ``verify`` (Content Credentials) and ``provenance``.

The producer CLI mounts them: ``main.add_command(verify)``, ``main.add_command(provenance)``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("verify")
@click.argument("file_or_url")
@click.option("--trust", "trust", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificate (PEM) to trust, e.g. keys/ca.pem for development keys.")
def verify(file_or_url: str, trust: Path | None) -> None:
    """Check the C2PA Content Credentials of FILE_OR_URL (a path or an http(s) URL).

    Exit 0 for a valid manifest, and with --trust only for one that chains to that CA (Trusted);
    1 when it is missing, invalid, or (with --trust) not Trusted; 2 when FILE_OR_URL cannot be read
    or is not a PNG, JPEG or WebP image.
    """
    from jobs.errors import InvalidRequest
    from provenance.verify import verify as run_verify

    try:
        report = run_verify(file_or_url, trust.read_text() if trust else None)
    except InvalidRequest as e:
        click.echo(f"error: {e.message}", err=True)
        sys.exit(2)
    except (OSError, ValueError) as e:
        click.echo(f"error: cannot read {file_or_url}: {e}", err=True)
        sys.exit(2)
    click.echo(report.summary())
    if trust is not None and report.state != "Trusted":
        click.echo(f"not Trusted by {trust}: the manifest does not chain to that CA", err=True)
        sys.exit(1)
    sys.exit(0 if report.ok else 1)


@click.command("provenance")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def provenance(file: Path) -> None:
    """Did we make FILE? Prints the originating job, distance and confidence, or "no match".

    Exit 0 for a match, 1 for no match.
    """
    from jobs.settings import Settings
    from provenance.index import open_provenance_index

    index = open_provenance_index(Settings.from_env())
    try:
        match = index.lookup(file)
    finally:
        index.close()
    if match is None:
        # Say which index was asked: "no match" from another home's empty index misleads.
        settings = Settings.from_env()
        where = (f"redis at {settings.redis_url.split('@')[-1]}" if settings.resolved_provenance_index == "redis"
                 else f"sqlite at {(settings.home / 'provenance.sqlite').resolve()}")
        click.echo("no match")
        click.echo(f"(asked the provenance index: {where})", err=True)
        sys.exit(1)
    kind = "exact file" if match.exact else "perceptual"
    click.echo(f"job id      {match.job_id}\nbatch id    {match.batch_id}\nkey         {match.key}\n"
               f"distance    {match.distance} ({kind})\nconfidence  {match.confidence:.2f}")
    sys.exit(0)
