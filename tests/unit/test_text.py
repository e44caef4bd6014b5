"""jobs/text.py: lone surrogates found in raw JSON and JSONL, naming line and field."""
import pytest

from jobs.errors import InvalidRequest
from jobs.text import refuse_surrogates, surrogate_problem


def test_a_jsonl_line_with_a_lone_surrogate_is_named_by_line_and_field():
    raw = b'{"custom_id": "ok"}\n\n{"custom_id": "a\\ud800", "body": {"prompt": "x"}}\n'
    problem = surrogate_problem(raw, jsonl=True)
    assert problem["line"] == 3 and problem["field"] == "custom_id" and "U+D800" in problem["message"]
    with pytest.raises(InvalidRequest, match=r"the file: line 3: custom_id contains a lone surrogate"):
        refuse_surrogates(raw, jsonl=True, what="the file")


@pytest.mark.parametrize("raw,field", [
    ('{"a": {"b": ["x", "\\udfff"]}}', "a.b[1]"),
    ('{"k\\ud800": 1}', "'k\\ud800'"),
    ('"\\ud800"', "request"),
])
def test_a_json_body_names_the_path(raw, field):
    assert surrogate_problem(raw)["field"] == field


@pytest.mark.parametrize("raw", [
    b'{"prompt": "plain text"}', b'{"prompt": "\\ud83d\\ude00"}', b'{"prompt": "\\\\ud800"}',
    b'{"prompt": "\\ud800', b"",
])
def test_text_pairs_literal_backslashes_and_broken_json_are_not_judged(raw):
    assert surrogate_problem(raw) is None and surrogate_problem(raw, jsonl=True) is None

