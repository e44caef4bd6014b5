"""A batch as one HTML contact sheet: every job's thumbnails with prompt, seed, size, moderation
flags and C2PA state, linking to the full images. Jobs without images (blocked, failed, still
running) get a card that says why.

The page is self-contained apart from its images: no scripts or fonts from elsewhere. The only
script counts how many thumbnails loaded into ``<body data-thumbs-loaded>`` (tests and a
headless browser read it). ``thumb_src`` and ``full_href`` say where images come from: signed
API links (``GET /v1/batches/{id}/gallery``) or data URIs (``batchrender gallery``, a file that
works anywhere).
"""
from __future__ import annotations

import base64
import html
import time
from typing import Any, Callable, Iterable

from jobs.schemas import ImageResult
from jobs.store import JobRecord

#: Jobs one sheet shows; the rest are counted in the header.
MAX_JOBS = 1000

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;background:#f6f6f4;color:#222}
h1{font-size:20px;margin:0 0 4px}.sub{color:#666;margin:0 0 20px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px;align-items:start}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:8px;overflow:hidden}
.card img{width:100%;height:auto;display:block;border-radius:4px;background:#eee}
.prompt{margin:6px 0 4px;max-height:4.2em;overflow:hidden}.meta{color:#666;font-size:12px}
.flag{display:inline-block;background:#fde2b8;border-radius:3px;padding:0 4px;margin-right:3px}
.bad{color:#a00}.c2pa{color:#176f2c}
"""
_COUNT = """<script>
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.thumb"), n = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) n++; });
  document.body.setAttribute("data-thumbs-loaded", String(n));
  document.body.setAttribute("data-thumbs-total", String(imgs.length));
});
</script>"""


def data_uri(data: bytes, content_type: str = "image/webp") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def _card(rec: JobRecord, image: ImageResult | None, thumb: str | None, full: str | None) -> str:
    e = html.escape
    prompt = e(str(rec.request.get("prompt") or ""))
    who = e(rec.custom_id or rec.job_id)
    if image is None:
        error = rec.error or {}
        why = e(str(error.get("code") or rec.status.value))
        return (f'<div class="card"><div class="prompt">{prompt}</div><div class="meta">{who} · '
                f'<span class="bad">{e(rec.status.value)}</span> ({why})</div></div>')
    flags = "".join(f'<span class="flag">{e(f)}</span>' for f in image.flags)
    c2pa = '<span class="c2pa">C2PA signed</span>' if image.c2pa == "signed" else '<span class="bad">unsigned</span>'
    img = (f'<img class="thumb" src="{e(thumb)}" alt="{prompt[:80]}" loading="eager">' if thumb
           else '<div class="meta">no thumbnail</div>')
    body = f'<a href="{e(full)}">{img}</a>' if full else img
    return (f'<div class="card">{body}<div class="prompt">{prompt}</div><div class="meta">{who} · #{image.index} · '
            f'seed {image.seed} · {image.width}×{image.height} {e(image.format.value)} · {c2pa} {flags}</div></div>')


def render_sheet(batch: dict[str, Any], records: Iterable[JobRecord],
                 thumb_src: Callable[[JobRecord, ImageResult], str | None],
                 full_href: Callable[[JobRecord, ImageResult], str | None]) -> str:
    """The HTML page for ``batch`` (``JobStore.batch_info``) and its job records."""
    cards, shown = [], 0
    for rec in records:
        if shown >= MAX_JOBS:
            break
        shown += 1
        images = rec.result.images if rec.result else []
        if not images:
            cards.append(_card(rec, None, None, None))
        for image in images:
            cards.append(_card(rec, image, thumb_src(rec, image), full_href(rec, image)))
    counts = batch.get("counts", {})
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "total")
    more = f" (showing the first {shown})" if batch.get("total", 0) > shown else ""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    title = html.escape(f"batch {batch['id']}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><h1>{title}</h1><p class="sub">{batch.get("total", 0)} jobs{more} · {html.escape(summary)} · '
            f'{html.escape(batch.get("status", ""))} · made {made}</p><div class="grid">{"".join(cards)}</div>'
            f'{_COUNT}</body></html>')


def local_sheet(client, batch_id: str) -> str:
    """A self-contained sheet (thumbnails as data URIs, links to the stored files): for local storage."""
    storage = client.storage

    def thumb(rec: JobRecord, image: ImageResult) -> str | None:
        try:
            return data_uri(storage.get(image.thumbnail_key or image.key),
                            "image/webp" if image.thumbnail_key else image.format.content_type)
        except KeyError:
            return None

    def full(rec: JobRecord, image: ImageResult) -> str | None:
        url = storage.url_for(image.key)
        return url if "://" in url else "file://" + url

    return render_sheet(client.store.batch_info(batch_id), client.batch_results(batch_id), thumb, full)


# -- campaigns: rows × renditions ------------------------------------------------------------------
#: Sheet rows (one per cell and image) one campaign page shows; the rest are counted in the header.
MAX_CAMPAIGN_ROWS = 1000
_CAMPAIGN_CSS = """
table.sheet{border-collapse:separate;border-spacing:8px;margin:-8px}
.sheet th{font-weight:600;text-align:left;color:#444;position:sticky;top:0;background:#f6f6f4}
.sheet td{background:#fff;border:1px solid #ddd;border-radius:8px;padding:6px;vertical-align:top}
.sheet td.row{min-width:160px;max-width:240px;overflow-wrap:anywhere}.sheet img{max-width:200px;max-height:200px;display:block;
border-radius:4px;background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
.reused{color:#176f2c}.empty{color:#999}
"""


def render_campaign_sheet(campaign: dict[str, Any], lines: Iterable[dict[str, Any]], columns: list[str],
                          src: Callable[[dict[str, Any]], str | None],
                          href: Callable[[dict[str, Any]], str | None]) -> str:
    """The HTML page of a campaign (``Campaigns.status``): one table row per cell and image, one
    column per rendition (``columns``, ``master`` first), from its manifest ``lines`` (in catalog
    order, each image's master line before its renditions). ``src``/``href``: where a line's
    thumbnail and full file come from. Every value from a catalog or document is escaped."""
    e = html.escape
    rows: list[str] = []
    shown = 0
    current: tuple[Any, Any] | None = None
    group: list[dict[str, Any]] = []

    def flush() -> None:
        if not group:
            return
        first = group[0]
        sweep = " · ".join(f"{e(str(k))}={e(str(v))}" for k, v in (first.get("sweep") or {}).items())
        reused = (f'<div class="meta reused">reused from {e(str(first["reused_from"]))}</div>'
                  if first.get("reused_from") else "")
        head = (f'<td class="row"><b>{e(str(first.get("row_key") or ""))}</b> <span class="meta">row '
                f'{e(str(first.get("row")))}</span><div class="meta">{sweep}</div><div class="meta">'
                f'{e(str(first.get("custom_id") or ""))}</div><div class="meta">{e(str(first.get("status")))}'
                f'</div>{reused}</td>')
        if first.get("rendition") is None:
            why = e(str(first.get("error") or first.get("status") or ""))
            rows.append(f'<tr>{head}<td colspan="{len(columns)}" class="meta bad">{why}</td></tr>')
            return
        by_name = {line.get("rendition"): line for line in group}
        tds = []
        for name in columns:
            line = by_name.get(name)
            if line is None:
                tds.append('<td class="empty">—</td>')
                continue
            thumb, full = src(line), href(line)
            img = (f'<img class="thumb" src="{e(thumb)}" alt="{e(str(first.get("row_key")))} {e(name)}" '
                   'loading="eager">') if thumb else '<div class="meta">no preview</div>'
            body = f'<a href="{e(full)}">{img}</a>' if full else img
            c2pa = '<span class="c2pa">C2PA</span>' if line.get("c2pa") == "signed" else '<span class="bad">unsigned</span>'
            tds.append(f'<td>{body}<div class="meta">{e(str(line.get("width")))}×{e(str(line.get("height")))} '
                       f'{e(str(line.get("format")))} · {c2pa}</div></td>')
        rows.append(f'<tr>{head}{"".join(tds)}</tr>')

    for line in lines:
        key = (line.get("cell"), line.get("image"))
        if key != current:
            flush()
            group = []
            current = key
            shown += 1
            if shown > MAX_CAMPAIGN_ROWS:
                break
        group.append(line)
    else:
        flush()
    progress = campaign.get("progress") or {}
    counts = ", ".join(f"{v} {k}" for k, v in (campaign.get("counts") or {}).items() if v)
    more = f" (showing the first {MAX_CAMPAIGN_ROWS} rows)" if shown > MAX_CAMPAIGN_ROWS else ""
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    title = e(f"campaign {campaign.get('name')}")
    header = "".join(f"<th>{e(c)}</th>" for c in ["row", *columns])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}{_CAMPAIGN_CSS}</style>'
            f'</head><body><h1>{title}</h1><p class="sub">{e(str(campaign.get("id")))} · apply '
            f'{e(str(campaign.get("applies")))} · {e(str(progress.get("cells_done")))}/'
            f'{e(str(progress.get("cells_total")))} cells done{e(more)} · {e(counts)} · '
            f'{e(str(campaign.get("status")))} · made {made}</p><table class="sheet"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{_COUNT}</body></html>')
