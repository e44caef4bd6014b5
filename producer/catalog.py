"""Catalogs: the rows of a campaign, read from CSV or JSONL a row at a time.

A catalog is read twice per apply (plan, then submit), never held as parsed rows: memory stays
bounded by one row (plus the raw bytes) however long it is. Every problem is an
``InvalidRequest`` naming the row (1-based data rows; a CSV's header is row 0) and, where it
applies, the column:

- UTF-8 only. A UTF-8 byte-order mark (what spreadsheet programs write) is skipped; a UTF-16/32
  mark or bytes that are not UTF-8 (a file saved in two encodings) are refused naming the row.
- CSV: a header row of unique, non-empty names; every row has as many fields as the header (a
  stray delimiter or a missing one is named with both counts).
- JSONL: one JSON object per line.
- At most ``Settings.campaign_max_rows`` rows.
"""
from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from typing import Any, Iterator

from jobs.errors import InvalidRequest

_UTF8_BOM = codecs.BOM_UTF8
#: Longest first: a UTF-32 LE mark starts with the UTF-16 LE one.
_OTHER_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
               (codecs.BOM_UTF16_BE, "UTF-16"))
MAX_FIELD_CHARS = 64 * 1024


def _bad(message: str, **where: Any) -> InvalidRequest:
    return InvalidRequest(f"invalid catalog: {message}", errors=[{"field": "catalog", **where, "message": message}])


@dataclass
class Catalog:
    """Raw catalog bytes and how to read them; ``rows()`` may be called any number of times."""

    data: bytes
    format: str  # "csv" | "jsonl" | "rows"
    max_rows: int
    inline: list[dict[str, Any]] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, *, filename: str | None = None, format: str | None = None,
                   max_rows: int = 10_000) -> "Catalog":
        fmt = format or ("jsonl" if (filename or "").lower().endswith((".jsonl", ".ndjson", ".json")) else "csv")
        for bom, name in _OTHER_BOMS:
            if data.startswith(bom):
                raise _bad(f"the file starts with a {name} byte-order mark; save it as UTF-8 (CSV UTF-8)", row=0)
        if data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM):]
        return cls(data, fmt, max_rows)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], max_rows: int = 10_000) -> "Catalog":
        return cls(b"", "rows", max_rows, inline=rows)

    # -- reading -----------------------------------------------------------------------------------
    def _lines(self) -> Iterator[tuple[int, str]]:
        """(0-based physical line, text) with UTF-8 checked line by line, so a bad byte names its row."""
        start = 0
        n = 0
        data = self.data
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end + 1
            raw = data[start:end]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _bad(f"line {n + 1} is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}): the file "
                           "mixes encodings; save it as UTF-8", line=n + 1) from None
            yield n, text
            n += 1
            start = end

    def columns(self) -> list[str]:
        """The column names (CSV header; JSONL and inline rows: the first row's keys)."""
        for _row, values in self._rows(header_only=True):
            return list(values)
        return []

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(row number, values) for each data row."""
        return self._rows()

    def _rows(self, header_only: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format == "rows":
            yield from self._checked(enumerate(self.inline or [], 1), header_only)
        elif self.format == "jsonl":
            yield from self._checked(self._jsonl(), header_only)
        elif self.format == "csv":
            yield from self._csv(header_only)
        else:
            raise _bad(f"unknown catalog format {self.format!r}; use csv or jsonl")

    def _checked(self, items, header_only: bool) -> Iterator[tuple[int, dict[str, Any]]]:
        count = 0
        first: list[str] | None = None
        for row, values in items:
            if not isinstance(values, dict):
                raise _bad(f"row {row} is not an object of column: value pairs", row=row)
            count += 1
            if count > self.max_rows:
                raise _bad(f"the catalog has more than {self.max_rows} rows (BATCHRENDER_CAMPAIGN_MAX_ROWS); split it",
                           row=row)
            if first is None:
                first = list(values)
            yield row, values
            if header_only:
                return

    def _jsonl(self) -> Iterator[tuple[int, Any]]:
        for n, line in self._lines():
            if not line.strip():
                continue
            try:
                yield n + 1, json.loads(line)
            except (ValueError, RecursionError) as e:
                raise _bad(f"row {n + 1} is not valid JSON ({e})", row=n + 1) from None

    def _csv(self, header_only: bool) -> Iterator[tuple[int, dict[str, Any]]]:
        text_lines = (line for _n, line in self._lines())
        reader = csv.reader(text_lines, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise _bad(f"the header row is not valid CSV ({e})", row=0) from None
        if not header or not any(h.strip() for h in header):
            raise _bad("the catalog is empty: give a header row of column names, then one row per item", row=0)
        names = [h.strip() for h in header]
        for i, name in enumerate(names):
            if not name:
                raise _bad(f"column {i + 1} of the header has no name", row=0, column=i + 1)
            if names.index(name) != i:
                raise _bad(f"column name {name!r} appears twice in the header", row=0, column=name)
        if header_only:
            yield 0, {name: "" for name in names}
            return
        row = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise _bad(f"row {row + 1} is not valid CSV ({e}); quote fields that hold the delimiter",
                           row=row + 1) from None
            row += 1
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                row -= 1  # blank line
                continue
            if row > self.max_rows:
                raise _bad(f"the catalog has more than {self.max_rows} rows (BATCHRENDER_CAMPAIGN_MAX_ROWS); split it",
                           row=row)
            if len(fields) != len(names):
                what = "a stray delimiter, or a field with the delimiter that is not quoted" \
                    if len(fields) > len(names) else "a missing field"
                raise _bad(f"row {row} has {len(fields)} fields and the header has {len(names)} ({what})", row=row)
            for name, value in zip(names, fields):
                if len(value) > MAX_FIELD_CHARS:
                    raise _bad(f"row {row}, column {name!r} holds more than {MAX_FIELD_CHARS} characters",
                               row=row, column=name)
            yield row, dict(zip(names, fields))


def read_path(path: str, max_rows: int) -> Catalog:
    """A catalog from a local file (the CLI's ``catalog.path``)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _bad(f"cannot read {path}: {e.strerror}") from None
    return Catalog.from_bytes(data, filename=path, max_rows=max_rows)


__all__ = ["Catalog", "read_path"]
