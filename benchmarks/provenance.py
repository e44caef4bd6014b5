"""Provenance lookup at scale: multi-index hashing vs a linear scan, and the false-match rate.

Fills the SQLite index (and Redis when reachable) with N random 64-bit hashes plus a few
hundred real synthetic renders (each with its crop variants), then prints lookup p50/p95 next
to a numpy popcount scan over all hashes and a pure-Python scan (timed on a sample, scaled).
Finally looks up 1,000 unrelated structured images that are not in the index.

    .venv/bin/python benchmarks/provenance.py [--n 1000000] [--redis-url redis://127.0.0.1:6379/13]
"""
from __future__ import annotations

import sys
from pathlib import Path  # noqa: E402

# This file is named provenance.py: drop its own folder from sys.path so `import provenance`
# finds the package, and put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from provenance.index import ProvenanceIndex, ProvenanceRecord  # noqa: E402
from provenance.index_redis import RedisProvenanceIndex  # noqa: E402
from provenance.index_sqlite import SQLiteProvenanceIndex  # noqa: E402
from provenance.phash import center_crop, index_hashes, phash  # noqa: E402
from provenance.synthetic import encode, noise_render, structured  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) * 1000


def random_records(hashes: np.ndarray):
    for i, h in enumerate(hashes.tolist()):
        yield ProvenanceRecord(f"{i:064x}", (h,), f"rand-{i}", "rand", f"r/{i}.png", 0.0)


def real_set(n_real: int) -> tuple[list[ProvenanceRecord], list[tuple[str, int]]]:
    """Real renders to index, and queries (expected job, hash) made from transformed copies."""
    records, queries = [], []
    for i in range(n_real):
        im = (structured if i % 2 else noise_render)(1_000_000 + i, 384)
        data = encode(im)
        job = f"real-{i}"
        records.append(ProvenanceRecord(hashlib.sha256(data).hexdigest(), tuple(index_hashes(im)), job, "real",
                                        f"real/{i}.png", time.time()))
        small = im.resize((128, 128), Image.Resampling.LANCZOS)
        variant = [small, center_crop(im, 0.05)][i % 2]
        buf = io.BytesIO()
        variant.save(buf, "JPEG", quality=60)
        queries.append((job, phash(Image.open(buf))))
    return records, queries


def bench_index(name: str, index: ProvenanceIndex, rand: np.ndarray, records, queries, unrelated) -> None:
    t = time.perf_counter()
    index.add_records(random_records(rand), chunk=20_000)
    index.add_records(records)
    fill = time.perf_counter() - t
    times, hits = [], 0
    for job, h in queries:
        t = time.perf_counter()
        m = index.lookup_hash(h)
        times.append(time.perf_counter() - t)
        hits += m is not None and m.job_id == job
    false = 0
    utimes = []
    for h in unrelated:
        t = time.perf_counter()
        m = index.lookup_hash(h)
        utimes.append(time.perf_counter() - t)
        false += m is not None
    print(f"{name:<8} fill {len(rand):,} random + {len(records)} real in {fill:6.1f} s | lookup p50 "
          f"{pct(times + utimes, 50):6.2f} ms  p95 {pct(times + utimes, 95):6.2f} ms | found {hits}/{len(queries)} "
          f"transformed copies | false matches {false}/{len(unrelated)} unrelated ({100 * false / len(unrelated):.2f}%)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--real", type=int, default=200)
    ap.add_argument("--unrelated", type=int, default=1000)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()} "
          f"numpy {np.__version__} sqlite {__import__('sqlite3').sqlite_version}")

    rng = np.random.default_rng(0)
    rand = rng.integers(0, 2**64 - 1, size=args.n, dtype=np.uint64, endpoint=True)
    t = time.perf_counter()
    records, queries = real_set(args.real)
    t_hash = (time.perf_counter() - t) / args.real
    t = time.perf_counter()
    unrelated = [phash(structured(2_000_000 + i, 256)) for i in range(args.unrelated)]
    print(f"hashing: {1000 * t_hash:.1f} ms per 384 px render for 11 index variants + 1 query hash; "
          f"{1000 * (time.perf_counter() - t) / args.unrelated:.1f} ms per unrelated image (draw + hash)")

    # -- baselines ------------------------------------------------------------------------------
    all_hashes = np.concatenate([rand, np.array([h for r in records for h in r.hashes], dtype=np.uint64)])
    scan = []
    for _, h in queries[:100]:
        t = time.perf_counter()
        d = np.bitwise_count(all_hashes ^ np.uint64(h))
        int(np.argmin(d))
        scan.append(time.perf_counter() - t)
    sample = all_hashes[:100_000].tolist()
    t = time.perf_counter()
    q = queries[0][1]
    min((q ^ x).bit_count() for x in sample)
    py = (time.perf_counter() - t) * len(all_hashes) / len(sample)
    print(f"baseline numpy popcount scan over {len(all_hashes):,}: p50 {pct(scan, 50):.2f} ms  p95 {pct(scan, 95):.2f} ms;"
          f" pure-Python scan: {py * 1000:.0f} ms per lookup (100k sample, scaled)")

    with tempfile.TemporaryDirectory() as tmp:
        idx = SQLiteProvenanceIndex(Path(tmp) / "bench.sqlite")
        bench_index("sqlite", idx, rand, records, queries, unrelated)
        size = (Path(tmp) / "bench.sqlite").stat().st_size
        idx.close()
        print(f"         sqlite file {size / 2**20:.0f} MiB")

    try:
        import redis

        redis.Redis.from_url(args.redis_url).ping()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable", reported below
        print(f"redis    skipped: {args.redis_url} not reachable ({e})")
        return
    ridx = RedisProvenanceIndex(args.redis_url, prefix="batchrender:bench:")
    ridx.clear()
    try:
        bench_index("redis", ridx, rand, records, queries, unrelated)
        mem = ridx.r.info("memory")["used_memory_human"]
        print(f"         redis used_memory {mem}")
    finally:
        ridx.clear()
        ridx.close()


if __name__ == "__main__":
    main()
