"""Files: OpenAI-style batch inputs (``purpose=batch``) and the output and error files a finished
batch produces, and campaign catalogs (``purpose=campaign``: CSV or JSONL, read when a campaign
is planned or applied). Bytes live in storage under ``_files/`` (never presigned or
listed); a small record per file in Redis; every file belongs to one tenant.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from jobs.errors import InvalidRequest, JobNotFound
from jobs.names import KEY_PREFIX
from jobs.text import refuse_surrogates

PURPOSES = ("batch", "batch_output", "campaign")


class FileNotFound(JobNotFound):
    code = "file_not_found"


def file_key(file_id: str) -> str:
    return f"{KEY_PREFIX}file:{file_id}"


@dataclass(frozen=True)
class FileRecord:
    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float

    @property
    def storage_key(self) -> str:
        return f"_files/{self.id}"

    @property
    def content_type(self) -> str:
        """By file name: a campaign's CSV catalog is text/csv; everything else here is JSONL."""
        return "text/csv" if self.filename.lower().endswith((".csv", ".tsv")) else "application/jsonl"

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at),
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": None}


class Files:
    def __init__(self, client) -> None:
        self.client = client
        self.r = client.store.r

    def create(self, tenant: str, filename: str, purpose: str, data: bytes, file_id: str | None = None) -> FileRecord:
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose: {purpose!r} is not supported; use 'batch' or 'campaign'",
                                 errors=[{"field": "purpose", "message": "use 'batch' or 'campaign'"}])
        rec = FileRecord(file_id or "file-" + secrets.token_hex(12), tenant, filename[:255] or "upload.jsonl", purpose,
                         len(data), time.time())
        if purpose != "batch_output" and rec.content_type == "application/jsonl":
            # Refused at upload, naming line and field, rather than when a batch reads it.
            refuse_surrogates(data, jsonl=True, what="file")
        self.client.storage.put(rec.storage_key, data, content_type=rec.content_type,
                                metadata={"tenant": tenant, "kind": "file"})
        with self.r.pipeline() as p:
            p.hset(file_key(rec.id), mapping={k: str(v) for k, v in asdict(rec).items()})
            p.expire(file_key(rec.id), self.client.settings.record_ttl_s)
            p.execute()
        return rec

    def get(self, tenant: str, file_id: str) -> FileRecord:
        """The tenant's file; another tenant's id is "not found", exactly like an unknown one."""
        h = self.r.hgetall(file_key(file_id))
        if not h or h.get("tenant") != tenant:
            raise FileNotFound(f"no file {file_id!r}")
        return FileRecord(h["id"], h["tenant"], h["filename"], h["purpose"], int(h["bytes"]), float(h["created_at"]))

    def exists(self, file_id: str) -> bool:
        return bool(self.r.exists(file_key(file_id)))

    def content(self, rec: FileRecord) -> bytes:
        try:
            return self.client.storage.get(rec.storage_key)
        except KeyError:
            raise FileNotFound(f"the content of file {rec.id} is gone") from None

    def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        rec = self.get(tenant, file_id)
        self.client.storage.delete(rec.storage_key)
        self.r.delete(file_key(rec.id))
        return {"id": rec.id, "object": "file", "deleted": True}
