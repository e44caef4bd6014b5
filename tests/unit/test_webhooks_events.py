"""Event envelope, deterministic ids and the event filter."""
from __future__ import annotations

import json

import pytest

from jobs.errors import InvalidRequest
from webhooks import events as ev


def test_same_event_gets_same_id_and_different_events_do_not() -> None:
    a = ev.event_id("job1", ev.JOB_SUCCEEDED)
    assert a == ev.event_id("job1", ev.JOB_SUCCEEDED) and a.startswith("evt_")
    assert a != ev.event_id("job1", ev.JOB_FAILED) != ev.event_id("job2", ev.JOB_FAILED)
    assert ev.event_id("job1", ev.JOB_PROGRESS, 3) != ev.event_id("job1", ev.JOB_PROGRESS, 4)


def test_progress_needs_a_step_and_batch_events_need_a_batch() -> None:
    with pytest.raises(ValueError):
        ev.event_id("job1", ev.JOB_PROGRESS)
    with pytest.raises(ValueError, match="batch_id"):
        ev.subject_of(ev.BATCH_COMPLETED, "job1", None)


def test_envelope_is_versioned_json() -> None:
    body = ev.envelope(ev.JOB_FAILED, ev.job_finished("j", "failed", error={"code": "x"}))
    assert json.loads(json.dumps(body)) == body
    assert body["version"] == 1 and body["type"] == "job.failed" and body["timestamp"].endswith("Z")
    assert body["data"]["error"] == {"code": "x"}


def test_default_filter_is_everything_but_progress() -> None:
    assert ev.parse_event_filter(None) == set(ev.EVENT_TYPES) - {ev.JOB_PROGRESS}
    assert ev.parse_event_filter(["job.progress"]) == {"job.progress"}


def test_unknown_filter_value_names_the_allowed_ones() -> None:
    with pytest.raises(InvalidRequest) as e:
        ev.parse_event_filter(["job.completed"])
    assert "'job.completed'" in e.value.message and "job.succeeded" in e.value.message
    assert e.value.errors[0]["field"] == "webhook_events_filter"
    with pytest.raises(InvalidRequest):
        ev.parse_event_filter("job.started")
