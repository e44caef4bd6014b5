"""A real HTTP classifier service on 127.0.0.1 for the ``moderation_service`` stage's tests.

It speaks both wire formats the way the real services do:

* ``POST /v1/moderations`` (OpenAI omni-moderation): ``{"model", "input"}`` with ``input`` a string,
  a list of strings or a list of ``{"type": "text"|"image_url", ...}`` parts; one result per
  string, or one result for a list of parts; every result has ``flagged``, ``categories``,
  ``category_scores`` and ``category_applied_input_types`` for all 13 categories.
* ``POST /v1/chat/completions`` (Llama Guard served by vLLM/TGI): a ``chat.completion`` whose
  message content is ``safe`` or ``unsafe\\nS1,S10``.

A malformed request is answered 400 with OpenAI's error shape, so a stage that sends the wrong
shape fails its tests. Answers come from ``words`` (a word in the text -> scores or codes) unless
a scripted answer is queued (``script``): a status, a raw body, a JSON body, a delay, or a hold
until ``release`` is set. ``requests`` records every request (path, headers, JSON body) and
``max_in_flight`` the most requests handled at once.
"""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                     "sexual/minors", "violence", "violence/graphic")
#: Categories omni-moderation also scores images for (the rest are text only).
IMAGE_CATEGORIES = ("self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "violence",
                    "violence/graphic")
BASELINE = 1.2e-6


@dataclass
class Scripted:
    """One scripted answer: ``status``/``body``/``json`` replace the answer; ``delay_s`` waits first;
    ``hold`` waits until the server's ``release`` event is set."""

    status: int = 200
    body: bytes | None = None
    json: Any = None
    delay_s: float = 0.0
    hold: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class FakeModerationService:
    def __init__(self, port: int = 0) -> None:
        self.words: dict[str, Any] = {}
        self.script: deque[Scripted] = deque()
        #: Answer every request with this (after the script runs out), e.g. ``Scripted(status=503)``.
        self.always: Scripted | None = None
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Answer at once: without it, Nagle's algorithm and the client's delayed ACK hold
                # a response split over two writes for ~40 ms (a real server's latency, not ours).
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "FakeModerationService":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeModerationService":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def moderations_url(self) -> str:
        return f"{self.base}/v1/moderations"

    @property
    def chat_url(self) -> str:
        return f"{self.base}/v1/chat/completions"

    def seen(self, path: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if path is None or r["path"] == path]

    # -- one request ---------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.popleft() if self.script else self.always
        try:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            with self._lock:
                self.requests.append({"path": h.path, "headers": dict(h.headers), "json": body})
            if scripted is not None:
                if scripted.hold:
                    self.release.wait(60)
                if scripted.delay_s:
                    self._stop.wait(scripted.delay_s)
                if scripted.body is not None or scripted.json is not None or scripted.status != 200:
                    data = scripted.body if scripted.body is not None else json.dumps(scripted.json).encode() \
                        if scripted.json is not None else b""
                    return self._send(h, scripted.status, data, scripted.headers)
            if h.path == "/v1/moderations":
                status, answer = self._moderations(body)
            elif h.path == "/v1/chat/completions":
                status, answer = self._chat(body)
            else:
                status, answer = 404, _error(f"Unknown request URL: POST {h.path}", "invalid_request_error")
            self._send(h, status, json.dumps(answer).encode())
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _lookup(self, text: str) -> Any:
        low = text.lower()
        return [v for w, v in self.words.items() if w.lower() in low]

    # -- OpenAI /v1/moderations ----------------------------------------------------------------------
    def _moderations(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or "input" not in body:
            return 400, _error("'input' is a required property", "invalid_request_error", "input")
        model = body.get("model", "omni-moderation-latest")
        if not isinstance(model, str):
            return 400, _error("'model' must be a string", "invalid_request_error", "model")
        inp = body["input"]
        groups: list[list[tuple[str, str]]]  # one result per group: (kind, text or image url)
        if isinstance(inp, str):
            groups = [[("text", inp)]]
        elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
            groups = [[("text", x)] for x in inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, dict) for x in inp):
            parts = []
            for x in inp:
                if x.get("type") == "text" and isinstance(x.get("text"), str):
                    parts.append(("text", x["text"]))
                elif x.get("type") == "image_url" and isinstance(x.get("image_url"), dict) \
                        and isinstance(x["image_url"].get("url"), str):
                    parts.append(("image", x["image_url"]["url"]))
                else:
                    return 400, _error(f"Invalid input part: {json.dumps(x)[:80]}", "invalid_request_error", "input")
            if sum(k == "image" for k, _ in parts) > 1:
                return 400, _error("At most one image per request", "invalid_request_error", "input")
            groups = [parts]
        else:
            return 400, _error("Invalid type for 'input'", "invalid_request_error", "input")
        results = []
        for parts in groups:
            scores = {c: BASELINE for c in OPENAI_CATEGORIES}
            for kind, value in parts:
                for hit in self._lookup(value):
                    for c, s in hit.items():
                        scores[c] = max(scores[c], s)
            kinds = sorted({k for k, _ in parts})
            applied = {c: [k for k in kinds if k == "text" or c in IMAGE_CATEGORIES] for c in OPENAI_CATEGORIES}
            flags = {c: s >= 0.5 for c, s in scores.items()}
            results.append({"flagged": any(flags.values()), "categories": flags, "category_scores": scores,
                            "category_applied_input_types": applied})
        return 200, {"id": f"modr-{uuid.uuid4().hex[:24]}", "model": model, "results": results}

    # -- chat completions (Llama Guard) --------------------------------------------------------------
    def _chat(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return 400, _error("'model' is a required property", "invalid_request_error", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") for m in messages):
            return 400, _error("'messages' must be a non-empty list of messages", "invalid_request_error", "messages")
        last = messages[-1]
        content = last.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in ("text", "image_url")
                                               for p in content):
            text = " ".join(p.get("text", "") for p in content if p["type"] == "text") + \
                " ".join(p["image_url"]["url"] for p in content if p["type"] == "image_url")
        else:
            return 400, _error("message content must be a string or a list of parts", "invalid_request_error",
                               "messages")
        codes: list[str] = []
        for hit in self._lookup(text):
            codes += [c for c in hit if c not in codes]
        answer = "safe" if not codes else "unsafe\n" + ",".join(codes)
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "tool_calls": []},
                         "logprobs": None, "finish_reason": "stop", "stop_reason": None}],
            "usage": {"prompt_tokens": 200, "total_tokens": 203, "completion_tokens": 3},
        }


def _error(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def main() -> None:
    """``python -m tests.moderation_service_fake --port N``: serve until killed (the benchmark
    runs the service in its own process so it does not share the measuring process's GIL)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    fake = FakeModerationService(args.port).start()
    print(f"ready {fake.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
