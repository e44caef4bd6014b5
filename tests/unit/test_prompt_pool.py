"""The policy's rules in worker processes (safety.prompt_pool): a campaign plan hands them its
prompts (issue 23). Real worker processes: what comes back must be what the rules give in this
process, a worker that dies or loads another policy is never trusted, and none outlives its
parent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safety.chain import ModerationChain
from safety.policy import load_policy, policy_fingerprint
from safety.prompt_pool import PromptRulesPool
from safety.prompt_rules import PromptRules
from safety.verdict import Action, Verdict

DATA = Path(__file__).resolve().parents[1] / "data" / "moderation"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rules() -> PromptRules:
    return PromptRules(load_policy())


def ready(pool: PromptRulesPool, timeout: float = 180.0):
    """The pool's first worker once it has loaded the policy (a bound for a wedged start, not a
    measurement)."""
    pool.start()
    w = pool._workers[0]
    assert w.ready.wait(timeout) and not w.gone, "the worker did not start"
    return w


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie (our own child not reaped yet) has exited too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def wait_until(pred, timeout: float = 120.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_a_worker_answers_what_the_rules_give_in_this_process(rules):
    prompts = []
    for f in sorted(DATA.glob("*.jsonl")):
        prompts += [json.loads(line)["prompt"] for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts += [f"a red ceramic mug model s1x{i:06d}, studio light, product photo" for i in range(300)]
    pairs = [(p, None if i % 3 else "text, watermark") for i, p in enumerate(prompts)]
    pool = PromptRulesPool(None, policy_fingerprint(rules.policy), workers=1)
    try:
        ready(pool)
        got = []
        for i in range(0, len(pairs), 256):
            ticket = pool.submit(pairs[i:i + 256])
            assert ticket is not None
            got += ticket.verdicts(rules.allow)
    finally:
        pool.close()
    want = [rules.check(p, n) for p, n in pairs]
    assert got == want
    blocked = sum(any(v.action is Action.BLOCK for v in vs) for vs in want)
    assert blocked > 500 and sum(vs == [rules.allow] for vs in want) > 500  # both kinds of answer


def test_a_worker_that_dies_is_not_waited_for_and_is_started_again(rules):
    pool = PromptRulesPool(None, policy_fingerprint(rules.policy), workers=1)
    try:
        w = ready(pool)
        w.proc.send_signal(signal.SIGSTOP)  # holds the chunk it is given
        ticket = pool.submit([("a red mug", None)] * 50)
        assert ticket is not None
        w.proc.kill()
        assert ticket.verdicts(rules.allow) is None  # the caller checks the chunk itself
        assert wait_until(lambda: w.gone)
        assert pool.submit([("a red mug", None)]) is None  # no worker: nothing handed out
        w2 = ready(pool)  # start() replaces it
        assert w2 is not w and pool.submit([("a red mug", None)]).verdicts(rules.allow) == [[rules.allow]]
    finally:
        pool.close()


def test_a_worker_that_does_not_answer_is_stopped_and_its_chunk_checked_here(rules):
    pool = PromptRulesPool(None, policy_fingerprint(rules.policy), workers=1, answer_timeout_s=1.0)
    try:
        w = ready(pool)
        w.proc.send_signal(signal.SIGSTOP)  # wedged: never answers
        ticket = pool.submit([("a red mug", None)] * 3000)  # more than a pipe holds: the caller must not block
        assert ticket is not None and ticket.verdicts(rules.allow) is None
        assert wait_until(lambda: w.gone) and w.proc.wait(30) is not None
    finally:
        pool.close()


def test_a_worker_that_loaded_another_policy_is_never_used(rules, tmp_path):
    other = tmp_path / "policy.yaml"
    default = Path(rules.policy.source).read_text(encoding="utf-8")
    other.write_text(default.replace("version:", "version: other-", 1) if "version:" in default else default,
                     encoding="utf-8")
    assert policy_fingerprint(load_policy(other)) != policy_fingerprint(rules.policy)
    pool = PromptRulesPool(other, policy_fingerprint(rules.policy), workers=1)
    try:
        ready(pool)
        assert pool.submit([("a red mug", None)]) is None
    finally:
        pool.close()


def test_a_worker_that_cannot_start_is_named_in_the_log_and_never_used(rules, tmp_path, caplog):
    pool = PromptRulesPool(tmp_path / "no-such-policy.yaml", policy_fingerprint(rules.policy), workers=1)
    try:
        pool.start()
        w = pool._workers[0]
        assert wait_until(lambda: w.gone and w.proc.poll() is not None) and w.proc.returncode != 0
        assert pool.submit([("a red mug", None)]) is None
        assert wait_until(lambda: "exited before it was ready" in caplog.text)
    finally:
        pool.close()


def test_closing_the_pool_ends_its_workers(rules):
    pool = PromptRulesPool(None, policy_fingerprint(rules.policy), workers=2)
    ready(pool)
    procs = [w.proc for w in pool._workers]
    pool.close()
    assert all(p.poll() is not None for p in procs)
    pool.start()  # a closed pool starts nothing
    assert pool.running == 0 and pool.submit([("a red mug", None)]) is None


def test_a_worker_does_not_outlive_a_parent_killed_with_sigkill(tmp_path):
    script = ("import sys, time\n"
              "from safety.policy import load_policy, policy_fingerprint\n"
              "from safety.prompt_pool import PromptRulesPool\n"
              "pool = PromptRulesPool(None, policy_fingerprint(load_policy()), workers=1)\n"
              "pool.start()\n"
              "w = pool._workers[0]\n"
              "w.ready.wait(180)\n"
              "print(w.proc.pid, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(parent.stdout.readline())
        assert not gone(pid)
        parent.kill()
        parent.wait(30)
        assert wait_until(lambda: gone(pid)), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_chain_takes_the_rules_verdicts_it_is_given(rules):
    chain = ModerationChain(rules.policy, prompt_stages=[rules])
    block = Verdict("prompt_rules", "violence", 1.0, Action.BLOCK, rules.policy.version, 3, "term")
    assert chain.check_prompt("a red mug", rules_verdicts=[block]).blocked
    assert not chain.check_prompt("a red mug", rules_verdicts=[rules.allow]).blocked
    # another policy's verdicts, or an answer given without the real person's image: worked out here
    other = Verdict("prompt_rules", "violence", 1.0, Action.BLOCK, "another-version", 3, "term")
    assert not chain.check_prompt("a red mug", rules_verdicts=[other]).blocked
    assert not chain.check_prompt("a red mug", rules_verdicts=[block], real_person_context=True).blocked
