"""The prompt rules (``safety.prompt_rules``) in worker processes, for a campaign plan's thousands
of prompts (issue 23).

A plan moderates every cell's prompt before anything is queued. The rules are pure Python and
hold the GIL, so an API process checks one prompt at a time on one core, however many it has.
``PromptRulesPool`` keeps worker processes, each with the same policy compiled, and a plan hands
them its prompts a chunk at a time while it validates and prices the next chunk itself. Only the
rules' verdicts come back: the chain (levels, the classifier service, audit, metrics) still
decides in the API process, as for any prompt (``ModerationChain.check_prompt(rules_verdicts=)``).

The pool never makes a plan wait for it: it starts in the background, a chunk goes to a worker
only when one is ready and idle, and the chunk of a worker that dies, or does not answer within
``answer_timeout_s``, is checked in the API process. A worker whose policy is not the one the API
process loaded (the file changed between the two loads) is never used.

Protocol, JSON lines over the worker's stdin and stdout (never pickle)::

    parent -> worker, first line   {"v": 1, "policy_file": path or null}
    worker -> parent               {"v": 1, "ready": true, "policy": fingerprint}
    parent -> worker               {"prompts": [[prompt, negative prompt or null], ...]}
    worker -> parent               {"verdicts": [null or [verdict, ...], ...]}

Answers come in the order of the questions. ``null`` stands for the one ``allow`` verdict most
prompts get; a verdict is ``[stage, category, score, action, policy version, severity, rule]``. A worker exits when its stdin
closes: when the pool is closed, or when its parent is gone (killed included).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Sequence

from safety.verdict import Action, Verdict

log = logging.getLogger(__name__)

PROTOCOL = 1
#: The package root, put on the worker's import path (an API run from a checkout, not installed).
_ROOT = str(Path(__file__).resolve().parents[1])


class WorkerGone(RuntimeError):
    """The worker died (or was stopped) before answering."""


def _verdict_json(v: Verdict) -> list[Any]:
    return [v.stage, v.category, v.score, v.action.value, v.policy_version, v.severity, v.rule]


def _verdict_from(x: list[Any]) -> Verdict:
    stage, category, score, action, version, severity, rule = x
    return Verdict(stage, category, float(score), Action(action), version, int(severity), rule)


class _Worker:
    """One worker process, and the threads that write its questions and read its answers: a
    caller never blocks on a pipe, whatever the worker does."""

    def __init__(self, policy_file: str | None, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "safety.prompt_pool"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8")
        self.policy: str | None = None
        self.ready = threading.Event()
        self.gone = False
        self._lock = threading.Lock()
        self._waiting: deque[Future] = deque()
        self._outbox: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._outbox.put(json.dumps({"v": PROTOCOL, "policy_file": policy_file}))
        threading.Thread(target=self._write, name="prompt-rules-writer", daemon=True).start()
        threading.Thread(target=self._read, name="prompt-rules-reader", daemon=True).start()

    @property
    def waiting(self) -> int:
        """Questions not answered yet."""
        return len(self._waiting)

    def ask(self, msg: dict[str, Any]) -> Future:
        fut: Future = Future()
        with self._lock:
            if self.gone:
                fut.set_exception(WorkerGone("the worker has exited"))
                return fut
            self._waiting.append(fut)
            self._outbox.put(json.dumps(msg, ensure_ascii=True))
        return fut

    def _write(self) -> None:
        pipe = self.proc.stdin
        assert pipe is not None
        try:
            while (line := self._outbox.get()) is not None:
                pipe.write(line + "\n")
                pipe.flush()
        except (OSError, ValueError):  # the worker is gone: the reader sees it too
            pass
        finally:
            try:
                pipe.close()  # the worker's signal to exit (after the questions already sent)
            except (OSError, ValueError):
                pass

    def _read(self) -> None:
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                msg = json.loads(line)
                if msg.get("ready"):
                    self.policy = msg.get("policy")
                    self.ready.set()
                    continue
                with self._lock:
                    fut = self._waiting.popleft() if self._waiting else None
                if fut is not None:
                    fut.set_result(msg)
        except (OSError, ValueError):
            pass
        finally:
            started = self.ready.is_set()
            with self._lock:
                self._gone()
            try:  # reaped: its stdout is closed, so it is exiting
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            if not started:
                log.warning("a prompt rules worker exited before it was ready (exit code %s; its stderr says "
                            "why): prompts are checked in this process", code)

    def _gone(self) -> None:
        """Called with the lock held: every question still waiting fails, and the writer stops."""
        self.gone = True
        self.ready.set()
        self._outbox.put(None)
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(WorkerGone("the worker exited before answering"))

    def stop(self, wait_s: float = 2.0) -> None:
        self._outbox.put(None)  # the writer closes the worker's stdin: it exits
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(wait_s)
        with self._lock:
            self._gone()


class PromptRulesPool:
    """``workers`` processes that check prompts against the policy at ``policy_file``;
    ``fingerprint`` is ``policy_fingerprint`` of the policy the caller's chain loaded."""

    #: Chunks one worker may have waiting: one it works on, two ready to start. The plan's process
    #: checks a chunk itself only when every worker has this many; it has validation, content keys
    #: and the cache of every cell to do besides, so the workers take most of the prompts (with two,
    #: it checked a fifth of them on a 2-core machine and was the one that took longest).
    QUEUE = 3

    def __init__(self, policy_file: str | Path | None, fingerprint: str, workers: int,
                 answer_timeout_s: float = 60.0) -> None:
        self.policy_file = str(policy_file) if policy_file else None
        self.fingerprint = fingerprint
        self.size = workers
        self.answer_timeout_s = answer_timeout_s
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._mismatch_logged = False

    def start(self) -> None:
        """Start the workers that are not running (in the background: nothing waits for them)."""
        with self._lock:
            if self._closed:
                return
            self._workers = [w for w in self._workers if not w.gone]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
            while len(self._workers) < self.size:
                try:
                    self._workers.append(_Worker(self.policy_file, env))
                except OSError as e:
                    log.warning("prompt rules worker not started (%s): prompts are checked in this process", e)
                    return

    def _pick(self) -> _Worker | None:
        """The ready worker with the fewest chunks waiting (at most ``QUEUE`` each), if any."""
        best = None
        with self._lock:
            for w in self._workers:
                if not w.ready.is_set() or w.gone or w.waiting >= self.QUEUE:
                    continue
                if w.policy != self.fingerprint:
                    if not self._mismatch_logged:
                        self._mismatch_logged = True
                        log.warning("a prompt rules worker loaded another policy than this process (the policy "
                                    "file changed since): its prompts are checked in this process")
                    continue
                if best is None or w.waiting < best.waiting:
                    best = w
        return best

    def submit(self, prompts: Sequence[tuple[str, str | None]]) -> "Ticket | None":
        """Hand ``prompts`` to a worker; None when none is ready or all have ``QUEUE`` chunks waiting
        (check them here instead)."""
        w = self._pick()
        if w is None or not prompts:
            return None
        return Ticket(w, w.ask({"prompts": [list(p) for p in prompts]}), len(prompts), self.answer_timeout_s)

    @property
    def running(self) -> int:
        return sum(1 for w in self._workers if not w.gone)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for w in workers:
            w.stop()


class Ticket:
    """A chunk handed to a worker."""

    def __init__(self, worker: _Worker, future: Future, n: int, timeout: float) -> None:
        self._worker, self._future, self._n, self._timeout = worker, future, n, timeout

    def verdicts(self, allow: Verdict) -> list[list[Verdict]] | None:
        """The verdicts of each prompt (``allow`` standing for the plain allow), or None when the
        worker died or did not answer in time (then the caller checks the chunk itself)."""
        try:
            msg = self._future.result(self._timeout)
        except WorkerGone:
            return None
        except TimeoutError:
            log.warning("a prompt rules worker did not answer in %.0f s: stopped", self._timeout)
            self._worker.proc.kill()
            return None
        out = msg.get("verdicts")
        if not isinstance(out, list) or len(out) != self._n:
            return None
        return [[allow] if vs is None else [_verdict_from(v) for v in vs] for vs in out]


# -- the worker process -------------------------------------------------------------------------
def _serve(stdin, stdout) -> None:
    from safety.policy import load_policy, policy_fingerprint
    from safety.prompt_rules import PromptRules

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the terminal is the parent's to act on
    first = json.loads(stdin.readline() or "{}")
    if first.get("v") != PROTOCOL:
        return
    policy = load_policy(first.get("policy_file"))
    rules = PromptRules(policy)
    allow = rules.allow
    stdout.write(json.dumps({"v": PROTOCOL, "ready": True, "policy": policy_fingerprint(policy)}) + "\n")
    stdout.flush()
    for line in stdin:
        msg = json.loads(line)
        out = []
        for prompt, negative in msg["prompts"]:
            verdicts = rules.check(prompt, negative)
            out.append(None if verdicts == [allow] else [_verdict_json(v) for v in verdicts])
        stdout.write(json.dumps({"verdicts": out}, ensure_ascii=True) + "\n")
        stdout.flush()


if __name__ == "__main__":
    try:
        _serve(sys.stdin, sys.stdout)
    except BrokenPipeError:  # the parent is gone
        pass
