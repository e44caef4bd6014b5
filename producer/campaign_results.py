"""A campaign's results as files: the manifest (JSONL or CSV), every delivered file in a zip or a
directory (``{row_key}/{cell}/{rendition}.{ext}``), and the gallery page.

Everything reads ``Campaigns.manifest`` a line at a time; the storage keys behind its lines are
looked up a chunk of jobs at a time, so memory stays bounded however large the campaign is. The
zip is written to a spooled temporary file (spilling to disk past ``SPOOL_BYTES``), one stored
file at a time, never held whole in memory.
"""
from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from producer.campaigns import CHUNK, MANIFEST_COLUMNS, Campaigns, campaign_id, manifest_csv_line

#: A zip stays in memory up to this size, then moves to a temporary file.
SPOOL_BYTES = 16 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXT = {"jpeg": "jpg"}


def resolve_id(tenant: str | None, id_or_name: str) -> str:
    """A campaign id (``cmp_...``) as given, or the id of the campaign with that name."""
    return id_or_name if id_or_name.startswith("cmp_") else campaign_id(tenant, id_or_name)


def csv_header() -> str:
    return _csv_row(MANIFEST_COLUMNS)


def _csv_row(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def manifest_text(lines: Iterable[dict[str, Any]], fmt: str) -> Iterator[str]:
    """The manifest as JSONL or CSV text, a line at a time."""
    if fmt == "csv":
        yield csv_header()
        for line in lines:
            yield _csv_row(manifest_csv_line(line))
    else:
        for line in lines:
            yield json.dumps(line, default=str) + "\n"


def _part(value: Any, fallback: str) -> str:
    text = _UNSAFE.sub("_", str(value or "")).strip("._")[:100]
    return text or fallback


def archive_name(line: dict[str, Any]) -> str:
    """Where a manifest line's file goes: ``{row_key}/{cell}/{rendition}.{ext}`` (``-{image}``
    after the rendition for a cell's second and later images). Every part is reduced to letters,
    digits, '.', '_' and '-', so no catalog value can climb out of the folder."""
    fmt = str(line.get("format") or "bin")
    image = int(line.get("image") or 0)
    name = _part(line.get("rendition"), "master") + (f"-{image}" if image else "")
    return f"{_part(line.get('row_key'), 'row')}/{_part(line.get('cell'), 'cell')}/{name}.{_EXT.get(fmt, fmt)}"


def with_keys(client, lines: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str | None, str | None]]:
    """(line, storage key of its file, key of its thumbnail) for each manifest line; keys are None
    for lines without a file. Job records are read ``CHUNK`` jobs at a time."""
    buffered: list[dict[str, Any]] = []
    jobs: set[str] = set()

    def drain() -> Iterator[tuple[dict[str, Any], str | None, str | None]]:
        recs = {r.job_id: r for r in client.store.get_many(sorted(jobs)) if r is not None}
        for line in buffered:
            yield (line, *_keys(recs.get(line.get("job_id")), line))

    for line in lines:
        if line.get("rendition") and line.get("job_id"):
            if line["job_id"] not in jobs and len(jobs) >= CHUNK:
                yield from drain()
                buffered, jobs = [], set()
            jobs.add(line["job_id"])
        buffered.append(line)
    yield from drain()


def _keys(rec, line: dict[str, Any]) -> tuple[str | None, str | None]:
    if rec is None or rec.result is None or not line.get("rendition"):
        return None, None
    image = next((i for i in rec.result.images if i.index == line.get("image")), None)
    if image is None:
        return None, None
    if line["rendition"] == "master":
        return image.key, image.thumbnail_key
    rendition = next((r for r in image.renditions if r.name == line["rendition"]), None)
    return (rendition.key, None) if rendition is not None else (None, None)


def _files(client, lines: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], str | None, bytes | None]]:
    """(line, archive name, bytes) per manifest line; names made unique, bytes None when gone."""
    used: set[str] = set()
    for line, key, _thumb in with_keys(client, lines):
        if key is None:
            yield line, None, None
            continue
        name = archive_name(line)
        if name in used:  # two row keys that only differ in characters a path cannot hold
            stem, dot, ext = name.rpartition(".")
            n = 2
            while f"{stem}~{n}.{ext}" in used:
                n += 1
            name = f"{stem}~{n}{dot}{ext}"
        used.add(name)
        try:
            data = client.storage.get(key)
        except KeyError:
            yield {**line, "error": f"the stored file is gone ({key})"}, None, None
            continue
        yield line, name, data


def write_zip(client, campaigns: Campaigns, tenant: str | None, cid: str, base: str | None = None) -> BinaryIO:
    """Every delivered file of the campaign and ``manifest.csv`` (with a ``file`` column: the path
    in the zip) in a zip, in a spooled temporary file positioned at its start. The caller closes it."""
    campaigns.record(tenant, cid)  # CampaignNotFound before anything is written
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, suffix=".zip")
    try:
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8", newline="") as manifest, \
                zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            writer = csv.writer(manifest, lineterminator="\n")
            writer.writerow([*MANIFEST_COLUMNS, "file"])
            for line, name, data in _files(client, campaigns.manifest(tenant, cid, base)):
                if name is not None and data is not None:
                    # Images are compressed already: stored as they are.
                    zf.writestr(zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0)), data)
                writer.writerow([*manifest_csv_line(line), name or ""])
            manifest.seek(0)
            with zf.open(zipfile.ZipInfo("manifest.csv", date_time=(2000, 1, 1, 0, 0, 0)), "w") as dst:
                while chunk := manifest.read(64 * 1024):
                    dst.write(chunk.encode("utf-8"))
        out.seek(0)
        return out
    except BaseException:
        out.close()
        raise


def iter_file(f: BinaryIO, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """``f``'s bytes a chunk at a time; closes it at the end (or when the reader goes away)."""
    try:
        while data := f.read(chunk):
            yield data
    finally:
        f.close()


def download(client, campaigns: Campaigns, tenant: str | None, cid: str, directory: Path,
             base: str | None = None) -> Iterator[dict[str, Any]]:
    """Save every delivered file under ``directory`` (names as in the zip); the manifest lines,
    each with ``file`` (its path) where it has one."""
    campaigns.record(tenant, cid)
    directory.mkdir(parents=True, exist_ok=True)
    for line, name, data in _files(client, campaigns.manifest(tenant, cid, base)):
        if name is not None and data is not None:
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            line = {**line, "file": str(path)}
        yield line


def gallery_columns(status: dict[str, Any]) -> list[str]:
    """``master`` and the campaign document's rendition names, in its order."""
    names = [r.get("name") for r in (status.get("document") or {}).get("renditions") or [] if r.get("name")]
    return ["master", *names]


def local_gallery(client, campaigns: Campaigns, tenant: str | None, cid: str) -> str:
    """A self-contained page (previews as data URIs; links to the stored files): for a file the
    CLI writes. A rendition's preview is made here from its file (at most 256 px a side)."""
    from producer.gallery import render_campaign_sheet

    status = campaigns.status(tenant, cid)
    storage = client.storage

    def lines() -> Iterator[dict[str, Any]]:
        for line, key, thumb in with_keys(client, campaigns.manifest(tenant, cid)):
            if key is not None:
                url = storage.url_for(key)
                line = {**line, "_src": _preview(storage, key, thumb),
                        "_href": url if "://" in url else Path(url).absolute().as_uri()}
            yield line

    return render_campaign_sheet(status, lines(), gallery_columns(status), lambda x: x.get("_src"),
                                 lambda x: x.get("_href"))


def _preview(storage, key: str, thumbnail_key: str | None) -> str | None:
    try:
        if thumbnail_key:
            return data_uri_of(storage.get(thumbnail_key))
        from PIL import Image

        with Image.open(io.BytesIO(storage.get(key))) as im:
            im.thumbnail((256, 256))
            buf = io.BytesIO()
            im.save(buf, "WEBP", quality=80)
        return data_uri_of(buf.getvalue())
    except (KeyError, OSError, ValueError):
        return None


def data_uri_of(webp: bytes) -> str:
    from producer.gallery import data_uri

    return data_uri(webp, "image/webp")


__all__ = ["resolve_id", "manifest_text", "archive_name", "with_keys", "write_zip", "iter_file", "download",
           "gallery_columns", "local_gallery", "SPOOL_BYTES"]
