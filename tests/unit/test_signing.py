"""Message signing keys and signatures (jobs/signing.py)."""
from __future__ import annotations

import secrets
import threading

import pytest

from jobs.schemas import JobMessage, RenderRequest
from jobs.signing import ForgedMessage, Signer, local_key


def test_a_key_file_made_by_many_threads_at_once_is_one_whole_key(tmp_path):
    """Found by the 200-concurrent-submits test: a reader once saw the key file before its bytes."""
    for trial in range(10):
        path = tmp_path / str(trial) / "keys" / "message.key"
        got: list[bytes] = []
        threads = [threading.Thread(target=lambda: got.append(local_key(path, lambda: secrets.token_hex(32))))
                   for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(got)) == 1 and len(got[0]) == 64
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_signatures_cover_every_field():
    signer = Signer(b"k" * 32)
    msg = signer.sign(JobMessage(job_id="job_1", tenant="t1", request=RenderRequest(prompt="a cup", seed=1)))
    assert signer.verify(msg) is msg
    for change in ({"tenant": "t2"}, {"job_id": "job_2"}, {"reroll": 1}, {"signature": None},
                   {"request": msg.request.model_copy(update={"steps": 9})}):
        with pytest.raises(ForgedMessage):
            signer.verify(msg.model_copy(update=change))
    with pytest.raises(ForgedMessage):
        Signer(b"x" * 32).verify(msg)

