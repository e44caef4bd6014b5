"""Redis provenance index: used when the deployment already runs Redis for jobs.

Layout under ``prefix`` (default ``batchrender:prov:``):
``rec:<id>`` hash with the record; ``sha:<sha256>`` -> id; ``band:<b>:<value>`` a set of
16-byte members (8-byte hash + 8-byte id, big-endian) so a probe returns the full hash without a
second round trip. All probes of one lookup go in one pipeline.
"""
from __future__ import annotations

import os
import struct
from typing import Any, Sequence

import numpy as np

from provenance.index import BANDS, ProvenanceIndex, ProvenanceRecord, band_values

_MEMBER = struct.Struct(">QQ")


class RedisProvenanceIndex(ProvenanceIndex):
    """Provenance index in Redis; the client is created lazily per process."""

    def __init__(self, url: str, *, threshold: int = 6, prefix: str = "batchrender:prov:") -> None:
        super().__init__(threshold=threshold)
        self.url = url
        self.prefix = prefix
        self._client: Any = None
        self._pid: int | None = None

    @property
    def r(self) -> Any:
        """The process's redis client."""
        if self._client is None or self._pid != os.getpid():
            from jobs.redisconn import client

            # The one client builder (follows a Sentinel master); bytes: members are packed ints.
            self._client = client(self.url, decode_responses=False)
            self._pid = os.getpid()
        return self._client

    def _store(self, records: Sequence[ProvenanceRecord]) -> None:
        r, p = self.r, self.prefix
        pipe = r.pipeline(transaction=False)
        for rec in records:
            pipe.get(f"{p}sha:{rec.sha256}")
        existing = pipe.execute()
        fresh = [rec for rec, ex in zip(records, existing) if ex is None]
        if not fresh:
            return
        last = r.incrby(f"{p}next_id", len(fresh))
        pipe = r.pipeline(transaction=False)
        for i, rec in enumerate(fresh):
            rid = last - len(fresh) + 1 + i
            # SET NX: when two workers race on identical bytes only the first record wins.
            pipe.set(f"{p}sha:{rec.sha256}", rid, nx=True)
            pipe.hset(f"{p}rec:{rid}", mapping={
                "sha256": rec.sha256, "job_id": rec.job_id, "batch_id": rec.batch_id, "key": rec.key,
                "created_at": repr(rec.created_at), "hashes": ",".join(f"{h:016x}" for h in rec.hashes),
            })
            for h in rec.hashes:
                member = _MEMBER.pack(h, rid)
                for b, v in enumerate(band_values(h)):
                    pipe.sadd(f"{p}band:{b}:{v}", member)
        pipe.execute()

    def _by_sha256(self, sha256: str) -> ProvenanceRecord | None:
        rid = self.r.get(f"{self.prefix}sha:{sha256}")
        return self._record(rid.decode()) if rid is not None else None

    def _candidates(self, probes: list[list[int]]) -> tuple[np.ndarray, list[str]]:
        pipe = self.r.pipeline(transaction=False)
        for b in range(BANDS):
            for v in probes[b]:
                pipe.smembers(f"{self.prefix}band:{b}:{v}")
        members = set().union(*pipe.execute())
        if not members:
            return np.zeros(0, dtype=np.uint64), []
        pairs = np.frombuffer(b"".join(members), dtype=">u8").reshape(-1, 2)
        return pairs[:, 0].astype(np.uint64), [str(int(i)) for i in pairs[:, 1]]

    def _record(self, record_id: str) -> ProvenanceRecord:
        raw = self.r.hgetall(f"{self.prefix}rec:{record_id}")
        if not raw:
            raise KeyError(record_id)
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return ProvenanceRecord(d["sha256"], tuple(int(h, 16) for h in d["hashes"].split(",") if h),
                                d["job_id"], d["batch_id"], d["key"], float(d["created_at"]))

    def _remove(self, sha256: str) -> bool:
        p = self.prefix
        rid = self.r.get(f"{p}sha:{sha256}")
        if rid is None:
            return False
        rid = int(rid)
        hashes = self.r.hget(f"{p}rec:{rid}", "hashes") or b""
        pipe = self.r.pipeline(transaction=True)
        for h in (int(x, 16) for x in hashes.decode().split(",") if x):
            member = _MEMBER.pack(h, rid)
            for b, v in enumerate(band_values(h)):
                pipe.srem(f"{p}band:{b}:{v}", member)
        pipe.delete(f"{p}rec:{rid}", f"{p}sha:{sha256}")
        pipe.execute()
        return True

    def count(self) -> int:
        n = self.r.get(f"{self.prefix}next_id")
        return int(n) if n else 0

    def clear(self) -> None:
        """Delete every key under the prefix (tests and benchmarks)."""
        for key in self.r.scan_iter(match=f"{self.prefix}*", count=10_000):
            self.r.delete(key)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
