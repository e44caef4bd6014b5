"""Files: OpenAI-style batch inputs (``purpose=batch``) and the output and error files a finished
batch produces, and campaign catalogs (``purpose=campaign``: CSV or JSONL, read when a campaign
is planned or applied). Every file belongs to one tenant. What a file is, where its bytes and
record live, the tenant's quota and retention belong to storage/files.py; this is what the API and
the batch code ask of it, with the checks on what a tenant uploads.
"""
from __future__ import annotations

import os
import secrets
from typing import Any, BinaryIO

from jobs.errors import InvalidRequest
from jobs.text import refuse_surrogates
from storage.files import FileNotFound, FileRecord, FileStore, file_key, new_record

__all__ = ["PURPOSES", "FileNotFound", "FileRecord", "Files", "file_key"]

PURPOSES = ("batch", "batch_output", "campaign")


class Files:
    def __init__(self, client) -> None:
        self.client = client
        self.r = client.store.r
        self.store = FileStore(self.r, client.storage, client.settings)

    def create(self, tenant: str, filename: str, purpose: str, data: bytes | BinaryIO,
               file_id: str | None = None) -> FileRecord:
        """Store a file for ``tenant``: an upload within the tenant's quota (``StorageQuotaExceeded``
        otherwise); a batch's output file (``batch_output``) is counted but never refused, and may
        come as a file object (written a line at a time, stored from disk)."""
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose: {purpose!r} is not supported; use 'batch' or 'campaign'",
                                 errors=[{"field": "purpose", "message": "use 'batch' or 'campaign'"}])
        if not isinstance(data, (bytes, bytearray)) and purpose != "batch_output":
            data = data.read()  # an upload is checked whole below
        size = len(data) if isinstance(data, (bytes, bytearray)) else data.seek(0, os.SEEK_END)
        rec = new_record(file_id or "file-" + secrets.token_hex(12), tenant, filename, purpose, size)
        if purpose != "batch_output" and rec.content_type == "application/jsonl":
            # Refused at upload, naming line and field, rather than when a batch reads it.
            refuse_surrogates(data, jsonl=True, what="file")
        return self.store.create(rec, data, enforce_quota=purpose != "batch_output")

    def get(self, tenant: str, file_id: str) -> FileRecord:
        """The tenant's file; another tenant's id is "not found", exactly like an unknown one."""
        return self.store.get(tenant, file_id)

    def exists(self, file_id: str) -> bool:
        return self.store.exists(file_id)

    def content(self, rec: FileRecord) -> bytes:
        return self.store.content(rec)

    def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        rec = self.store.delete(tenant, file_id)
        return {"id": rec.id, "object": "file", "deleted": True}

    def to_openai(self, rec: FileRecord) -> dict[str, Any]:
        """OpenAI's file object; ``expires_at``: when retention deletes it."""
        return {"id": rec.id, "object": "file", "bytes": rec.bytes, "created_at": int(rec.created_at),
                "filename": rec.filename, "purpose": rec.purpose, "status": "processed",
                "expires_at": self.store.expires_at(rec)}
