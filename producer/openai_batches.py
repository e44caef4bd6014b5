"""OpenAI-style batches (``input_file_id`` of JSONL requests to ``/v1/images/generations``) as
ordinary batchrender batches, with OpenAI's statuses, ``request_counts`` and output/error files.

A line that does not validate goes to the error file; the valid ones run. When every job has
ended, the first read of the batch writes the output file (one line per succeeded request) and
the error file (invalid lines, refused and failed requests), with ids derived from the batch id
so concurrent readers write the same files once.
"""
from __future__ import annotations

import json
import tempfile
import time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from jobs.errors import InvalidRequest, PermanentError
from jobs.names import batch_key
from jobs.schemas import check_batch_metadata, invalid_from
from jobs.text import refuse_surrogates
from producer.files import Files
from producer.openai_compat import ImageGenerate, images_response, render_request
from producer.submit import reserve_capacity

ENDPOINT = "/v1/images/generations"


class OpenAIBatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(..., max_length=100)
    endpoint: str
    completion_window: str = "24h"
    metadata: Annotated[dict[str, str] | None, AfterValidator(check_batch_metadata)] = None


def _line_error(line: int, custom_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "custom_id": custom_id if isinstance(custom_id, str) else None, "code": code,
            "message": message}


def create(client, tenant: str, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The batch (OpenAI's fields included) and the lines that were refused."""
    try:
        body = OpenAIBatchCreate.model_validate_json(raw)
    except ValidationError as e:
        raise invalid_from(e) from None
    if body.endpoint != ENDPOINT:
        raise InvalidRequest(f"endpoint: {body.endpoint!r} is not supported; batches run {ENDPOINT}",
                             errors=[{"field": "endpoint", "message": f"use {ENDPOINT}"}])
    if body.completion_window != "24h":
        raise InvalidRequest("completion_window: only '24h' is supported",
                             errors=[{"field": "completion_window", "message": "use '24h'"}])
    files = Files(client)
    try:
        source = files.get(tenant, body.input_file_id)
    except PermanentError:
        raise InvalidRequest(f"input_file_id: no file {body.input_file_id!r} (upload it with POST /v1/files)",
                             errors=[{"field": "input_file_id", "message": "unknown file"}]) from None
    if source.purpose == "campaign":  # a catalog is no list of requests
        raise InvalidRequest(f"input_file_id: {body.input_file_id!r} was uploaded with purpose 'campaign'; a batch "
                             "reads a file uploaded with purpose 'batch'",
                             errors=[{"field": "input_file_id", "message": "purpose is 'campaign', not 'batch'"}])
    text = files.content(source).decode("utf-8", "replace")
    # A lone surrogate ("\ud800") in any line refuses the whole batch, naming line and field,
    # before anything is created: it could be neither stored nor echoed in the error file.
    refuse_surrogates(text, jsonl=True, what=f"input_file_id {body.input_file_id}")
    lines = text.splitlines()
    limit = client.settings.max_batch_jobs
    if len([x for x in lines if x.strip()]) > limit:
        raise InvalidRequest(f"input_file_id: the file holds more than {limit} requests (BATCHRENDER_MAX_BATCH_JOBS)",
                             errors=[{"field": "input_file_id", "message": f"at most {limit} requests"}])
    # OpenAI batches carry no webhook: the tenant's default one (tenants set-webhook) gets
    # batch.completed, signed like every event.
    from producer.tenants import Tenants

    hook = Tenants(client.store.r, client.settings).webhook(tenant)
    good, errors, seen = [], [], set()
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except (ValueError, RecursionError) as e:
            errors.append(_line_error(number, None, "invalid_json", str(e)))
            continue
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        try:
            if not isinstance(item, dict) or not isinstance(custom_id, str):
                raise InvalidRequest("each line needs custom_id, method, url and body")
            if item.get("method", "POST") != "POST" or item.get("url") != ENDPOINT:
                raise InvalidRequest(f"url must be {ENDPOINT} with method POST")
            if custom_id in seen:
                raise InvalidRequest(f"custom_id {custom_id!r} is used by an earlier line")
            req = render_request(client, ImageGenerate.model_validate(item.get("body") or {}))
            req = req.model_copy(update={"custom_id": custom_id, **({"webhook": hook, "webhook_events_filter": [
                "batch.completed"]} if hook else {})})
            type(req).parse(req.model_dump())  # custom_id must suit storage keys too
        except ValidationError as e:
            errors.append(_line_error(number, custom_id, "invalid_request", invalid_from(e).message))
            continue
        except InvalidRequest as e:
            errors.append(_line_error(number, custom_id, e.code, e.message))
            continue
        seen.add(custom_id)
        good.append((number, item.get("body") or {}, req))
    meta = {"openai": {"endpoint": ENDPOINT, "input_file_id": source.id, "completion_window": "24h",
                       "metadata": body.metadata, "errors": errors, "lines": len(good) + len(errors),
                       "bodies": {req.custom_id: b for _, b, req in good}}}
    if good:
        reserve_capacity(client, tenant, len(good))
    sub = client.submit_batch([req for _, _, req in good], tenant=tenant, meta=meta, reserved=len(good))
    for index, e in sub.errors:
        number, _, req = good[index]
        errors.append(_line_error(number, req.custom_id, e.code, e.message))
    if sub.errors:
        client.store.r.hset(batch_key(sub.batch_id), "meta", json.dumps({**meta, "openai": {**meta["openai"],
                                                                                          "errors": errors}}))
    return client.store.batch_info(sub.batch_id), sorted(errors, key=lambda e: e["line"])


def cancel(client, batch_id: str) -> dict[str, Any]:
    client.store.r.hset(batch_key(batch_id), "cancel_requested", repr(time.time()))
    client.cancel_batch(batch_id)
    return view(client, client.store.batch_info(batch_id))


def view(client, info: dict[str, Any], base: str | None = None) -> dict[str, Any]:
    """OpenAI's Batch object for a batch made here (added to the native fields)."""
    oa = (info.get("meta") or {}).get("openai")
    if not oa:
        return info
    h = client.store.r.hgetall(batch_key(info["id"]))
    counts = info["counts"]
    failed = counts.get("failed", 0) + counts.get("blocked", 0) + counts.get("canceled", 0) + len(oa["errors"])
    done = info["done"] >= info["total"]
    cancel_requested = bool(h.get("cancel_requested"))
    out = {"id": info["id"], "object": "batch", "endpoint": oa["endpoint"], "input_file_id": oa["input_file_id"],
           "completion_window": oa["completion_window"], "metadata": oa.get("metadata"),
           "created_at": int(info["created_at"]), "in_progress_at": int(info["created_at"]),
           "request_counts": {"total": oa["lines"], "completed": counts.get("succeeded", 0), "failed": failed},
           "output_file_id": None, "error_file_id": None, "errors": None,
           "expires_at": int(info["created_at"]) + 24 * 3600}
    if not done:
        if cancel_requested:
            return {**info, **out, "status": "cancelling"}
        return {**info, **out, "status": "in_progress", **expected_completion(client, info["id"])}
    output_id, error_id, finished = finalize(client, info, oa, base)
    ended = "cancelled" if cancel_requested else "completed"
    return {**info, **out, "status": ended, "output_file_id": output_id, "error_file_id": error_id,
            "finalizing_at": int(finished), f"{ended}_at": int(finished)}


def expected_completion(client, batch_id: str) -> dict[str, Any]:
    """Extension fields of an in-progress batch (the SDK keeps fields it does not know):
    ``expected_completion_at``, Unix seconds, when its last request should have finished (the
    ETA of its job that renders last, as ``GET /v1/jobs/{id}`` gives it: jobs/batch_eta.py), or
    null; ``eta_basis``, what that rests on or why there is none."""
    from jobs.batch_eta import batch_eta, completion_at

    try:
        eta = batch_eta(client.store.r, client.settings, client.store.batch_job_ids(batch_id))
    except Exception as e:  # noqa: BLE001 - Redis away: the rest of the batch still answers
        return {"expected_completion_at": None, "eta_basis": f"unavailable: {type(e).__name__}"}
    return {"expected_completion_at": completion_at(eta), "eta_basis": eta["eta_basis"]}


def finalize(client, info: dict[str, Any], oa: dict[str, Any], base: str | None) -> tuple[str | None, str | None, float]:
    """Write the output and error files once (ids derived from the batch id)."""
    files, tenant, batch_id = Files(client), info["tenant"], info["id"]
    output_id, error_id = f"file-{batch_id}-output", f"file-{batch_id}-errors"
    finished = float(client.store.r.hget(batch_key(batch_id), "finished_at") or 0)
    if not finished:
        # Each line is written to a temporary file as it is made and the files are stored from
        # disk: with b64_json every image is in the output file, which must never be whole in
        # memory (one job's images at a time are).
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            def write(fh, row: dict[str, Any]) -> None:
                fh.write(json.dumps(row).encode())
                fh.write(b"\n")

            for e in oa["errors"]:
                write(err_file, {"id": f"batch_req_line{e['line']}", "custom_id": e["custom_id"], "response": None,
                                 "error": {"code": e["code"], "message": e["message"], "line": e["line"]}})
            for rec in client.batch_results(batch_id):  # records only: small
                body = ImageGenerate.model_validate(oa["bodies"].get(rec.custom_id) or {"prompt": "-"})
                try:
                    answer = {"status_code": 200, "request_id": rec.job_id,
                              "body": images_response(client, rec, body, base)}
                    write(out_file, {"id": f"batch_req_{rec.job_id}", "custom_id": rec.custom_id,
                                     "response": answer, "error": None})
                except PermanentError as e:
                    answer = {"status_code": 400, "request_id": rec.job_id,
                              "body": {"error": {"message": e.message, "type": "invalid_request_error",
                                                 "param": None, "code": e.code}}}
                    write(err_file, {"id": f"batch_req_{rec.job_id}", "custom_id": rec.custom_id,
                                     "response": answer, "error": None})
                del answer  # this job's images go before the next job's are read
            for file_id, fh, name in ((output_id, out_file, "output"), (error_id, err_file, "errors")):
                if fh.tell():
                    files.create(tenant, f"{batch_id}_{name}.jsonl", "batch_output", fh, file_id=file_id)
        finished = time.time()
        client.store.r.hsetnx(batch_key(batch_id), "finished_at", repr(finished))
        finished = float(client.store.r.hget(batch_key(batch_id), "finished_at"))
    return (output_id if files.exists(output_id) else None), (error_id if files.exists(error_id) else None), finished
