"""``file:///abs/path`` storage: the embedded default.

Writes go to a temporary file in the destination directory and are moved into place with
``os.replace``, so readers never see half an image and a retried job overwrites its earlier
attempt instead of adding a second file. Metadata lives in a ``<name>.json`` sidecar written
the same way (before the object, so an object never exists without its metadata).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping
from urllib.parse import unquote, urlparse

from jobs.errors import ConfigurationError, StorageError
from storage.base import CHUNK_BYTES, Storage, StoredObject, sha256_hex
from storage.keys import check_key

SIDECAR_SUFFIX = ".json"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalStorage(Storage):
    """Objects as files under ``root``; ``url_for`` returns the absolute path."""

    def __init__(self, root: Path | str, *, quarantine_prefix: str = "_quarantine") -> None:
        super().__init__(quarantine_prefix=quarantine_prefix)
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str, *, quarantine_prefix: str = "_quarantine") -> "LocalStorage":
        """Build from ``file:///abs/path``."""
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ConfigurationError(f"local storage URL {url!r} must look like file:///absolute/path")
        return cls(unquote(parsed.path), quarantine_prefix=quarantine_prefix)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # check_key already forbids '..'; this also catches a symlink pointing outside the root.
        if not path.is_relative_to(self.root):
            raise StorageError(f"{key!r} resolves outside the storage root")
        return path

    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        path = self._path(key)
        digest = sha256_hex(data)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        sidecar = {"content_type": content_type, "sha256": digest, "size": len(data), "metadata": meta}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(path.with_name(path.name + SIDECAR_SUFFIX), json.dumps(sidecar, sort_keys=True).encode())
            _atomic_write(path, data)
        except OSError as e:
            # A full or read-only disk may recover (operator frees space); the job retries.
            raise StorageError(f"could not write {key!r} under {self.root}: {e}") from e
        return StoredObject(key, path.as_uri(), digest, len(data), content_type, meta)

    def put_file(
        self, key: str, fileobj: BinaryIO, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Copied in chunks of ``CHUNK_BYTES`` (hashed as they go) to a temporary file beside the
        object, its sidecar written, then moved into place: never whole in memory."""
        path = self._path(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
            digest, size = hashlib.sha256(), 0
            fileobj.seek(0)
            with os.fdopen(fd, "wb") as fh:
                while chunk := fileobj.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            sidecar = {"content_type": content_type, "sha256": digest.hexdigest(), "size": size, "metadata": meta}
            _atomic_write(path.with_name(path.name + SIDECAR_SUFFIX), json.dumps(sidecar, sort_keys=True).encode())
            os.replace(tmp, path)
            tmp = None
        except OSError as e:
            raise StorageError(f"could not write {key!r} under {self.root}: {e}") from e
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return StoredObject(key, path.as_uri(), digest.hexdigest(), size, content_type, meta)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as e:
            raise StorageError(f"could not read {key!r}: {e}") from e

    def stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as e:
            raise StorageError(f"could not read {key!r}: {e}") from e

        def chunks() -> Iterator[bytes]:
            # Opened on the first chunk, so an answer that is never sent leaves no file open.
            try:
                with path.open("rb") as fh:
                    while chunk := fh.read(chunk_size):
                        yield chunk
            except OSError as e:
                raise StorageError(f"could not read {key!r}: {e}") from e

        return size, chunks()

    def head(self, key: str) -> dict[str, str]:
        path = self._path(key)
        if not path.exists():
            raise KeyError(key)
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        try:
            return dict(json.loads(sidecar.read_text())["metadata"])
        except FileNotFoundError:
            return {}

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
        for parent in path.parents:  # folders the key made, once empty (never the root)
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break  # not empty (or already gone)

    def _url_for(self, key: str) -> str:
        return str(self._path(key))
