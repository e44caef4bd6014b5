"""jobs/errors.py: what a tenant is shown of an error whose message names the deployment's insides."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from jobs.errors import BatchIncomplete, BrokerUnavailable, InvalidRequest, StorageError

PATH_ERROR = "could not write 'b/j/0.png' under /srv/batchrender/outputs: [Errno 28] No space left on device"
HOST_ERROR = "Redis is unavailable (ConnectionError: Error 111 connecting to redis-0.internal:6379.)"


def test_storage_and_broker_errors_show_tenants_their_public_message_only():
    for exc, inside in ((StorageError(PATH_ERROR, s3_code="x"), "/srv/batchrender"),
                        (BrokerUnavailable(HOST_ERROR), "redis-0.internal")):
        public = exc.to_public_dict()
        assert public["code"] == exc.code and inside not in str(public), public
        assert "retrying later can succeed" in public["message"]
        assert inside in exc.to_dict()["message"], "operators (CLI, logs) keep the message"
    bad = InvalidRequest("steps: too many", errors=[{"field": "steps", "message": "too many"}])
    assert bad.to_public_dict() == bad.to_dict(), "the project's own messages are shown as they are"


def test_an_incomplete_batch_names_its_jobs_but_not_the_brokers_text():
    e = BatchIncomplete("bat_1", ["job_a"], ["job_b"], ConnectionError("Error 111 connecting to redis-0.internal:6379"))
    assert e.to_public_dict() == e.to_dict()
    assert "job_b" in str(e.to_public_dict()) and "redis-0.internal" not in str(e.to_public_dict())


def test_the_worker_records_the_public_error_and_logs_the_message(caplog):
    from worker.runner import JobRunner

    with caplog.at_level(logging.WARNING, logger="worker.runner"):
        error = JobRunner._public(SimpleNamespace(job_id="job_x"), StorageError(PATH_ERROR))
    assert "/srv/batchrender" not in str(error) and error["code"] == "storage_unavailable"
    assert "job_x" in caplog.text and "/srv/batchrender" in caplog.text


def test_a_signing_failure_names_no_key_or_library_text():
    from jobs.errors import SigningFailed

    e = SigningFailed("C2PA private key is not an unencrypted PEM key: Could not deserialize key data /keys/c2pa.pem")
    assert "/keys" not in str(e.to_public_dict()) and "Content Credentials" in e.to_public_dict()["message"]


def test_a_model_that_does_not_load_tells_tenants_its_name_not_its_directory(tmp_path):
    """Issue 26 (internal text to tenants): the loader's error named the model's directory and
    diffusers' own text; the job record (to_public_dict) now names only the model."""
    from jobs.errors import PermanentError
    from jobs.registry import ModelSpec
    from worker.models import ModelCache

    source = tmp_path / "models" / "broken"
    source.mkdir(parents=True)
    (source / "model_index.json").write_text("{not json")
    with pytest.raises(PermanentError) as raised:
        ModelCache(device="cpu").get(ModelSpec(name="broken", source=str(source)))
    err = raised.value
    assert str(source) in err.to_dict()["message"]  # the operator's log keeps the detail
    public = err.to_public_dict()
    assert str(tmp_path) not in public["message"] and "'broken'" in public["message"], public
    assert public["code"] == err.code
