"""The provenance index: "did we make this image, and in which job?".

Every delivered image is recorded with its SHA-256, its perceptual hashes (whole image plus
centre-crop variants, see :mod:`provenance.phash`), job id, batch id, storage key and time.
A lookup tries the exact SHA-256 first, then the nearest perceptual hash within ``threshold``.

Nearest-hash search is multi-index hashing, not a scan: each 64-bit hash is split into
``BANDS`` = 4 bands of 16 bits, stored in buckets keyed by (band, value). If two hashes differ in
at most ``t`` bits, by pigeonhole some band differs in at most ``t // 4`` bits, so probing each
band's value and every value within ``t // 4`` flipped bits finds all candidates. With the
default threshold 6 that is 4 x 17 = 68 bucket probes; at a million random entries a bucket holds
~15, so ~1,000 candidates are compared instead of a million.

Two backends implement the storage hooks: SQLite (embedded default) and Redis.
"""
from __future__ import annotations

import abc
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from jobs.errors import ConfigurationError
from jobs.settings import Settings
from provenance.phash import index_hashes, open_image, phash

BANDS = 4
BAND_BITS = 64 // BANDS
_BAND_MASK = (1 << BAND_BITS) - 1
#: Measured in docs/provenance.md: true copies (re-encoded, resized to 1/3 + JPEG q60, 5% crop)
#: land at <= 4; unrelated structured images start at 7-8 once an index holds crop variants.
DEFAULT_THRESHOLD = 6


@dataclass(frozen=True)
class ProvenanceRecord:
    """What the index keeps for one delivered image."""

    sha256: str
    hashes: tuple[int, ...]
    job_id: str
    batch_id: str
    key: str
    created_at: float


@dataclass(frozen=True)
class Match:
    """A lookup hit. ``confidence`` is 1.0 for an exact byte match, else falls with distance."""

    job_id: str
    batch_id: str
    key: str
    created_at: float
    distance: int
    confidence: float
    exact: bool = field(default=False)


def band_values(h: int) -> list[int]:
    """The ``BANDS`` 16-bit slices of a 64-bit hash, most significant first."""
    return [(h >> (64 - BAND_BITS * (b + 1))) & _BAND_MASK for b in range(BANDS)]


def neighbours(value: int, radius: int, bits: int = BAND_BITS) -> list[int]:
    """``value`` and every value within ``radius`` flipped bits of it."""
    out = [value]
    for r in range(1, radius + 1):
        for positions in itertools.combinations(range(bits), r):
            v = value
            for p in positions:
                v ^= 1 << p
            out.append(v)
    return out


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits per element of a uint64 array."""
    return np.bitwise_count(x)


class ProvenanceIndex(abc.ABC):
    """Record delivered images; look up where an image came from. Backends fill in storage."""

    def __init__(self, *, threshold: int = DEFAULT_THRESHOLD) -> None:
        if not 0 <= threshold < 64:
            raise ConfigurationError("provenance threshold must be between 0 and 63 bits")
        self.threshold = threshold
        self.radius = threshold // BANDS

    # -- backend hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def _store(self, records: Sequence[ProvenanceRecord]) -> None:
        """Persist records; a record whose sha256 is already present is skipped (retries)."""

    @abc.abstractmethod
    def _by_sha256(self, sha256: str) -> ProvenanceRecord | None:
        """The record with this exact content hash, if any."""

    @abc.abstractmethod
    def _candidates(self, probes: list[list[int]]) -> tuple[np.ndarray, list[str]]:
        """(hashes as uint64 array, record ids) found in the probed buckets; probes[b] per band."""

    @abc.abstractmethod
    def _record(self, record_id: str) -> ProvenanceRecord:
        """Load one record by backend id."""

    @abc.abstractmethod
    def _remove(self, sha256: str) -> bool:
        """Delete the record of these exact bytes and its band entries; False when there is none."""
        raise NotImplementedError

    def count(self) -> int:
        """Number of records."""

    def close(self) -> None:
        """Release connections (no-op by default)."""

    # -- public API ----------------------------------------------------------------------------
    def add(
        self, data: bytes, *, job_id: str, batch_id: str, key: str, created_at: float | None = None
    ) -> ProvenanceRecord:
        """Record one delivered image (the exact bytes that were uploaded)."""
        record = ProvenanceRecord(
            sha256=hashlib.sha256(data).hexdigest(),
            hashes=tuple(index_hashes(open_image(data))),
            job_id=job_id,
            batch_id=batch_id,
            key=key,
            created_at=time.time() if created_at is None else created_at,
        )
        self._store([record])
        return record

    def add_records(self, records: Iterable[ProvenanceRecord], *, chunk: int = 50_000) -> int:
        """Bulk insert precomputed records (backfills, benchmarks); returns how many were given."""
        n = 0
        batch: list[ProvenanceRecord] = []
        for r in records:
            batch.append(r)
            if len(batch) >= chunk:
                self._store(batch)
                n += len(batch)
                batch = []
        if batch:
            self._store(batch)
            n += len(batch)
        return n

    def remove(self, sha256: str) -> bool:
        """Forget a delivered image (its job was deleted or pruned): lookups no longer find it."""
        return self._remove(sha256)

    def lookup(self, data: bytes | str | Path | Image.Image) -> Match | None:
        """Where ``data`` came from: exact SHA-256 first, else nearest perceptual hash, else None."""
        raw = data if isinstance(data, bytes) else Path(data).read_bytes() if isinstance(data, (str, Path)) else None
        if raw is not None:
            exact = self._by_sha256(hashlib.sha256(raw).hexdigest())
            if exact is not None:
                return Match(exact.job_id, exact.batch_id, exact.key, exact.created_at, 0, 1.0, exact=True)
        return self.lookup_hash(phash(open_image(raw if raw is not None else data)))

    def lookup_hash(self, h: int) -> Match | None:
        """Nearest indexed perceptual hash within the threshold, or None."""
        probes = [neighbours(v, self.radius) for v in band_values(h)]
        hashes, ids = self._candidates(probes)
        if len(ids) == 0:
            return None
        dist = popcount64(hashes ^ np.uint64(h))
        best = int(np.argmin(dist))
        d = int(dist[best])
        if d > self.threshold:
            return None
        rec = self._record(ids[best])
        # Linear in distance: 1.0 at 0 bits (identical pixels, different bytes), 0.5 just past
        # the threshold. Unrelated images sit near 32 bits, so anything inside is strong evidence.
        confidence = round(1.0 - d / (2 * (self.threshold + 1)), 3)
        return Match(rec.job_id, rec.batch_id, rec.key, rec.created_at, d, confidence)


def open_provenance_index(settings: Settings, *, threshold: int = DEFAULT_THRESHOLD) -> ProvenanceIndex:
    """The configured backend: Redis (``settings.redis_url``) or SQLite at ``home/provenance.sqlite``."""
    if settings.resolved_provenance_index == "redis":
        if not settings.redis_url:
            raise ConfigurationError("provenance_index=redis needs BATCHRENDER_REDIS_URL")
        from provenance.index_redis import RedisProvenanceIndex

        return RedisProvenanceIndex(settings.redis_url, threshold=threshold)
    from provenance.index_sqlite import SQLiteProvenanceIndex

    return SQLiteProvenanceIndex(settings.home / "provenance.sqlite", threshold=threshold)
