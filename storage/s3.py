"""``s3://bucket/prefix`` storage over any S3-compatible endpoint (AWS, MinIO, moto).

Retries: botocore's ``standard`` mode retries 5xx, throttling, timeouts and connection resets
with exponential backoff and full jitter, up to ``s3_max_attempts``. When it gives up, the error
is wrapped as :class:`StorageError` (a TransientError) so Celery retries the job later; it is
never swallowed. Client errors (4xx other than 404) are not retried by botocore and surface as
StorageError too, carrying the S3 code.

The boto3 client is created lazily on first use and again after a fork: clients hold connection
pools that must not be shared between processes.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
from typing import Any, BinaryIO, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlparse

from jobs.errors import ConfigurationError, StorageError
from jobs.settings import Settings
from storage.base import CHUNK_BYTES, Storage, StoredObject
from storage.keys import check_key

T = TypeVar("T")
MIN_PART_SIZE = 5 * 1024 * 1024  # S3 refuses smaller non-final multipart parts
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3Storage(Storage):
    """Objects in one bucket under an optional prefix; ``url_for`` returns a presigned GET."""

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        super().__init__(quarantine_prefix=settings.quarantine_prefix)
        url = url or settings.resolved_storage_url
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigurationError(f"S3 storage URL {url!r} must look like s3://bucket or s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.settings = settings
        self._client: Any = None
        self._public: Any = None  # presigns for s3_public_endpoint_url; never sends a request
        self._client_pid: int | None = None
        self._lock = threading.Lock()

    # -- client --------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The process's boto3 S3 client, created on first use (and again in a forked child)."""
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = self._make_client()
                    self._client_pid = os.getpid()
        return self._client

    def _make_client(self, endpoint_url: str | None = None) -> Any:
        import boto3  # imported here: the producer never needs boto3 loaded
        from botocore.config import Config

        s = self.settings
        config = Config(
            region_name=s.s3_region,
            signature_version="s3v4",
            # total_max_attempts counts the first request too; botocore's max_attempts would not.
            retries={"mode": "standard", "total_max_attempts": s.s3_max_attempts},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path" if s.s3_path_style else "auto"},
            # Only checksum when we ask for one (SHA256 on uploads): some S3-compatible servers
            # reject the CRC32 trailers newer botocore adds by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        creds: dict[str, str] = {}
        if s.s3_access_key_id and s.s3_secret_access_key:
            creds = {
                "aws_access_key_id": s.s3_access_key_id.get_secret_value(),
                "aws_secret_access_key": s.s3_secret_access_key.get_secret_value(),
            }
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url or s.s3_endpoint_url, config=config,
                                              **creds)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation; botocore already retried, so any failure left is final."""
        from botocore.exceptions import BotoCoreError, ClientError
        from boto3.exceptions import S3UploadFailedError

        try:
            return fn()
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND:
                raise KeyError(key) from None
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise StorageError(f"S3 {what} {key!r} failed: {code or status}: {e}", s3_code=code, status=status) from e
        except (BotoCoreError, S3UploadFailedError, OSError) as e:
            raise StorageError(f"S3 {what} {key!r} failed after retries: {e}") from e

    # -- Storage -------------------------------------------------------------------------------
    def put(
        self, key: str, data: bytes, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        full = self._full(key)
        digest = hashlib.sha256(data)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.setdefault("sha256", digest.hexdigest())
        threshold = self.settings.s3_multipart_threshold
        if len(data) > threshold:
            from boto3.s3.transfer import TransferConfig

            chunk = max(threshold, MIN_PART_SIZE)
            transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=chunk)
            extra = {"ContentType": content_type, "Metadata": meta, "ChecksumAlgorithm": "SHA256"}
            self._call("multipart upload", key, lambda: self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, full, ExtraArgs=extra, Config=transfer))
        else:
            self._call("put", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type, Metadata=meta,
                ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(digest.digest()).decode()))
        return StoredObject(key, f"s3://{self.bucket}/{full}", digest.hexdigest(), len(data), content_type, meta)

    def put_file(
        self, key: str, fileobj: BinaryIO, *, content_type: str, metadata: Mapping[str, str] | None = None
    ) -> StoredObject:
        """Hashed in one pass over ``fileobj``, then uploaded from it: a multipart upload past
        ``s3_multipart_threshold`` (boto3 holds a few parts at a time), never the whole object."""
        full = self._full(key)
        digest, size = hashlib.sha256(), 0
        fileobj.seek(0)
        while chunk := fileobj.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
        fileobj.seek(0)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.setdefault("sha256", digest.hexdigest())
        threshold = self.settings.s3_multipart_threshold
        if size > threshold:
            from boto3.s3.transfer import TransferConfig

            chunk_size = max(threshold, MIN_PART_SIZE)
            transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=chunk_size, max_concurrency=2)
            extra = {"ContentType": content_type, "Metadata": meta, "ChecksumAlgorithm": "SHA256"}
            self._call("multipart upload", key, lambda: self.client.upload_fileobj(
                fileobj, self.bucket, full, ExtraArgs=extra, Config=transfer))
        else:
            self._call("put", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=full, Body=fileobj.read(), ContentType=content_type, Metadata=meta,
                ChecksumAlgorithm="SHA256", ChecksumSHA256=base64.b64encode(digest.digest()).decode()))
        return StoredObject(key, f"s3://{self.bucket}/{full}", digest.hexdigest(), size, content_type, meta)

    def get(self, key: str) -> bytes:
        full = self._full(key)
        return self._call("get", key, lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def stream(self, key: str, chunk_size: int = CHUNK_BYTES) -> tuple[int, Iterator[bytes]]:
        full = self._full(key)
        answer = self._call("get", key, lambda: self.client.get_object(Bucket=self.bucket, Key=full))
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            from botocore.exceptions import BotoCoreError

            try:
                yield from body.iter_chunks(chunk_size)
            except (BotoCoreError, OSError) as e:
                raise StorageError(f"S3 get {key!r} failed while reading: {e}") from e
            finally:
                body.close()  # a reader dropped half-way gives its HTTP connection back

        return int(answer["ContentLength"]), chunks()

    def head(self, key: str) -> dict[str, str]:
        full = self._full(key)
        return dict(self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))["Metadata"])

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except KeyError:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self._full(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def _url_for(self, key: str) -> str:
        return self._presign(key, self.settings.presign_expiry_s, None)

    def _presign(self, key: str, expires_s: int, filename: str | None) -> str:
        """A presigned GET, signed for ``s3_public_endpoint_url`` when set: the host clients reach
        (a signature covers the host, so a URL cannot be rewritten after signing). Offline: no request."""
        full = self._full(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        client = self.client
        if self.settings.s3_public_endpoint_url:
            if self._public is None:
                self._public = self._make_client(self.settings.s3_public_endpoint_url)
            client = self._public
        return self._call("presign", key, lambda: client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(expires_s)))

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (tests and the demo; production buckets are provisioned)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
        try:
            self._call("create bucket", self.bucket, lambda: self.client.create_bucket(**kwargs))
        except StorageError as e:
            if e.details.get("s3_code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
