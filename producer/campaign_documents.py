"""Campaign documents as people write them: JSON or YAML text, or a file on disk.

Every problem is an ``InvalidRequest`` that names where it is: the line and column of a syntax
error, the path of a value YAML made into something JSON cannot hold. YAML is read with
``yaml.safe_load`` (no Python objects), timestamps come back as the text they were written as,
and aliases are refused when they would expand past ``MAX_NODES`` values (an "alias bomb"
parses in microseconds and then takes forever to validate).

A document read from a file may name its catalog by ``catalog.path`` relative to the file's own
directory; ``load_file`` makes that path absolute.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import yaml

from jobs.campaign import CampaignSpec
from jobs.errors import InvalidRequest, UnsupportedMediaType

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
JSON_TYPES = ("application/json", "")
#: Values (after expanding aliases) and nesting one document may hold.
MAX_NODES = 200_000
MAX_DEPTH = 32


def _bad(message: str, **where: Any) -> InvalidRequest:
    return InvalidRequest(f"invalid campaign document: {message}",
                          errors=[{"field": "body", **where, "message": message}])


class _Loader(yaml.SafeLoader):
    """``safe_load``'s loader, with timestamps kept as the text they were written as."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = {"line": mark.line + 1, "column": mark.column + 1} if mark else {}
        what = " ".join(x for x in (e.context, e.problem) if x) or "not valid YAML"
        at = f"line {where['line']}, column {where['column']}: " if where else ""
        raise _bad(f"{at}{what}", **where) from None
    except yaml.YAMLError as e:
        raise _bad(f"not valid YAML ({e})") from None
    except RecursionError:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels") from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(f"line {e.lineno}, column {e.colno}: {e.msg}", line=e.lineno, column=e.colno) from None
    except RecursionError:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels") from None


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it; InvalidRequest naming the path of anything else, of nesting
    past ``MAX_DEPTH`` or of more than ``MAX_NODES`` values (aliases counted each time used)."""
    count = 0

    def walk(v: Any, path: str, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_NODES:
            raise _bad(f"the document holds more than {MAX_NODES} values (YAML aliases count each time they are used)")
        if depth > MAX_DEPTH:
            raise _bad(f"{path or 'the document'} is nested deeper than {MAX_DEPTH} levels", path=path)
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                if isinstance(k, bool) or not isinstance(k, (str, int, float)):
                    raise _bad(f"{path or 'the document'}: key {str(k)[:40]!r} is not text", path=path)
                name = str(k)
                out[name] = walk(item, f"{path}.{name}" if path else name, depth + 1)
            return out
        if isinstance(v, list):
            return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
        if v is None or isinstance(v, (str, bool, int, float)):
            return v
        if isinstance(v, (datetime.date, datetime.datetime)):
            return v.isoformat()
        raise _bad(f"{path or 'the document'}: a {type(v).__name__} value cannot be part of a campaign document "
                   "(write it as text)", path=path)

    return walk(value, "", 0)


def parse_document(raw: bytes, content_type: str | None = None, *, filename: str | None = None) -> dict[str, Any]:
    """The document in ``raw`` (JSON or YAML, by content type, else by file name, else YAML,
    which reads JSON too) as a plain dict; InvalidRequest naming the line of a syntax error."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    name = (filename or "").lower()
    if ctype and ctype not in YAML_TYPES and ctype not in JSON_TYPES:
        raise UnsupportedMediaType("send a campaign document as application/json or application/yaml (text/yaml)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise _bad(f"line {line} is not UTF-8; save the document as UTF-8", line=line) from None
    if not text.strip():
        raise _bad("the document is empty")
    as_json = ctype == "application/json" or (not ctype and name.endswith(".json"))
    data = _plain(parse_json(text) if as_json else parse_yaml(text))
    if not isinstance(data, dict):
        raise _bad(f"a campaign document is a mapping (name, catalog, template, ...), not a {type(data).__name__}")
    return data


def load_file(path: str | Path) -> dict[str, Any]:
    """A document from a JSON or YAML file; a relative ``catalog.path`` is made relative to the
    document's directory."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InvalidRequest(f"cannot read {p}: {e.strerror}") from None
    data = parse_document(raw, filename=p.name)
    catalog = data.get("catalog")
    if isinstance(catalog, dict) and isinstance(catalog.get("path"), str) and catalog["path"]:
        target = Path(catalog["path"]).expanduser()
        if not target.is_absolute():
            catalog["path"] = str((p.resolve().parent / target))
    return data


def spec_of(doc: Any) -> CampaignSpec:
    """A ``CampaignSpec`` from a spec, a dict, or a JSON/YAML file's path."""
    if isinstance(doc, CampaignSpec):
        return doc
    if isinstance(doc, (str, Path)):
        doc = load_file(doc)
    return CampaignSpec.parse(doc)


def local_catalog(source: str | Path | bytes, spec: CampaignSpec, max_rows: int):
    """A catalog given beside the document (CLI ``--catalog``, ``Client.campaign(catalog=)``): a
    local file's path, or its bytes (CSV unless the document's ``catalog.format`` says jsonl)."""
    from producer.catalog import Catalog, read_path

    if isinstance(source, (bytes, bytearray)):
        cat = Catalog.from_bytes(bytes(source), format=spec.catalog.format, max_rows=max_rows)
    else:
        cat = read_path(str(Path(source).expanduser()), max_rows)
    if spec.catalog.format:
        cat.format = spec.catalog.format
    return cat


__all__ = ["parse_document", "load_file", "spec_of", "local_catalog", "YAML_TYPES", "MAX_NODES"]
