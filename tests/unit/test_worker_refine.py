"""worker/refine.py: a refinement's parent image is the stored reference, checked against the
SHA-256 its lineage names before it is signed as the parent."""
from __future__ import annotations

import hashlib

import pytest

from jobs.errors import PermanentError
from jobs.lineage import Lineage
from jobs.schemas import JobMessage, RenderRequest
from worker.refine import parent_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


class Storage(dict):
    """Storage's ``get``: the bytes, or KeyError for a missing key."""

    def get(self, key: str) -> bytes:  # type: ignore[override]
        return self[key]


def message(data: bytes, *, input_key: str | None = "_inputs/job_c") -> JobMessage:
    lineage = Lineage(parent_id="job_p", parent_index=1, turn=2, root_id="job_r",
                      parent_sha256=hashlib.sha256(data).hexdigest())
    return JobMessage(job_id="job_c", request=RenderRequest(prompt="make it red"), input_key=input_key,
                      lineage=lineage)


def test_a_job_without_lineage_has_no_parent():
    assert parent_image(Storage(), JobMessage(job_id="job_x", request=RenderRequest(prompt="a cat"))) is None


def test_the_stored_reference_is_the_parent_when_its_hash_matches():
    parent = parent_image(Storage({"_inputs/job_c": PNG}), message(PNG))
    assert parent.data == PNG and parent.mime == "image/png" and parent.title == "job_p-1.png"
    assert (parent.job_id, parent.index, parent.turn) == ("job_p", 1, 2)


def test_a_reference_that_is_not_the_parent_image_is_refused():
    with pytest.raises(PermanentError, match="SHA-256 differs"):
        parent_image(Storage({"_inputs/job_c": PNG + b"x"}), message(PNG))


def test_a_missing_reference_is_refused():
    with pytest.raises(PermanentError, match="missing from storage"):
        parent_image(Storage(), message(PNG))
    with pytest.raises(PermanentError, match="no stored reference"):
        parent_image(Storage(), message(PNG, input_key=None))
