"""Images, thumbnails and renditions behind stable URLs: bytes from local storage (streamed in
chunks), or a redirect to a freshly presigned S3 URL. A tenant's API key or a signed link
(``?expires=&signature=``) admits."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from jobs.errors import OutputNotFound
from jobs.schemas import ImageResult
from producer.api.deps import ServicesDep, Services, SignedOrTenant, own_job

router = APIRouter(prefix="/v1/jobs/{job_id}/outputs", tags=["outputs"])
_IMAGE = {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}, "description": "The image."}
_ANSWERS = {200: _IMAGE, 302: {"description": "Redirect to a presigned storage URL (S3)."},
            304: {"description": "Not modified (If-None-Match)."}}
Index = Annotated[int, Path(ge=0, le=63)]


def _serve(svc: Services, key: str, etag: str, content_type: str, filename: str | None,
           if_none_match: str | None) -> Response:
    headers = {"ETag": f'"{etag}"', "Cache-Control": "private, max-age=3600"}
    if if_none_match and etag in {t.strip().strip('"').removeprefix('W/"') for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    storage = svc.client.storage
    url = storage.presign(key, svc.settings.presign_expiry_s, filename=filename)
    if url is not None:
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    try:
        size, chunks = storage.stream(key)
    except KeyError:
        raise OutputNotFound(f"the stored file of this output is gone ({key})") from None
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    # In chunks: a slow reader holds one chunk of the API's memory, not the file, and is dropped
    # once it stops reading for BATCHRENDER_API_WRITE_TIMEOUT_S (producer/api/connections.py).
    headers["Content-Length"] = str(size)
    return StreamingResponse(chunks, media_type=content_type, headers=headers)


def _image(svc: Services, who: str | None, job_id: str, index: int) -> ImageResult:
    own_job(svc, who, job_id)
    return svc.client.output(job_id, index)


@router.get("/{index}", responses=_ANSWERS, response_class=Response)
def get_output(job_id: str, index: Index, svc: ServicesDep, who: SignedOrTenant,
               download: Annotated[bool, Query(description="Ask the browser to save it (attachment).")] = False,
               if_none_match: Annotated[str | None, Header(max_length=1024)] = None) -> Response:
    """The image's bytes (local storage) or a 302 to a fresh presigned URL (S3). ETag: its SHA-256."""
    image = _image(svc, who, job_id, index)
    filename = f"{job_id}-{index}.{image.format.value}" if download else None
    return _serve(svc, image.key, image.sha256, image.format.content_type, filename, if_none_match)


@router.get("/{index}/thumbnail", responses=_ANSWERS, response_class=Response)
def get_thumbnail(job_id: str, index: Index, svc: ServicesDep, who: SignedOrTenant,
                  if_none_match: Annotated[str | None, Header(max_length=1024)] = None) -> Response:
    """A small WebP preview of the image (longest side ``BATCHRENDER_THUMBNAIL_PX``)."""
    image = _image(svc, who, job_id, index)
    if not image.thumbnail_key:
        raise OutputNotFound(f"output {index} of job {job_id} has no thumbnail (made before thumbnails existed, "
                             "or BATCHRENDER_THUMBNAIL_PX=0)")
    return _serve(svc, image.thumbnail_key, image.sha256 + "-thumb", "image/webp", None, if_none_match)


@router.get("/{index}/renditions/{name}", responses=_ANSWERS, response_class=Response)
def get_rendition(job_id: str, index: Index, name: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$")],
                  svc: ServicesDep, who: SignedOrTenant,
                  download: Annotated[bool, Query(description="Ask the browser to save it (attachment).")] = False,
                  if_none_match: Annotated[str | None, Header(max_length=1024)] = None) -> Response:
    """A rendition's bytes (local storage) or a 302 to a fresh presigned URL (S3). ETag: its SHA-256."""
    image = _image(svc, who, job_id, index)
    rendition = next((r for r in image.renditions if r.name == name), None)
    if rendition is None:
        made = ", ".join(r.name for r in image.renditions)
        raise OutputNotFound(f"output {index} of job {job_id} has no rendition {name!r}; "
                             + (f"its renditions are {made}" if made else "it has no renditions"))
    filename = f"{job_id}-{index}.{name}.{rendition.format.value}" if download else None
    return _serve(svc, rendition.key, rendition.sha256, rendition.format.content_type, filename, if_none_match)
