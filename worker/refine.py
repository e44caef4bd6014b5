"""A refinement's parent image, for the ``parentOf`` ingredient of its C2PA manifest.

The producer copied the parent's delivered (signed) bytes from storage into the child's input
key (producer/refine.py); the worker rendered from that reference. Here the same stored bytes
are read again and checked against the SHA-256 the lineage names, so the ingredient is exactly
the parent image as delivered, its own manifest included: a refinement whose reference does not
match is failed rather than signed with a parent it was not rendered from.
"""
from __future__ import annotations

import hashlib

from jobs.errors import PermanentError
from jobs.schemas import JobMessage
from provenance.c2pa_sign import ParentImage, sniff_mime


def parent_image(storage, msg: JobMessage) -> ParentImage | None:
    """The parent image of a refined job (None for a job that is not a refinement)."""
    lineage = msg.lineage
    if lineage is None:
        return None
    if not msg.input_key:
        raise PermanentError(f"job {msg.job_id} refines {lineage.parent_id} but has no stored reference image")
    try:
        data = storage.get(msg.input_key)
    except KeyError:
        raise PermanentError(f"the parent image of job {msg.job_id} ({msg.input_key!r}) is missing from storage") \
            from None
    if hashlib.sha256(data).hexdigest() != lineage.parent_sha256:
        raise PermanentError(f"the stored reference of job {msg.job_id} is not image {lineage.parent_index} of job "
                             f"{lineage.parent_id} (SHA-256 differs): it cannot be signed as its parent")
    ext = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}.get(sniff_mime(data) or "", "bin")
    return ParentImage(data=data, title=f"{lineage.parent_id}-{lineage.parent_index}.{ext}",
                       job_id=lineage.parent_id, index=lineage.parent_index, turn=lineage.turn)
