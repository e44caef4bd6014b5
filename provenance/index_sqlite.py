"""SQLite provenance index: the embedded default, one file under ``settings.home``.

Band buckets live in a WITHOUT ROWID table keyed (band, value, hash, record): the primary key is
the bucket index, so a probe is one B-tree range read that already carries the full hash.
WAL mode lets several worker processes append while the CLI reads.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from provenance.index import BANDS, ProvenanceIndex, ProvenanceRecord, band_values
from provenance.phash import from_signed, to_signed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    hashes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bands (
    band INTEGER NOT NULL,
    value INTEGER NOT NULL,
    hash INTEGER NOT NULL,
    record_id INTEGER NOT NULL,
    PRIMARY KEY (band, value, hash, record_id)
) WITHOUT ROWID;
"""


class SQLiteProvenanceIndex(ProvenanceIndex):
    """Provenance index in a SQLite file; one connection per process and thread."""

    def __init__(self, path: Path | str, *, threshold: int = 6) -> None:
        super().__init__(threshold=threshold)
        self.path = Path(path)
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened lazily (never shared across a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _store(self, records: Sequence[ProvenanceRecord]) -> None:
        db = self.db
        with db:
            rows = []
            for r in records:
                cur = db.execute(
                    "INSERT OR IGNORE INTO records (sha256, job_id, batch_id, key, created_at, hashes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (r.sha256, r.job_id, r.batch_id, r.key, r.created_at, ",".join(f"{h:016x}" for h in r.hashes)),
                )
                if cur.rowcount == 0:
                    continue  # a retried job delivered the same bytes again
                rid = cur.lastrowid
                for h in r.hashes:
                    s = to_signed(h)
                    rows.extend((b, v, s, rid) for b, v in enumerate(band_values(h)))
            db.executemany("INSERT OR IGNORE INTO bands (band, value, hash, record_id) VALUES (?, ?, ?, ?)", rows)

    def _by_sha256(self, sha256: str) -> ProvenanceRecord | None:
        row = self.db.execute(
            "SELECT sha256, hashes, job_id, batch_id, key, created_at FROM records WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return _row(row) if row else None

    def _candidates(self, probes: list[list[int]]) -> tuple[np.ndarray, list[str]]:
        hashes: list[int] = []
        ids: list[str] = []
        db = self.db
        for band in range(BANDS):
            values = probes[band]
            marks = ",".join("?" * len(values))
            for h, rid in db.execute(
                f"SELECT hash, record_id FROM bands WHERE band = ? AND value IN ({marks})", (band, *values)
            ):
                hashes.append(from_signed(h))
                ids.append(str(rid))
        return np.array(hashes, dtype=np.uint64), ids

    def _record(self, record_id: str) -> ProvenanceRecord:
        row = self.db.execute(
            "SELECT sha256, hashes, job_id, batch_id, key, created_at FROM records WHERE id = ?", (int(record_id),)
        ).fetchone()
        if row is None:
            raise KeyError(record_id)
        return _row(row)

    def _remove(self, sha256: str) -> bool:
        db = self.db
        with db:
            row = db.execute("SELECT id FROM records WHERE sha256 = ?", (sha256,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM bands WHERE record_id = ?", (row[0],))
            db.execute("DELETE FROM records WHERE id = ?", (row[0],))
        return True

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _row(row: tuple) -> ProvenanceRecord:
    sha, hashes, job_id, batch_id, key, created_at = row
    return ProvenanceRecord(sha, tuple(int(h, 16) for h in hashes.split(",") if h), job_id, batch_id, key, created_at)
