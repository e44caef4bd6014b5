"""Text from untrusted JSON and JSONL: lone surrogates refused where the JSON is read.

JSON may escape a UTF-16 surrogate on its own (``"\\ud800"``). Python parses it to a ``str``
that cannot be encoded as UTF-8: it cannot be stored in Redis, logged, or sent back, and the
answer that echoes it (a batch's per-line errors naming its ``custom_id``) fails with a 500
after the work was done. So every JSON body the API reads, and every line of a JSONL file it
stores or reads, is checked here before anything is created, and refused naming the line (for
JSONL) and the field.

The check is cheap for the common case: the raw text is searched for a surrogate escape
(``\\uD800``-``\\uDFFF``) at C speed; only text that holds one (a correctly paired emoji, say,
or a lone surrogate) is parsed and walked (``jobs.schemas.find_surrogate``, no recursion).
Text that is not valid JSON is left to its parser, which reports it in its own words.
"""
from __future__ import annotations

import json
import re
from typing import Any

from jobs.errors import InvalidRequest
from jobs.schemas import find_surrogate, surrogate_error

#: A surrogate escape anywhere in the raw text: only then is the text parsed and walked.
_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")


def _might_hold(raw: bytes | str) -> bool:
    return bool((_ESCAPE_BYTES if isinstance(raw, bytes) else _ESCAPE_TEXT).search(raw))


def surrogate_problem(raw: bytes | str, *, jsonl: bool = False) -> dict[str, Any] | None:
    """Where the first lone surrogate of ``raw`` is: ``{"field", "message"}`` (plus ``"line"``,
    1-based, for JSONL), or None. JSON that does not parse is not judged here."""
    if not _might_hold(raw):
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    chunks = enumerate(text.splitlines(), 1) if jsonl else [(None, text)]
    for line, chunk in chunks:
        if jsonl and not _might_hold(chunk):
            continue
        try:
            value = json.loads(chunk)
        except (ValueError, RecursionError):
            continue  # its parser names what is wrong with it
        found = find_surrogate(value)
        if found:
            field, bad = found
            problem: dict[str, Any] = {"field": field, "message": str(surrogate_error(field, bad))}
            if line is not None:
                problem = {"line": line, **problem}
            return problem
    return None


def refuse_surrogates(raw: bytes | str, *, jsonl: bool = False, what: str = "") -> None:
    """``InvalidRequest`` naming the line and field of the first lone surrogate in ``raw``.
    ``what``: what the text is, for the message (``"input_file_id"``, ``"the file"``)."""
    problem = surrogate_problem(raw, jsonl=jsonl)
    if problem is None:
        return
    where = f"line {problem['line']}: " if "line" in problem else ""
    prefix = f"{what}: " if what else ""
    raise InvalidRequest(f"invalid request: {prefix}{where}{problem['message']}", errors=[problem])

