"""``batchrender storage init``: make the configured storage ready (create the bucket), once.

Meant for deployment start-up (docker-compose's ``storage-init`` service): it waits a bounded
time for the storage to answer, creates the bucket when missing (an existing one is fine, so it
can run on every start), proves a write, read and delete, and exits 0. Credentials the storage
refuses end it at once with exit 1 naming the variables to fix: retrying cannot help, so it never
loops forever (the old MinIO init did when the credentials changed).
"""
from __future__ import annotations

import secrets
import sys
import time

import click

from jobs.errors import StorageError
from jobs.settings import Settings, redact_url

#: S3 error codes that mean "the credentials are wrong", not "not up yet".
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed"}


@click.group()
def storage() -> None:
    """Output storage."""


@storage.command("init")
@click.option("--wait", "wait_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the storage to answer before giving up (exit 75).")
def storage_init(wait_s: float) -> None:
    """Create the bucket if missing and check write/read/delete. Exit 0 ready, 1 refused
    credentials or another permanent error, 75 storage not reachable within --wait."""
    from storage import open_storage

    settings = Settings.from_env()
    store = open_storage(settings)
    where = redact_url(settings.resolved_storage_url)
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            ensure = getattr(store, "ensure_bucket", None)
            if ensure is not None:
                ensure()
            key = f"_health/init-{secrets.token_hex(6)}"
            store.put(key, b"ok", content_type="text/plain")
            try:
                if store.get(key) != b"ok":
                    raise StorageError("read back something else than was written")
            finally:
                store.delete(key)
            click.echo(f"storage ready: {where}")
            return
        except StorageError as e:
            code = e.details.get("s3_code") or ""
            if code in CREDENTIAL_CODES:
                click.echo(f"storage {where} refused the credentials ({code}): check BATCHRENDER_S3_ACCESS_KEY_ID "
                           "and BATCHRENDER_S3_SECRET_ACCESS_KEY (in docker-compose: MINIO_ROOT_USER / "
                           "MINIO_ROOT_PASSWORD, the same for MinIO and batchrender)", err=True)
                sys.exit(1)
            if time.monotonic() + delay > deadline:
                click.echo(f"storage {where} not reachable after {wait_s:g} s: {e.message}", err=True)
                sys.exit(75)
            time.sleep(delay)
            delay = min(5.0, delay * 2)
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
