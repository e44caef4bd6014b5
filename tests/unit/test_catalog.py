"""Catalog reading (producer/catalog.py): rows streamed, every problem named by row and column."""
from __future__ import annotations

import codecs

import pytest

from jobs.errors import InvalidRequest
from producer.catalog import Catalog


def rows(data: bytes, **kw):
    return list(Catalog.from_bytes(data, **kw).rows())


def test_csv_rows_are_numbered_from_one_and_a_utf8_bom_is_skipped():
    data = codecs.BOM_UTF8 + "sku,colour\nm1,red\n\nm2,\"blue, dark\"\n".encode()
    assert rows(data) == [(1, {"sku": "m1", "colour": "red"}), (2, {"sku": "m2", "colour": "blue, dark"})]
    assert Catalog.from_bytes(data).columns() == ["sku", "colour"]


@pytest.mark.parametrize("data, expect", [
    ("sku,colour\nm1,red,extra\n".encode(), "row 1 has 3 fields and the header has 2 (a stray delimiter"),
    ("sku,colour\nm1,red\nm2\n".encode(), "row 2 has 1 fields and the header has 2 (a missing field)"),
    ("sku,colour\nm1,red\nm2,bl\xe9u\n".encode("latin-1"), "line 3 is not UTF-8"),
    (codecs.BOM_UTF16_LE + "sku,colour\n".encode("utf-16-le"), "UTF-16 byte-order mark"),
    ("sku,sku\nm1,m2\n".encode(), "column name 'sku' appears twice"),
    (b"", "the catalog is empty"),
])
def test_bad_csv_is_named_by_row(data, expect):
    with pytest.raises(InvalidRequest) as e:
        rows(data)
    assert expect in e.value.message


def test_more_rows_than_the_limit_is_refused_naming_the_limit():
    data = b"sku\n" + b"".join(b"m%d\n" % i for i in range(6))
    with pytest.raises(InvalidRequest, match="more than 5 rows"):
        rows(data, max_rows=5)
    assert len(rows(data, max_rows=6)) == 6


def test_jsonl_rows_and_their_errors():
    assert rows(b'{"sku": "m1", "seed": 4}\n\n{"sku": "m2"}\n', format="jsonl") == [
        (1, {"sku": "m1", "seed": 4}), (3, {"sku": "m2"})]
    with pytest.raises(InvalidRequest, match="row 2 is not valid JSON"):
        rows(b'{"sku": "m1"}\n{nope\n', format="jsonl")
    with pytest.raises(InvalidRequest, match="row 1 is not an object"):
        rows(b'[1, 2]\n', format="jsonl")


def test_rows_can_be_read_again():
    cat = Catalog.from_bytes(b"sku\nm1\nm2\n")
    assert list(cat.rows()) == list(cat.rows())
