"""Issue 10, finding 5: a storage outage failed every in-flight job, and each retry rendered again.

A real worker renders into S3 (moto) behind a loopback proxy that refuses every request while
"down". The rendered, signed bytes must wait for storage (uploads retried with backoff) and the
job must succeed once storage is back, rendered exactly once.
"""
from __future__ import annotations

import uuid

import pytest

from jobs.status import JobStatus
from tests.faults import FaultProxy
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(240)


def test_a_storage_outage_delays_the_job_and_never_renders_it_again(br_env, s3_endpoint, settings_for,
                                                                    client_for, start_worker):
    from storage.s3 import S3Storage

    with FaultProxy(s3_endpoint, failures=0, mode="503") as proxy:
        env = {**br_env, "BATCHRENDER_STORAGE_URL": f"s3://outage-{uuid.uuid4().hex[:12]}/renders",
               "BATCHRENDER_S3_ENDPOINT_URL": proxy.url, "BATCHRENDER_S3_PATH_STYLE": "true",
               "BATCHRENDER_S3_ACCESS_KEY_ID": "test", "BATCHRENDER_S3_SECRET_ACCESS_KEY": "test",
               "BATCHRENDER_S3_MAX_ATTEMPTS": "2", "BATCHRENDER_STORAGE_OUTAGE_S": "600"}
        store = S3Storage(settings_for(env))
        store.ensure_bucket()
        store.close()
        client = client_for(env)
        start_worker(env, queues="render.tiny")
        proxy.down = True
        job = client.submit({"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 4})
        # The outage outlasts the S3 client's own retries (2 attempts per upload) several times over.
        wait_for(lambda: proxy.refused >= 8, timeout=120, what="uploads refused during the outage")
        assert client.status(job).status is JobStatus.RUNNING, client.status(job).to_dict()
        proxy.down = False
        rec = client.wait(job, timeout=120)
        assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
        assert rec.attempts == 1, "the image waited for storage; it was not rendered again"
        assert len(rec.result.images) == 1 and rec.result.images[0].key.endswith("/0.png")
