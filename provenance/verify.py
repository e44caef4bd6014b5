"""Read and validate the C2PA manifest of an image (bytes, a path, or an http(s) URL).

``ok`` is true only for a manifest c2pa reports as ``Valid`` (signature and hashes check out) or
``Trusted`` (also chains to a given trust anchor). A missing manifest, an unreadable one and an
``Invalid`` one are all not ok.
"""
from __future__ import annotations

import io
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.errors import InvalidRequest
from provenance.c2pa_sign import JOB_ASSERTION

MAX_FETCH_BYTES = 256 * 1024 * 1024
FETCH_TIMEOUT_S = 30.0
OK_STATES = ("Valid", "Trusted")


@dataclass(frozen=True)
class VerifyReport:
    """What a reader needs to know about an image's Content Credentials."""

    source: str
    state: str | None  # "Valid", "Trusted", "Invalid", or None when there is no manifest
    generator: str | None = None
    action: str | None = None
    digital_source_type: str | None = None
    job_id: str | None = None
    batch_id: str | None = None
    signer_issuer: str | None = None
    signer_subject: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)
    #: A refinement: the job whose image is its parentOf ingredient (and that image's manifest).
    parent_job_id: str | None = None

    @property
    def ok(self) -> bool:
        """True only for a manifest that validated (Valid or Trusted)."""
        return self.state in OK_STATES

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        if self.state is None:
            return f"{self.source}: no C2PA manifest" + (f" ({'; '.join(self.errors)})" if self.errors else "")
        rows = [
            ("validation", self.state), ("generator", self.generator), ("action", self.action),
            ("source type", self.digital_source_type), ("job id", self.job_id), ("batch id", self.batch_id),
            ("refines job", self.parent_job_id),
            ("signed by", self.signer_subject), ("issuer", self.signer_issuer),
        ]
        lines = [f"{self.source}:"] + [f"  {k:<12} {v}" for k, v in rows if v is not None]
        lines += [f"  problem      {e}" for e in self.errors]
        return "\n".join(lines)


def _sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def fetch(url: str) -> bytes:
    """GET an http(s) URL (e.g. a presigned S3 URL), refusing bodies over MAX_FETCH_BYTES."""
    if not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"{url!r} is not an http(s) URL")
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as resp:  # noqa: S310 - scheme checked
        data = resp.read(MAX_FETCH_BYTES + 1)
    if len(data) > MAX_FETCH_BYTES:
        raise InvalidRequest(f"{url} is larger than {MAX_FETCH_BYTES} bytes")
    return data


def load(data_or_path: bytes | str | Path) -> tuple[bytes, str]:
    """Bytes and a display name from bytes, a file path or an http(s) URL."""
    if isinstance(data_or_path, bytes):
        return data_or_path, "<bytes>"
    text = str(data_or_path)
    if text.startswith(("http://", "https://")):
        return fetch(text), text.split("?", 1)[0]
    return Path(text).read_bytes(), text


def _first(manifest: dict[str, Any], *labels: str) -> dict[str, Any] | None:
    for a in manifest.get("assertions", []):
        if a.get("label") in labels:
            return a.get("data") or {}
    return None


def verify(data_or_path: bytes | str | Path, trust_anchors_pem: str | None = None) -> VerifyReport:
    """Validate the C2PA manifest; pass the CA PEM to check the chain (state ``Trusted``)."""
    import c2pa

    data, source = load(data_or_path)
    mime = _sniff_mime(data)
    if mime is None:
        raise InvalidRequest(f"{source} is not a PNG, JPEG or WebP image (the formats batchrender signs); "
                             "give the image file itself or its URL")
    settings: dict[str, Any] = {"builder": {"thumbnail": {"enabled": False}}}
    if trust_anchors_pem:
        settings["trust"] = {"trust_anchors": trust_anchors_pem}
    context = c2pa.Context.from_dict(settings)
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
        if reader is None:
            return VerifyReport(source, None)
        with reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        # A manifest so damaged that it cannot be parsed is as untrustworthy as an invalid one.
        return VerifyReport(source, "Invalid", errors=(f"unreadable manifest: {e}",))
    finally:
        context.close()
    manifest = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    gen = (manifest.get("claim_generator_info") or [{}])[0]
    actions = (_first(manifest, "c2pa.actions.v2", "c2pa.actions") or {}).get("actions") or [{}]
    job = _first(manifest, JOB_ASSERTION) or {}
    sig = manifest.get("signature_info") or {}
    failures = (store.get("validation_results", {}).get("activeManifest", {}) or {}).get("failure", [])
    state = store.get("validation_state") or ("Invalid" if failures else None)
    return VerifyReport(
        source=source,
        state=state,
        generator=f"{gen['name']}/{gen.get('version', '?')}" if gen.get("name") else manifest.get("claim_generator"),
        action=actions[0].get("action"),
        # A refinement opens its parent first (c2pa.opened), then says how it was edited.
        digital_source_type=next((a["digitalSourceType"] for a in actions if a.get("digitalSourceType")), None),
        job_id=job.get("job_id"),
        batch_id=job.get("batch_id"),
        signer_issuer=sig.get("issuer"),
        signer_subject=sig.get("common_name"),
        errors=tuple(f"{f.get('code')}: {f.get('explanation', '')}" for f in failures),
        parent_job_id=job.get("parent_job_id"),
    )
