"""The storage interface every backend implements, and what a stored object looks like."""
from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, Mapping

from jobs.errors import UnsafeKey
from storage.keys import check_key, quarantine_key


@dataclass(frozen=True)
class StoredObject:
    """An object that was written: its key, a backend URI, content hash and size."""

    key: str
    uri: str
    sha256: str
    size: int
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)


#: Bytes per chunk when an object is read as a stream (``Storage.stream``).
CHUNK_BYTES = 64 * 1024


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class Storage(abc.ABC):
    """Where outputs go. Keys are relative, ``/``-separated and validated by :mod:`storage.keys`.

    Writes are idempotent per key: a retried job overwrites its earlier attempt.
    Quarantined objects live under a private prefix and never get a shareable URL.
    """

    def __init__(self, *, quarantine_prefix: str = "_quarantine") -> None:
        self.quarantine_prefix = quarantine_prefix

    @abc.abstractmethod
    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Write ``data`` under ``key`` (overwriting), with its content type and string metadata."""

    def put_file(
        self, key: str, fileobj: BinaryIO, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Write what ``fileobj`` holds, from its start, under ``key``: for objects too large to
        hold in memory at once (a batch's output file). This default reads it whole; backends
        that can write in parts override it."""
        fileobj.seek(0)
        return self.put(key, fileobj.read(), content_type=content_type, metadata=metadata)

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read the object's bytes; KeyError when it does not exist."""

    def stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        """The object's size and its bytes in chunks of ``chunk_size``, for an answer that must not
        hold a whole object per reader. KeyError (raised here, before any byte) when it does not
        exist. This default reads it whole; backends that can read in parts override it."""
        data = self.get(key)
        return len(data), (data[i:i + chunk_size] for i in range(0, len(data), chunk_size))

    @abc.abstractmethod
    def head(self, key: str) -> dict[str, str]:
        """The object's user metadata; KeyError when it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object exists under ``key``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def _url_for(self, key: str) -> str:
        """Backend-specific URL for an already validated, non-quarantine key."""

    def url_for(self, key: str) -> str:
        """A URL a client can fetch: presigned GET for S3, an absolute file path locally.

        Raises UnsafeKey for quarantined objects: they are kept for review, never shared.
        """
        return self._url_for(self._shareable(key))

    def _shareable(self, key: str) -> str:
        check_key(key)
        if self.is_quarantined(key):
            raise UnsafeKey(
                f"{key!r} is quarantined; quarantined objects never get a shareable URL",
                errors=[{"field": "key", "message": "quarantined objects cannot be shared"}],
            )
        return key

    def presign(self, key: str, expires_s: int, *, filename: str | None = None) -> str | None:
        """A URL anyone holding it may GET for ``expires_s`` seconds, or None when the backend has
        no such URLs (local disk: the API serves those bytes itself). ``filename`` asks for an
        attachment download. Quarantined objects never get one (UnsafeKey)."""
        return self._presign(self._shareable(key), expires_s, filename)

    def _presign(self, key: str, expires_s: int, filename: str | None) -> str | None:
        return None

    def is_quarantined(self, key: str) -> bool:
        """Whether ``key`` lies under the private quarantine prefix."""
        return key == self.quarantine_prefix or key.startswith(self.quarantine_prefix + "/")

    def quarantine(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Keep ``data`` for review under the quarantine prefix instead of the public key."""
        return self.put(quarantine_key(self.quarantine_prefix, key), data,
                        content_type=content_type, metadata=metadata)

    def close(self) -> None:
        """Release clients or connections (no-op by default)."""
