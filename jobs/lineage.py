"""Lineage of a refined job: which job's image it refines, at which turn of which chain.

``POST /v1/jobs/{id}/refine`` (producer/refine.py) makes a job that is image-to-image from an
output of an earlier job. The child's message and record carry a :class:`Lineage`; the worker
lists the parent image (its signed bytes, as stored) as the ``parentOf`` ingredient of the
child's C2PA manifest, so reading the last image of a chain walks back to the first.
A job without a lineage is turn 0 and the root of its own chain.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: Refinements a chain may hold after its root: each turn re-embeds every earlier manifest as an
#: ingredient, so a chain's last image grows with its length.
MAX_TURNS = 50


class Lineage(BaseModel):
    """Where a refined job comes from. Only refined jobs have one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parent_id: str = Field(description="The job whose image this job refines.")
    parent_index: int = Field(ge=0, description="Which of the parent's images (its output index).")
    turn: int = Field(ge=1, le=MAX_TURNS, description="The parent's turn + 1 (a job with no parent is turn 0).")
    root_id: str = Field(description="The first job of the chain (turn 0).")
    parent_sha256: str = Field(description="SHA-256 of the parent image's delivered (signed) bytes: the worker "
                                           "lists the stored reference as the C2PA parent only when it matches.")
