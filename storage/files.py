"""Files (``/v1/files``): their records, bytes, per-tenant quota and retention, in one place.

A file is its bytes in storage under ``_files/<id>`` (never presigned or listed) and a small
record in Redis (``br:file:<id>``). Besides the record, every file is counted where the quota and
retention find it, in the same Lua script that checks the quota (so concurrent uploads cannot race
past it):

- ``br:files:tenant:<tenant>``: file id -> bytes, the tenant's files;
- ``br:files:usage:<tenant>``: ``count`` and ``bytes``, what the quota is checked against;
- ``br:files:created``: every file by creation time (member ``[tenant, id]`` as JSON, so a file
  whose record already expired can still be found, its bytes deleted and its tenant's usage
  given back).

**Quota.** A tenant's uploads are refused (``StorageQuotaExceeded``, 429 naming the setting and
the usage) once they would exceed ``BATCHRENDER_FILES_MAX_PER_TENANT`` files or
``BATCHRENDER_FILES_MAX_BYTES_PER_TENANT`` bytes (0: no limit). The output and error files a
finished batch produces count towards the usage but are never refused: the batch ran, its results
are written; the tenant makes room by deleting files.

**Retention.** A file is kept ``BATCHRENDER_RETENTION_S`` from its creation, like jobs: the
retention sweep (``storage.retention.prune``: hourly in one worker, or ``batchrender prune``)
deletes its bytes, record and index entries, also when the record expired before (its Redis
expiry, ``record_ttl_s``, is only a backstop). ``DELETE /v1/files/{id}`` does the same at once.
Each step is idempotent: a delete interrupted half-way is finished by the next sweep. Files
recorded before this index existed are indexed by the first sweep (``adopt_unindexed``, once per
deployment); bytes whose record had already expired before then cannot be found from Redis.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from jobs.errors import JobNotFound, StorageQuotaExceeded
from jobs.names import KEY_PREFIX
from jobs.settings import Settings
from storage.base import Storage

#: Every file by creation time: what retention reads.
FILES_CREATED_KEY = f"{KEY_PREFIX}files:created"
#: Set once the files recorded before this index existed have been indexed (``adopt_unindexed``).
INDEXED_MARK = f"{KEY_PREFIX}files:indexed-v1"


class FileNotFound(JobNotFound):
    code = "file_not_found"


def file_key(file_id: str) -> str:
    return f"{KEY_PREFIX}file:{file_id}"


def tenant_files_key(tenant: str) -> str:
    return f"{KEY_PREFIX}files:tenant:{tenant}"


def usage_key(tenant: str) -> str:
    return f"{KEY_PREFIX}files:usage:{tenant}"


def storage_key(file_id: str) -> str:
    return f"_files/{file_id}"


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
        return storage_key(self.id)

    @property
    def content_type(self) -> str:
        """By file name: a campaign's CSV catalog is text/csv; everything else here is JSONL."""
        return "text/csv" if self.filename.lower().endswith((".csv", ".tsv")) else "application/jsonl"


# KEYS: tenant files, usage, created index. ARGV: id, bytes, created_at, member, max count, max bytes,
# enforce (1/0). The same id again (a batch's output file written twice) replaces its size.
# Returns {admitted (1/0), count, bytes} (after admitting, or as they stand when refused).
_ADMIT = """
local size = tonumber(ARGV[2])
local had = redis.call('HGET', KEYS[1], ARGV[1])
local count = tonumber(redis.call('HGET', KEYS[2], 'count') or '0')
local used = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if had then
  redis.call('HSET', KEYS[1], ARGV[1], size)
  redis.call('HINCRBY', KEYS[2], 'bytes', size - tonumber(had))
  return {1, count, used + size - tonumber(had)}
end
if ARGV[7] == '1' then
  local max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
  if (max_count > 0 and count + 1 > max_count) or (max_bytes > 0 and used + size > max_bytes) then
    return {0, count, used}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], size)
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('HINCRBY', KEYS[2], 'bytes', size)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return {1, count + 1, used + size}
"""

# KEYS: tenant files, usage, created index, record. ARGV: id, member. Gives the file's share back
# (once: a second call finds nothing) and drops its record and index entries.
_RELEASE = """
local had = redis.call('HGET', KEYS[1], ARGV[1])
if had then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'count', -1)
  redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(had))
end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[4])
return had and 1 or 0
"""


def _member(tenant: str, file_id: str) -> str:
    return json.dumps([tenant, file_id], separators=(",", ":"))


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class FileStore:
    """Files of every tenant: ``r`` is the job Redis (``decode_responses``), ``storage`` the
    deployment's storage."""

    def __init__(self, r: Any, storage: Storage, settings: Settings) -> None:
        self.r, self.storage, self.settings = r, storage, settings
        self._admit = r.register_script(_ADMIT)

    def usage(self, tenant: str) -> tuple[int, int]:
        """The tenant's files: how many, and their bytes."""
        h = self.r.hgetall(usage_key(tenant))
        return int(h.get("count") or 0), int(h.get("bytes") or 0)

    def create(self, rec: FileRecord, data: bytes | BinaryIO, *, enforce_quota: bool = True) -> FileRecord:
        """Count ``rec`` against its tenant's quota (``StorageQuotaExceeded`` when it does not fit and
        ``enforce_quota``), then store its bytes and record. ``data``: the bytes, or a file holding
        ``rec.bytes`` of them (a batch's output file, written to disk a line at a time)."""
        s = self.settings
        admitted, count, used = self._admit(
            keys=[tenant_files_key(rec.tenant), usage_key(rec.tenant), FILES_CREATED_KEY],
            args=[rec.id, rec.bytes, repr(rec.created_at), _member(rec.tenant, rec.id), s.files_max_per_tenant,
                  s.files_max_bytes_per_tenant, 1 if enforce_quota else 0])
        if not admitted:
            raise self._refusal(rec, int(count), int(used))
        try:
            write = self.storage.put if isinstance(data, (bytes, bytearray)) else self.storage.put_file
            write(rec.storage_key, data, content_type=rec.content_type, metadata={"tenant": rec.tenant, "kind": "file"})
        except BaseException:
            _forget(self.r, rec.tenant, rec.id)  # stored nothing: its share of the quota goes back
            raise
        with self.r.pipeline() as p:
            p.hset(file_key(rec.id), mapping={k: str(v) for k, v in asdict(rec).items()})
            p.expire(file_key(rec.id), s.record_ttl_s)
            p.execute()
        return rec

    def _refusal(self, rec: FileRecord, count: int, used: int) -> StorageQuotaExceeded:
        s = self.settings
        if s.files_max_per_tenant and count + 1 > s.files_max_per_tenant:
            what = (f"the tenant holds {count} files, the most it may hold (BATCHRENDER_FILES_MAX_PER_TENANT "
                    f"= {s.files_max_per_tenant})")
        else:
            what = (f"the tenant's files take {_size(used)} ({used} bytes); this one ({rec.bytes} bytes) would "
                    f"exceed BATCHRENDER_FILES_MAX_BYTES_PER_TENANT = {s.files_max_bytes_per_tenant} bytes "
                    f"({_size(s.files_max_bytes_per_tenant)})")
        message = (f"file quota exceeded: {what}. Delete files you no longer need (DELETE /v1/files/{{id}}); "
                   f"files are also deleted {s.retention_s} s after their creation (BATCHRENDER_RETENTION_S)")
        return StorageQuotaExceeded(message, errors=[{"field": "file", "message": what}],
                                    usage={"files": count, "bytes": used},
                                    quota={"files": s.files_max_per_tenant, "bytes": s.files_max_bytes_per_tenant})

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
            return self.storage.get(rec.storage_key)
        except KeyError:
            raise FileNotFound(f"the content of file {rec.id} is gone") from None

    def delete(self, tenant: str, file_id: str) -> FileRecord:
        """Delete the tenant's file: bytes, record, index entries and its share of the quota."""
        rec = self.get(tenant, file_id)
        remove(self.r, self.storage, tenant, file_id)
        return rec

    def expires_at(self, rec: FileRecord) -> int:
        """When retention deletes the file (Unix seconds)."""
        return int(rec.created_at + self.settings.retention_s)


def remove(r: Any, storage: Storage, tenant: str, file_id: str) -> None:
    """Delete a file's bytes, record, index entries and its share of the tenant's quota; idempotent."""
    storage.delete(storage_key(file_id))  # bytes first: a crash leaves the index entry to find them again
    _forget(r, tenant, file_id)


def _forget(r: Any, tenant: str, file_id: str) -> None:
    r.register_script(_RELEASE)(keys=[tenant_files_key(tenant), usage_key(tenant), FILES_CREATED_KEY,
                                      file_key(file_id)], args=[file_id, _member(tenant, file_id)])


def adopt_unindexed(r: Any) -> int:
    """Index the files recorded before files were indexed (once per deployment, then marked done),
    so retention and the quota see them too. Their share is counted, never refused."""
    if r.exists(INDEXED_MARK):
        return 0
    admit, adopted = r.register_script(_ADMIT), 0
    for key in r.scan_iter(match=file_key("*"), count=1000):
        h = r.hgetall(key)
        if not h.get("id") or "tenant" not in h:
            continue
        admit(keys=[tenant_files_key(h["tenant"]), usage_key(h["tenant"]), FILES_CREATED_KEY],
              args=[h["id"], int(h.get("bytes") or 0), h.get("created_at") or "0", _member(h["tenant"], h["id"]),
                    0, 0, 0])
        adopted += 1
    r.set(INDEXED_MARK, "1")
    return adopted


def prune(r: Any, storage: Storage, cutoff: float, limit: int = 100_000) -> int:
    """Delete every file created before ``cutoff``, also those whose record expired already."""
    adopt_unindexed(r)
    pruned = 0
    for member in r.zrangebyscore(FILES_CREATED_KEY, "-inf", f"({cutoff}", start=0, num=limit):
        try:
            tenant, file_id = json.loads(member)
        except (ValueError, TypeError):
            r.zrem(FILES_CREATED_KEY, member)
            continue
        remove(r, storage, tenant, file_id)
        pruned += 1
    return pruned


def new_record(file_id: str, tenant: str, filename: str, purpose: str, size: int) -> FileRecord:
    return FileRecord(file_id, tenant, filename[:255] or "upload.jsonl", purpose, size, time.time())
