"""Where outputs go: local disk (embedded default) and S3-compatible object storage.

``open_storage(settings)`` is the one entry point; backends import boto3 only when used.
"""
from __future__ import annotations

from urllib.parse import urlparse

from jobs.errors import ConfigurationError
from jobs.settings import Settings
from storage.base import Storage, StoredObject
from storage.keys import build_key, check_key, check_value

ALLOWED_FORMS = "file:///absolute/path or s3://bucket[/prefix]"

__all__ = ["ALLOWED_FORMS", "Storage", "StoredObject", "build_key", "check_key", "check_value", "open_storage"]


def open_storage(settings: Settings) -> Storage:
    """The backend for ``settings.resolved_storage_url``; ConfigurationError for other schemes, and
    for local storage with ``redis_url`` set unless ``storage_shared`` (storage/shared_check.py).

    Cheap: no network client is created until the first operation.
    """
    url = settings.resolved_storage_url
    scheme = urlparse(url).scheme
    if scheme == "file":
        from storage.shared_check import require_shared_storage

        require_shared_storage(settings)  # local storage with a shared Redis: refused unless declared shared
        from storage.local import LocalStorage

        return LocalStorage.from_url(url, quarantine_prefix=settings.quarantine_prefix)
    if scheme == "s3":
        from storage.s3 import S3Storage

        return S3Storage(settings, url)
    raise ConfigurationError(f"storage_url {url!r} is not supported; use {ALLOWED_FORMS}")
