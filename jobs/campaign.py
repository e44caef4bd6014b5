"""The campaign document: a catalog × a template × sweeps → cells, each an ordinary render request.

A campaign is one versioned JSON (or YAML) document::

    {"v": 1, "name": "spring-mugs",
     "catalog": {"file_id": "file-...", "key": "sku"},          # or {"path": ...} (CLI), {"rows": [...]}
     "template": {"prompt": "a {colour} {material} mug, {style}, product photo",
                  "negative_prompt": "text, watermark",
                  "fields": {"model": "tiny", "seed": "{seed}", "custom_id": "{sku}-{style}",
                             "background": "transparent"}},
     "sweeps": {"mode": "cartesian", "axes": {"style": ["studio", "watercolour"]}},
     "renditions": [{"name": "square", "width": 1080, "height": 1080}, ...],
     "budget": {"max_gpu_seconds": 600, "max_cost": 2.5}}

Templates are filled by plain substitution: ``{column}`` (a catalog column or a sweep axis) and
``{{``/``}}`` for braces. Nothing is evaluated: attribute access (``{a.b}``), indexing
(``{a[0]}``), conversions (``{a!r}``) and format specs (``{a:>9}``) are refused by name. A field
whose whole value is one slot takes the column's value converted to the field's type (``seed``
from a column of numbers); a sweep axis named after a request field sets that field, any other
axis is a template variable.

Every cell gets an explicit seed (from the template, a sweep, or derived from the campaign name,
the row's key and the sweep values), so its content key — a hash of everything that changes its
pixels (``content_key``) — is stable across applies: applying again renders only new and changed
cells. Shared by the producer (planning, applying) and, for ``cache: "reuse"``, plain jobs.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import InvalidRequest
from jobs.schemas import CUSTOM_ID_CHARS, MAX_RENDITIONS, Rendition, RenderRequest, invalid_from

CAMPAIGN_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Request fields a template may not set: the template's own, and per-campaign ones.
_NOT_TEMPLATE_FIELDS = {"prompt", "negative_prompt", "renditions", "webhook", "webhook_events_filter", "cache"}
#: ``{name}``: anything but braces; what it holds is checked by ``slots``.
_SLOT = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_BAD_SLOT = re.compile(r"[.\[\]!:()]")
#: The catalog's row count and the cells one campaign may expand to (settings may lower them).
MAX_SWEEP_VALUES = 1000


def _field_types() -> dict[str, str]:
    """Each request field's scalar type, for converting a catalog cell (always text) to it."""
    out = {}
    for name, info in RenderRequest.model_fields.items():
        text = str(info.annotation)
        out[name] = ("int" if "int" in text and "float" not in text else "float" if "float" in text
                     else "bool" if "bool" in text else "list" if "list" in text else "str")
    return out


FIELD_TYPES = _field_types()


class CatalogRef(BaseModel):
    """Where the rows come from: an uploaded file (files API), a local path (CLI), or inline rows."""

    model_config = ConfigDict(extra="forbid")
    file_id: str | None = Field(None, max_length=64, description="A file uploaded through /v1/files.")
    path: str | None = Field(None, max_length=4096, description="A local CSV or JSONL file (CLI only).")
    rows: list[dict[str, Any]] | None = Field(None, max_length=1000, description="Inline rows (small catalogs).")
    format: Literal["csv", "jsonl"] | None = Field(None, description="Default: from the file name, else csv.")
    key: str | None = Field(None, max_length=128, description=(
        "The column that identifies a row across edits (e.g. sku); default the row number."))

    @model_validator(mode="after")
    def _one_source(self) -> "CatalogRef":
        given = [n for n in ("file_id", "path", "rows") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of file_id, path or rows" + (f" (got {', '.join(given)})" if given else ""))
        return self


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=4000, description="With {column} slots.")
    negative_prompt: str | None = Field(None, max_length=4000)
    fields: dict[str, Any] = Field(default_factory=dict, description=(
        "Any request field, as a literal or a '{column}' slot: seed, model, aspect_ratio, palette, "
        "background, references, custom_id pattern, ..."))

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name in _NOT_TEMPLATE_FIELDS:
                raise ValueError(f"{name!r} is set by the campaign itself, not by template fields")
            if name not in RenderRequest.model_fields:
                allowed = sorted(set(RenderRequest.model_fields) - _NOT_TEMPLATE_FIELDS)
                raise ValueError(f"unknown request field {name!r}; allowed: {', '.join(allowed)}")
        return v


class Sweeps(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["cartesian", "zip"] = "cartesian"
    axes: dict[str, list[Any]] = Field(..., min_length=1, max_length=8)

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, values in v.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"sweep axis {name[:40]!r}: names use letters, digits and '_'")
            if name in _NOT_TEMPLATE_FIELDS:
                raise ValueError(f"sweep axis {name!r} cannot be swept; it is set by the campaign")
            if not values:
                raise ValueError(f"sweep axis {name!r} has no values")
            if len(values) > MAX_SWEEP_VALUES:
                raise ValueError(f"sweep axis {name!r} has {len(values)} values; at most {MAX_SWEEP_VALUES}")
        return v

    @model_validator(mode="after")
    def _zip_lengths(self) -> "Sweeps":
        if self.mode == "zip":
            lengths = {k: len(v) for k, v in self.axes.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zipped sweep axes must have equal lengths; got {lengths}")
        return self

    @property
    def size(self) -> int:
        n = 1
        if self.mode == "zip":
            return len(next(iter(self.axes.values())))
        for values in self.axes.values():
            n *= len(values)
        return n

    def combinations(self) -> Iterator[dict[str, Any]]:
        names = list(self.axes)
        if self.mode == "zip":
            for values in zip(*self.axes.values()):
                yield dict(zip(names, values))
        else:
            for values in itertools.product(*self.axes.values()):
                yield dict(zip(names, values))


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what} must be a finite number, not {json.dumps(v)[:40]}")
    if v <= 0:
        raise ValueError(f"{what} must be greater than 0")
    return float(v)


class Budget(BaseModel):
    """The most a campaign may cost: GPU-seconds, money (``BATCHRENDER_GPU_SECOND_PRICE`` × GPU-seconds),
    or both. Apply refuses a campaign whose plan is over it."""

    model_config = ConfigDict(extra="forbid")
    max_gpu_seconds: Any = None
    max_cost: Any = None

    @field_validator("max_gpu_seconds", "max_cost")
    @classmethod
    def _numbers(cls, v: Any, info) -> float | None:
        return None if v is None else _number(v, info.field_name)


class CampaignSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "v": 1, "name": "spring-mugs", "catalog": {"file_id": "file-abc123", "key": "sku"},
        "template": {"prompt": "a {colour} ceramic mug, {style}, product photo",
                     "fields": {"model": "tiny", "custom_id": "{sku}-{style}", "background": "transparent"}},
        "sweeps": {"axes": {"style": ["studio light", "watercolour"]}},
        "renditions": [{"name": "square", "width": 1080, "height": 1080},
                       {"name": "portrait", "width": 1080, "height": 1350},
                       {"name": "story", "width": 1080, "height": 1920}],
        "budget": {"max_gpu_seconds": 3600}}]})

    v: int = Field(CAMPAIGN_VERSION, description="Document version (1).")
    name: str = Field(..., description="Letters, digits, '.', '_', '-' (1–64); applying a document with the same "
                                       "name again updates that campaign.")
    catalog: CatalogRef
    template: Template
    sweeps: Sweeps | None = None
    renditions: list[Rendition] | None = Field(None, min_length=1, max_length=MAX_RENDITIONS)
    budget: Budget | None = None
    webhook: str | None = Field(None, max_length=2048, description="Receives campaign.completed and the cells' events.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("v")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != CAMPAIGN_VERSION:
            raise ValueError(f"campaign document version {v} is not supported; this server reads v {CAMPAIGN_VERSION}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("a campaign name uses letters, digits, '.', '_' and '-' (1–64), starting with a letter or digit")
        return v

    @field_validator("renditions")
    @classmethod
    def _renditions(cls, v: list[Rendition] | None) -> list[Rendition] | None:
        names = [r.name for r in v or []]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"rendition name {sorted(dup)[0]!r} is used twice; names must be unique")
        return v

    @classmethod
    def parse(cls, data: Any) -> "CampaignSpec":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            bad = invalid_from(e)
            errors = [{**x, "message": x["message"].replace("allowed fields: " + ", ".join(RenderRequest.model_fields),
                                                            "allowed fields: " + ", ".join(cls.model_fields))}
                      if x["field"].count(".") == 0 else x for x in bad.errors]
            summary = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
            raise InvalidRequest(f"invalid campaign: {summary}", errors=errors) from None

    def variables(self) -> set[str]:
        """The sweep axes that are template variables (not request fields)."""
        return {a for a in (self.sweeps.axes if self.sweeps else {}) if a not in RenderRequest.model_fields}

    @property
    def cells_per_row(self) -> int:
        return self.sweeps.size if self.sweeps else 1


# -- templates ------------------------------------------------------------------------------------
def slots(text: str, where: str) -> list[str]:
    """The slot names in ``text``; InvalidRequest naming ``where`` for anything that is not a plain name."""
    out = []
    for m in _SLOT.finditer(text):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        name = m.group(1)
        if name is None:
            raise InvalidRequest(f"invalid campaign: {where}: a lone {token!r}; write {token * 2} for a literal brace",
                                 errors=[{"field": where, "message": f"lone {token!r}"}])
        name = name.strip()
        if not name or _BAD_SLOT.search(name):
            raise InvalidRequest(
                f"invalid campaign: {where}: slot {{{name}}} is not allowed; slots are plain column names "
                "({colour}): no attribute access, indexing, conversions or format specs",
                errors=[{"field": where, "message": f"slot {{{name}}} is not a plain column name"}])
        out.append(name)
    return out


def fill(text: str, values: Mapping[str, Any]) -> str:
    """``text`` with each ``{name}`` replaced by ``values[name]`` as text; nothing evaluated."""
    def sub(m: re.Match) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        v = values.get((m.group(1) or "").strip())
        return "" if v is None else str(v)
    return _SLOT.sub(sub, text)


def template_slots(spec: CampaignSpec) -> dict[str, list[str]]:
    """Every slot used, by where it is used (``template.prompt``, ``template.fields.seed``, ...)."""
    used: dict[str, list[str]] = {"template.prompt": slots(spec.template.prompt, "template.prompt")}
    if spec.template.negative_prompt:
        used["template.negative_prompt"] = slots(spec.template.negative_prompt, "template.negative_prompt")
    for name, value in spec.template.fields.items():
        for i, text in enumerate(_strings(value)):
            used[f"template.fields.{name}" + (f"[{i}]" if isinstance(value, list) else "")] = \
                slots(text, f"template.fields.{name}")
    return used


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def check_slots(spec: CampaignSpec, columns: list[str]) -> None:
    """Every slot names a catalog column or a sweep variable, and no sweep axis shadows a column;
    InvalidRequest naming the slot and what is available."""
    available = set(columns) | spec.variables()
    clash = spec.variables() & set(columns)
    if clash:
        name = sorted(clash)[0]
        raise InvalidRequest(f"invalid campaign: sweeps.axes.{name}: the catalog has a column {name!r} too; "
                             "rename the axis or the column", errors=[{"field": f"sweeps.axes.{name}",
                                                                       "message": "also a catalog column"}])
    for where, names in template_slots(spec).items():
        for name in names:
            if name not in available:
                shown = ", ".join(sorted(available)[:40]) or "none"
                raise InvalidRequest(f"invalid campaign: {where}: unknown slot {{{name}}}; the catalog's columns and "
                                     f"sweep variables are: {shown}",
                                     errors=[{"field": where, "message": f"unknown slot {{{name}}}"}])


# -- cells ----------------------------------------------------------------------------------------
class CellError(InvalidRequest):
    """A cell that cannot become a request: names the row (and column or field)."""


@dataclass
class Cell:
    row: int                 # 1-based data row (CSV: header is row 0; JSONL: line number)
    row_key: str             # the key column's value, else "row-N"
    sweep: dict[str, Any]    # this cell's sweep values
    sweep_index: int
    request: dict[str, Any]  # the expanded request, as a client would send it

    @property
    def cell_id(self) -> str:
        return f"{self.row_key}#{self.sweep_index}" if self.sweep else self.row_key


_CUSTOM_ID_BAD = re.compile(f"[^{CUSTOM_ID_CHARS}]")


def _convert(name: str, raw: Any, row: int, column: str | None) -> Any:
    """A catalog value (text from CSV, any JSON from JSONL) as request field ``name`` takes it."""
    kind = FIELD_TYPES.get(name, "str")
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    where = f"row {row}" + (f", column {column!r}" if column else "") + f" (field {name})"
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            low = text.lower()
            if low in ("true", "1", "yes", "y"):
                return True
            if low in ("false", "0", "no", "n", ""):
                return False
            raise ValueError
        if kind == "list":
            return [p for p in re.split(r"[,\s]+", text) if p]
    except ValueError:
        allowed = {"int": "a whole number", "float": "a number", "bool": "true or false"}[kind]
        raise CellError(f"{where}: {text[:40]!r} is not {allowed}",
                        errors=[{"row": row, "column": column, "field": name,
                                 "message": f"{text[:40]!r} is not {allowed}"}]) from None
    return text


def expand_row(spec: CampaignSpec, row: int, values: Mapping[str, Any], key_column: str | None) -> Iterator[Cell]:
    """The cells of one catalog row: one per sweep combination, each a request dict (unvalidated)."""
    return Expansion(spec).cells(row, values, key_column)


class Expansion:
    """What expanding every row of one campaign shares, worked out once (a plan expands
    thousands of rows): the slots the prompts need, the sweep combinations, the renditions."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.spec = spec
        variables = spec.variables()
        #: (where, slot) of the prompt and negative prompt slots a row must have a column for; a
        #: field whose column is missing or empty keeps its default, as in CSV
        self.needed = [(where, name) for where, names in template_slots(spec).items()
                       if where.startswith(("template.prompt", "template.negative_prompt"))
                       for name in names if name not in variables]
        self.combos = list(spec.sweeps.combinations()) if spec.sweeps else [{}]
        self.renditions = [r.model_dump(exclude_none=True, mode="json") for r in spec.renditions or ()]

    def cells(self, row: int, values: Mapping[str, Any], key_column: str | None) -> Iterator[Cell]:
        """The cells of one catalog row (``expand_row``)."""
        spec = self.spec
        row_key = str(values.get(key_column, "")).strip() if key_column else f"row-{row}"
        for where, name in self.needed:
            if name not in values:
                raise CellError(f"invalid catalog: row {row} has no column {name!r} ({where} uses it)",
                                errors=[{"row": row, "column": name, "field": where,
                                         "message": f"no column {name!r}"}])
        for i, combo in enumerate(self.combos):
            scope = {**values, **combo}
            req: dict[str, Any] = {"prompt": fill(spec.template.prompt, scope)}
            if spec.template.negative_prompt:
                req["negative_prompt"] = fill(spec.template.negative_prompt, scope)
            for name, value in spec.template.fields.items():
                whole = _SLOT.fullmatch(value) if isinstance(value, str) else None
                if whole and whole.group(1):
                    column = whole.group(1).strip()
                    raw = scope.get(column)
                    if raw is None or (isinstance(raw, str) and not raw.strip()):
                        continue  # an empty cell: the field keeps its default
                    req[name] = _convert(name, raw, row, column)
                elif isinstance(value, str):
                    req[name] = fill(value, scope) if FIELD_TYPES.get(name) == "str" else \
                        _convert(name, fill(value, scope), row, None)
                elif isinstance(value, list):
                    req[name] = [fill(v, scope) if isinstance(v, str) else v for v in value]
                else:
                    req[name] = value
            for axis, value in combo.items():
                if axis in RenderRequest.model_fields:
                    req[axis] = _convert(axis, value, row, None) if isinstance(value, str) and \
                        FIELD_TYPES.get(axis) != "str" else value
            if self.renditions:
                req["renditions"] = [dict(r) for r in self.renditions]
            if "seed" not in req:
                # Explicit and stable: the same row and sweep values give the same seed on every apply.
                # Without a key column a row is known by its values (row numbers shift when a row is
                # removed, and every row after it would render again).
                basis = json.dumps([spec.name, row_key if key_column else sorted(values.items()), combo],
                                   sort_keys=True, default=str)
                req["seed"] = int.from_bytes(hashlib.sha256(basis.encode()).digest()[:4], "big")
            if isinstance(req.get("custom_id"), str):
                # A pattern ({sku}-{style}) filled with any text: spaces and other characters a
                # custom_id cannot hold become "_" rather than refusing the cell.
                req["custom_id"] = _CUSTOM_ID_BAD.sub("_", req["custom_id"]).strip(".")[:128] or None
                if req["custom_id"] is None:
                    del req["custom_id"]
            if "custom_id" not in req:
                base = _CUSTOM_ID_BAD.sub("_", row_key)[:100] or f"row-{row}"
                req["custom_id"] = f"{base}.{i}" if spec.sweeps else base
            meta = dict(req.get("metadata") or {})
            meta.update({"campaign": spec.name, "row": row, "row_key": row_key,
                         **({"sweep": combo} if combo else {})})
            req["metadata"] = meta
            yield Cell(row, row_key, combo, i, req)


# -- content keys ---------------------------------------------------------------------------------
#: Fields that do not change a job's pixels: left out of its content key.
_NOT_PIXELS = {"custom_id", "metadata", "webhook", "webhook_events_filter", "cache", "priority", "deliver_by"}


def canonical_spec(model_spec: Any) -> str:
    """A registry entry (or its ``model_dump(mode="json")``) as the canonical JSON ``content_key``
    hashes: a plan works it out once per model and passes the string."""
    spec = dict(model_spec) if isinstance(model_spec, Mapping) else model_spec.model_dump(mode="json")
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def content_key(resolved: RenderRequest, model_spec: Any) -> str:
    """A hash of everything that changes a resolved request's pixels: the model (its registry entry,
    weights' source and revision included), prompt, every pixel parameter, seed, shape and
    renditions. Two requests that differ only in seed never share a key. ``model_spec``: the
    registry entry, its ``model_dump(mode="json")``, or ``canonical_spec`` of either (the same key).

    The hashed text is ``{"v":1,"model":...,"request":...}`` as ``json.dumps`` with sorted keys and
    no spaces writes it; it is put together from the two parts, each written that way, so the
    model's part need not be written again for every cell."""
    body = resolved.model_dump(mode="json", exclude=_NOT_PIXELS)
    for name in ("image", "mask"):
        if body.get(name) and str(body[name]).startswith("data:"):
            body[name] = "sha256:" + hashlib.sha256(body[name].encode()).hexdigest()
    if body.get("references"):
        body["references"] = [("sha256:" + hashlib.sha256(x.encode()).hexdigest()) if x.startswith("data:") else x
                              for x in body["references"]]
    spec = model_spec if isinstance(model_spec, str) else canonical_spec(model_spec)
    request = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f'{{"model":{spec},"request":{request},"v":1}}'.encode()).hexdigest()
