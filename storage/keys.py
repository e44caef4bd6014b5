"""Object keys built from ``Settings.key_template``, refusing anything that could escape the prefix.

Every template value must match ``[A-Za-z0-9._-]+`` and must not be ``.`` or ``..``; the template
itself may only contain ``/``-separated segments that stay relative. Checking values (not the
finished key) lets the error name the field the caller has to fix.
"""
from __future__ import annotations

import re
import string
from typing import Mapping

from jobs.errors import ConfigurationError, UnsafeKey

SAFE_VALUE = re.compile(r"[A-Za-z0-9._-]+")
SAFE_DESCRIPTION = "1-128 characters from [A-Za-z0-9._-], not '.' or '..'"
#: Fields a template may use; anything else is a configuration mistake, found at start-up.
TEMPLATE_FIELDS = frozenset({"batch_id", "job_id", "index", "ext", "custom_id", "model", "seed", "date"})
_MAX_VALUE = 128


def template_fields(template: str) -> set[str]:
    """The field names in ``template``; ConfigurationError for unknown fields or bad syntax."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigurationError(f"key_template {template!r} is not a valid format string: {e}") from None
    names: set[str] = set()
    for _literal, field, spec, conv in parsed:
        if field is None:
            continue
        if field == "" or field not in TEMPLATE_FIELDS or spec or conv:
            raise ConfigurationError(
                f"key_template {template!r} uses unsupported field {{{field}}}; "
                f"allowed fields: {', '.join(sorted(TEMPLATE_FIELDS))} (no format specs)"
            )
        names.add(field)
    return names


def check_value(field: str, value: object) -> str:
    """Return ``value`` as a string when it is safe in a key; otherwise raise UnsafeKey."""
    text = str(value)
    if len(text) > _MAX_VALUE or not SAFE_VALUE.fullmatch(text) or text in (".", ".."):
        raise UnsafeKey(
            f"{field} {text[:40]!r} is not allowed in a storage key: use {SAFE_DESCRIPTION}",
            errors=[{"field": field, "message": f"use {SAFE_DESCRIPTION}"}],
        )
    return text


def check_key(key: str) -> str:
    """Validate a finished key: relative, no empty, ``.`` or ``..`` segments, safe characters."""
    if not key or key.startswith("/") or "\\" in key:
        raise UnsafeKey(f"storage key {key[:80]!r} must be a relative path of safe segments",
                        errors=[{"field": "key", "message": f"segments of {SAFE_DESCRIPTION}"}])
    for segment in key.split("/"):
        check_value("key", segment)
    return key


def build_key(template: str, **values: object) -> str:
    """Render ``template`` with ``values``; every used value is checked before it is substituted.

    >>> build_key("{batch_id}/{job_id}/{index}.{ext}", batch_id="b1", job_id="j1", index=0, ext="png")
    'b1/j1/0.png'
    """
    fields = template_fields(template)
    missing = fields - values.keys()
    if missing:
        raise ConfigurationError(
            f"key_template {template!r} needs {', '.join(sorted(missing))}, which the caller did not supply"
        )
    safe: Mapping[str, str] = {f: check_value(f, values[f]) for f in fields}
    key = template.format(**safe)
    try:
        return check_key(key)
    except UnsafeKey:
        # Values were safe, so the template itself makes absolute or empty segments.
        raise ConfigurationError(
            f"key_template {template!r} produces {key!r}: it must be relative with no empty segments"
        ) from None


def quarantine_key(prefix: str, key: str) -> str:
    """The private key under which a held-back object is kept."""
    return check_key(f"{check_value('quarantine_prefix', prefix)}/{check_key(key)}")
