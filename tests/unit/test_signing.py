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



def test_the_link_key_comes_from_settings_or_the_message_key_never_from_redis(tmp_path):
    """``link_key`` needs no Redis: set, it is used as given; unset, it is derived from the message
    key (so every process sharing that key agrees) and is not the message key itself."""
    from jobs.errors import ConfigurationError
    from jobs.settings import Settings
    from jobs.signing import link_key, message_key

    given = Settings(home=tmp_path, url_signing_key="a-url-signing-key-of-32-bytes-long")
    assert link_key(given) == b"a-url-signing-key-of-32-bytes-long"
    with pytest.raises(ConfigurationError, match="BATCHRENDER_URL_SIGNING_KEY is shorter than 16 bytes"):
        link_key(Settings(home=tmp_path, url_signing_key="short"))
    derived = Settings(home=tmp_path, message_signing_key="m" * 32)
    assert link_key(derived) == link_key(Settings(home=tmp_path / "elsewhere", message_signing_key="m" * 32))
    assert link_key(derived) != message_key(derived) and len(link_key(derived)) == 64
    assert link_key(derived) != link_key(Settings(home=tmp_path, message_signing_key="n" * 32))
    dev = Settings(home=tmp_path / "dev")  # embedded broker: from home/keys/message.key, made on first use
    assert link_key(dev) == link_key(Settings(home=tmp_path / "dev")) and (tmp_path / "dev/keys/message.key").exists()
    with pytest.raises(ConfigurationError, match="BATCHRENDER_MESSAGE_SIGNING_KEY"):
        link_key(Settings(home=tmp_path / "shared", redis_url="redis://127.0.0.1:1/0"))  # shared Redis: no key files
