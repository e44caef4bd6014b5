"""Links to outputs, made fresh each time a client is told about an image.

- ``url``: ``{base}/v1/jobs/{job_id}/outputs/{index}``: stable, never expires, needs the tenant's
  API key (the API streams the bytes from local disk or redirects to a fresh presigned URL).
- ``download_url``: fetchable without a key until ``download_expires_at``: a presigned GET on S3
  (signed for ``s3_public_endpoint_url`` when set), otherwise the API path with
  ``?expires=<unix time>&signature=<HMAC-SHA256>``, which the API honours until then.
- ``thumbnail_url``: the small WebP the worker writes beside the image, signed the same way.
- each rendition (``renditions``) gets its own ``url`` (``.../outputs/{index}/renditions/{name}``)
  and ``download_url``, made the same way as the image's.

Signed API links are made with the deployment's link key (``jobs.signing.link_key``: from the
settings or derived from the message key, never from Redis) and live at most ``link_max_ttl_s``:
they are never signed for longer, and one whose expiry lies further ahead is refused even when its
signature verifies, so a leaked key cannot mint links that work for years.

``base`` is ``public_base_url`` when configured, else what the caller passes (the API passes the
request's own base URL), else nothing: webhooks then carry paths.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlencode

from jobs.errors import InvalidRequest
from jobs.schemas import ImageResult, JobMessage
from jobs.settings import Settings
from storage.base import Storage

THUMBNAIL_SUFFIX = ".thumb.webp"


def thumbnail_key(key: str) -> str:
    """Where the worker puts an image's thumbnail: beside it."""
    return key + THUMBNAIL_SUFFIX


def rendition_key(key: str, name: str, ext: str) -> str:
    """Where the worker puts an image's rendition: beside it, ``<key without extension>.<name>.<ext>``
    (deterministic, so a redelivery overwrites it)."""
    head, _, last = key.rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last else last
    return f"{head}/{stem}.{name}.{ext}" if head else f"{stem}.{name}.{ext}"


#: The batch segment of keys for jobs submitted on their own.
SINGLE = "single"


def output_key(settings: Settings, msg: JobMessage, index: int) -> str:
    """Where the worker stores image ``index`` of a job (``key_template``; deterministic, so a
    redelivery overwrites what an earlier attempt stored)."""
    from storage.keys import build_key

    r = msg.request
    return build_key(settings.key_template, batch_id=msg.batch_id or SINGLE, job_id=msg.job_id,
                     index=index, ext=r.output_format.value, model=r.model,
                     custom_id=r.custom_id or msg.job_id, tenant=msg.tenant or "default")


def job_output_keys(settings: Settings, msg: JobMessage) -> list[str]:
    """Every key the worker may store a job's outputs under: its images, their thumbnails and
    renditions. What an attempt that died (or failed half-way) may have left for a job that then
    ended without outputs. Empty when ``key_template`` does not name the job: keys such as
    ``{custom_id}.{ext}`` may then be another job's."""
    from storage.keys import template_fields

    if "job_id" not in template_fields(settings.key_template):
        return []
    r = msg.request
    keys: list[str] = []
    for index in range(r.num_images):
        key = output_key(settings, msg, index)
        keys += [key, thumbnail_key(key)]
        keys += [rendition_key(key, x.name, (x.format or r.output_format).value) for x in r.renditions or []]
    return keys


class LinkLifetimeTooLong(InvalidRequest):
    """A signed link asked for longer than ``link_max_ttl_s``: refused rather than shortened, so
    whoever asked learns the cap instead of handing out a link that dies sooner than they think."""

    code = "link_lifetime_too_long"


class Links:
    def __init__(self, settings: Settings, storage: Storage, signing_key: bytes) -> None:
        self.settings, self.storage, self._key = settings, storage, signing_key

    # -- paths and bases -------------------------------------------------------------------------
    @staticmethod
    def output_path(job_id: str, index: int, thumbnail: bool = False) -> str:
        return f"/v1/jobs/{job_id}/outputs/{index}" + ("/thumbnail" if thumbnail else "")

    @staticmethod
    def rendition_path(job_id: str, index: int, name: str) -> str:
        return f"/v1/jobs/{job_id}/outputs/{index}/renditions/{name}"

    @staticmethod
    def gallery_path(batch_id: str) -> str:
        return f"/v1/batches/{batch_id}/gallery"

    def base(self, request_base: str | None = None) -> str:
        return (self.settings.public_base_url or request_base or "").rstrip("/")

    # -- signed API links ------------------------------------------------------------------------
    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed(self, path: str, base: str | None = None, expires_s: int | None = None) -> tuple[str, float]:
        """``base + path?expires=&signature=`` and its expiry time."""
        life = expires_s or self.settings.presign_expiry_s
        if life > self.settings.link_max_ttl_s:
            raise LinkLifetimeTooLong(f"a signed link may live at most {self.settings.link_max_ttl_s} s "
                                      f"(BATCHRENDER_LINK_MAX_TTL_S); {life} s was asked for")
        expires = int(time.time() + life)
        query = urlencode({"expires": expires, "signature": self._mac(path, expires)})
        return f"{self.base(base)}{path}?{query}", float(expires)

    def verify(self, path: str, expires: str | int | None, signature: str | None) -> bool:
        """Whether ``signature`` was made here for ``path``, ``expires`` has not passed, and it is no
        further ahead than ``link_max_ttl_s`` (no link this deployment signs lives longer)."""
        try:
            when = int(expires)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        now = time.time()
        if not signature or when < now or when - now > self.settings.link_max_ttl_s:
            return False
        return hmac.compare_digest(self._mac(path, when), signature)

    # -- what a client sees ----------------------------------------------------------------------
    def download(self, job_id: str, image: ImageResult, base: str | None = None,
                 filename: str | None = None) -> tuple[str, float]:
        """A keyless URL for the image's bytes and when it expires."""
        expires_s = self.settings.presign_expiry_s
        url = self.storage.presign(image.key, expires_s, filename=filename)
        if url is not None:
            return url, time.time() + expires_s
        return self.signed(self.output_path(job_id, image.index), base, expires_s)

    def view(self, job_id: str, image: ImageResult, base: str | None = None, *, stable: bool = True) -> dict[str, Any]:
        """The image as the API, webhooks and ``results`` show it, with links made now.

        ``stable``: whether the job has a stable ``url``. The stable URL admits the job's tenant's
        API key; a job without a tenant (the CLI, the Python client) has none that could open it,
        so its ``url`` (and its renditions') is null and its signed links are the way to the bytes
        (``batchrender results`` makes fresh ones)."""
        view = image.model_dump(mode="json", exclude={"url", "thumbnail_key"})
        download, expires_at = self.download(job_id, image, base)
        view.update(url=self.base(base) + self.output_path(job_id, image.index) if stable else None,
                    download_url=download, download_expires_at=round(expires_at, 3), thumbnail_url=None)
        if image.thumbnail_key:
            view["thumbnail_url"] = self.signed(self.output_path(job_id, image.index, True), base)[0]
        for shown, rendition in zip(view.get("renditions") or [], image.renditions):
            path = self.rendition_path(job_id, image.index, rendition.name)
            url = self.storage.presign(rendition.key, self.settings.presign_expiry_s)
            expires = time.time() + self.settings.presign_expiry_s
            if url is None:
                url, expires = self.signed(path, base)
            shown.update(url=self.base(base) + path if stable else None, download_url=url,
                         download_expires_at=round(expires, 3))
        return view

    def refresh(self, outputs: list[dict[str, Any]], job_id: str, *, stable: bool | None = None) -> list[dict[str, Any]]:
        """Outputs of a stored payload (a webhook recorded days ago) with their links made anew.
        ``stable`` as for ``view``; None: as the stored view had it (a null ``url``: none)."""
        fresh = []
        for out in outputs:
            try:
                image = ImageResult.model_validate({k: v for k, v in out.items() if k in ImageResult.model_fields})
            except ValueError:
                fresh.append(out)
                continue
            if image.thumbnail_key is None and out.get("thumbnail_url"):
                # A stored view keeps no thumbnail_key, only the link made from it; the worker puts
                # every thumbnail beside its image (``thumbnail_key``), so the link is made anew too.
                image = image.model_copy(update={"thumbnail_key": thumbnail_key(image.key)})
            kept = {k: v for k, v in out.items() if k != "thumbnail_key"}
            keep_url = stable if stable is not None else out.get("url") is not None
            fresh.append({**kept, **self.view(job_id, image, stable=keep_url)})
        return fresh


def open_links(settings: Settings) -> Links:
    """Links for this deployment: its storage and its link key (``jobs.signing.link_key``)."""
    from jobs.signing import link_key
    from storage import open_storage

    return Links(settings, open_storage(settings), link_key(settings))
