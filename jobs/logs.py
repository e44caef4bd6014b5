"""Process logging: plain text by default, one JSON object per line with ``BATCHRENDER_LOG_FORMAT=json``.

JSON lines carry ``ts``, ``level``, ``logger``, ``message``, ``process`` and, whenever the line is
about jobs, ``job_id`` (one job) or ``job_ids`` (a batched call): code that works on a job runs
inside ``job_context(job_id)``, and every line logged meanwhile, by any module or library, gets
the id without passing it around. Context is per thread (post-processing threads bind their own).
Secrets never reach log lines in the first place (``Settings`` masks them; URLs are redacted).
"""
from __future__ import annotations

import contextvars
import json
import logging
import time
from contextlib import contextmanager
from typing import Iterator

_JOBS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("batchrender_jobs", default=())
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def job_context(*job_ids: str) -> Iterator[None]:
    """Lines logged inside carry these job ids."""
    token = _JOBS.set(tuple(job_ids))
    try:
        yield
    finally:
        _JOBS.reset(token)


def current_jobs() -> tuple[str, ...]:
    return _JOBS.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        jobs = getattr(record, "job_ids", None) or _JOBS.get() or _celery_task_id(record)
        if len(jobs) == 1:
            line["job_id"] = jobs[0]
        elif jobs:
            line["job_ids"] = list(jobs)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _celery_task_id(record: logging.LogRecord) -> tuple[str, ...]:
    """Celery's own task lines ("received", "succeeded") name the task id in their args; render
    task ids are job ids."""
    args = record.args
    if isinstance(args, dict) and str(args.get("id", "")).startswith("job_"):
        return (str(args["id"]),)
    return ()


class _TextWithJobs(logging.Formatter):
    """Text lines get ``[job …]`` after the logger name while a job context is set."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        jobs = _JOBS.get()
        if jobs:
            head, sep, rest = text.partition(": ")
            ids = jobs[0] if len(jobs) == 1 else ",".join(jobs[:4]) + ("…" if len(jobs) > 4 else "")
            text = f"{head} [{ids}]{sep}{rest}"
        return text


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Set the root logger's format for this process (every handler it has, or one on stderr)."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else _TextWithJobs(TEXT_FORMAT)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(level)


def celery_json_hook(fmt: str):
    """A ``after_setup_logger``/``after_setup_task_logger`` receiver making Celery's own lines JSON too."""
    def hook(logger=None, **_kwargs) -> None:
        if fmt != "json" or logger is None:
            return
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())
    return hook
