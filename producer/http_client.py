"""A Python client for the HTTP API (httpx): the same calls as ``producer.client.Client``, over HTTP.

    from producer.http_client import HttpClient, ApiError

    with HttpClient("http://127.0.0.1:8000", api_key) as api:
        job = api.create_job({"prompt": "a red bicycle"}, idempotency_key="order-17", wait=10)
        done = api.wait_job(job["id"], timeout=120)

Every non-2xx answer raises ``ApiError(status, code, message, body)`` with the API's stable error
code. The API key never appears in a repr, a log line or an exception.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

import httpx

TERMINAL = frozenset({"succeeded", "failed", "blocked", "canceled"})


class ApiError(Exception):
    """A non-2xx answer: HTTP ``status``, the API's error ``code`` and ``message``, the parsed ``body``."""

    def __init__(self, status: int, code: str, message: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body
        self.headers = headers or {}

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (429, 503), when it said."""
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code, message = str(error.get("code", "http_error")), str(error.get("message", ""))
        else:
            code, message = "http_error", (response.text[:200] or response.reason_phrase)
        return cls(response.status_code, code, message, body, {k.lower(): v for k, v in response.headers.items()})


class HttpClient:
    """Submit, watch and cancel jobs and batches of one tenant over the HTTP API."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}",
                                           "User-Agent": "batchrender-http-client/1"})

    def __repr__(self) -> str:  # never the key
        return f"HttpClient(base_url={self.base_url!r})"

    # -- plumbing --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        response = self._http.request(method, path, **kw)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs ------------------------------------------------------------------------------------
    def create_job(self, request: dict[str, Any], idempotency_key: str | None = None,
                   wait: int | None = None) -> dict[str, Any]:
        """Queue one render. ``wait``: seconds the server may hold the answer for the job to end.

        A moderation block raises ``ApiError`` with code ``moderation_blocked`` (the job id, stage
        and categories are in ``body["error"]``).
        """
        headers: dict[str, str] = {}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        timeout = self._http.timeout
        if wait:
            headers["Prefer"] = f"wait={int(wait)}"
            timeout = httpx.Timeout((self._http.timeout.read or 30.0) + int(wait))
        return self._request("POST", "/v1/jobs", json=request, headers=headers, timeout=timeout).json()

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{_seg(job_id)}").json()

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{_seg(job_id)}/cancel").json()

    def wait_job(self, job_id: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Poll until the job ends; raises TimeoutError (the job keeps running) after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout}s")
            time.sleep(poll)

    # -- batches ---------------------------------------------------------------------------------
    def create_batch(self, requests: Iterable[dict[str, Any]] | str, *, webhook: str | None = None,
                     metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """A batch from request dicts (sent as JSON) or JSONL text (sent as is, one request per line).

        The answer lists refused items under ``errors`` (with line numbers); the rest are queued.
        """
        if isinstance(requests, str):
            if webhook or metadata:
                raise ValueError("webhook/metadata go inside each JSONL line; pass a list to set them per batch")
            return self._request("POST", "/v1/batches", content=requests.encode(),
                                 headers={"Content-Type": "application/jsonl"}).json()
        body: dict[str, Any] = {"requests": list(requests)}
        if webhook:
            body["webhook"] = webhook
        if metadata:
            body["metadata"] = metadata
        return self._request("POST", "/v1/batches", json=body).json()

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/batches/{_seg(batch_id)}").json()

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """One dict per job (``custom_id``, ``job_id``, ``status``, ``outputs``, ``error``)."""
        text = self._request("GET", f"/v1/batches/{_seg(batch_id)}/results").text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/batches/{_seg(batch_id)}/cancel").json()

    # -- webhooks --------------------------------------------------------------------------------
    def deliveries(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Webhook events (of one job, or all of the tenant's) with their delivery attempts."""
        params = {"job_id": job_id} if job_id else None
        return self._request("GET", "/v1/deliveries", params=params).json()["data"]


def _seg(value: str) -> str:
    """An id as one path segment (an id with '/' must not reach another route)."""
    from urllib.parse import quote

    return quote(value, safe="")
