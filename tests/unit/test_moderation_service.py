"""The ``moderation_service`` stage against a real HTTP server on loopback that speaks each wire
format exactly (tests/moderation_service_fake.py): verdicts, mapping, cache, timeouts, outages and
the circuit breaker, bad answers, the fail policy, secrets and the concurrency cap."""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from PIL import Image

from jobs.errors import ConfigurationError, ModerationOutageTooLong, ModerationUnavailable
from jobs.settings import Settings
from safety.policy import parse_policy
from safety.verdict import MODERATION_ERROR, Action
from tests.moderation_service_fake import FakeModerationService, Scripted
from tests.workers import wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-test-0123456789abcdefSECRET"
BASE_POLICY = """\
version: service-test-1
categories:
  minors_sexual: {description: minors, severity: 10, action: block, terms: [csam]}
  sexual_explicit: {description: explicit, severity: 6, action: block, terms: [hardcore porn]}
  nudity: {description: nudity, severity: 4, action: flag, terms: [nude]}
  graphic_violence: {description: gore, severity: 6, action: block, terms: [gore]}
  self_harm: {description: self-harm, severity: 8, action: block, terms: [suicide]}
  hate_symbols: {description: hate, severity: 7, action: block, terms: [swastika]}
"""
OPENAI_MAP = """\
  categories:
    sexual/minors: {category: minors_sexual, threshold: 0.2}
    sexual: {category: nudity, threshold: 0.5}
    violence/graphic: {category: graphic_violence, threshold: 0.6}
    self-harm/intent: {category: self_harm, threshold: 0.5}
    self-harm: {category: self_harm, threshold: 0.7}
    hate: hate_symbols
"""
LLAMA_MAP = """\
  categories:
    S4: minors_sexual
    S12: {category: sexual_explicit}
    S1: graphic_violence
    S11: self_harm
    S10: hate_symbols
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy_text(url: str, fmt: str = "openai", extra: str = "", mapping: str | None = None) -> str:
    mapping = mapping if mapping is not None else (OPENAI_MAP if fmt == "openai" else LLAMA_MAP)
    model = "omni-moderation-latest" if fmt == "openai" else "meta-llama/Llama-Guard-4-12B"
    return BASE_POLICY + f"moderation_service:\n  url: {url}\n  format: {fmt}\n  model: {model}\n" + mapping + extra


def make_stage(url: str, fmt: str = "openai", extra: str = "", *, role: str = "worker", key: str | None = SECRET,
               clock=None, allow=("127.0.0.1",), fail_open: bool = False):
    from safety.moderation_service import ModerationServiceStage

    policy = parse_policy(policy_text(url, fmt, extra))
    kwargs = {"clock": clock} if clock is not None else {}
    from pydantic import SecretStr

    return ModerationServiceStage(policy.moderation_service, policy, api_key=SecretStr(key) if key else None,
                                  allow_hosts=allow, role=role, fail_open=fail_open, **kwargs)


@pytest.fixture
def fake():
    with FakeModerationService() as f:
        f.words = {
            "schoolgirl": {"sexual/minors": 0.93, "sexual": 0.88},
            "pin-up": {"sexual": 0.61},
            "entrails": {"violence/graphic": 0.9, "violence": 0.95},
            "sleep forever": {"self-harm/intent": 0.81, "self-harm": 0.55},
            "harass": {"harassment": 0.99},  # a category the policy does not map
            "borderline": {"sexual/minors": 0.15},  # under its threshold
        }
        yield f


@pytest.fixture
def guard():
    with FakeModerationService() as f:
        f.words = {"schoolgirl": ["S4", "S12"], "entrails": ["S1"], "sleep forever": ["S11"],
                   "forged invoice": ["S2"], "mob": ["S1", "S10"]}
        yield f


def categories(verdicts) -> dict[str, str]:
    return {v.category: v.action.value for v in verdicts}


# -- the policy section -------------------------------------------------------------------------------
def test_policy_section_is_parsed_with_defaults():
    p = parse_policy(policy_text("https://api.openai.com/v1/moderations"))
    cfg = p.moderation_service
    assert cfg.format == "openai" and cfg.model == "omni-moderation-latest" and cfg.fail == "closed"
    assert {(c.name, c.category, c.threshold) for c in cfg.categories} >= {("sexual/minors", "minors_sexual", 0.2),
                                                                            ("hate", "hate_symbols", 0.5)}
    assert (cfg.on_prompts, cfg.on_output_images, cfg.outage_api) == (True, False, "reject")
    assert parse_policy(BASE_POLICY).moderation_service is None


@pytest.mark.parametrize("extra,needle", [
    ("  colour: red\n", "unknown key 'colour' in moderation_service"),
    ("  fail: maybe\n", "moderation_service.fail must be one of closed, open"),
    ("  timeout_s: 0\n", "moderation_service.timeout_s must be between"),
    ("  outage: {api: later}\n", "outage.api must be one of reject, defer"),
    ("  on_prompts: false\n", "checks nothing"),
    ("  circuit_breaker: {failures: 0}\n", "circuit_breaker.failures must be between 1"),
])
def test_policy_section_mistakes_name_the_line(extra, needle):
    with pytest.raises(ConfigurationError) as e:
        parse_policy(policy_text("https://api.openai.com/v1/moderations", extra=extra), source="p.yaml")
    assert needle in str(e.value) and str(e.value).startswith("p.yaml:")


@pytest.mark.parametrize("url,fmt,mapping,needle", [
    ("https://x/v1/moderations", "openai", "  categories:\n    sexual/minors: minors_stuff\n", "unknown category 'minors_stuff'"),
    ("https://x/v1/chat/completions", "llama_guard", "  categories:\n    sexual: nudity\n", "not a hazard code"),
    ("https://x/v1/moderations", "openai", "  categories:\n    sexual: {category: nudity, threshold: 0}\n", "must be above 0"),
    ("https://user:pw@x/v1/moderations", "openai", None, "must not carry credentials"),
    ("ftp://x/v1/moderations", "openai", None, "must be an http(s) URL"),
    ("https://x/v1/moderations", "sagemaker", None, "format must be one of openai, llama_guard"),
])
def test_policy_section_refuses_bad_mappings_and_urls(url, fmt, mapping, needle):
    with pytest.raises(ConfigurationError) as e:
        parse_policy(policy_text(url, fmt, mapping=mapping))
    assert needle in str(e.value)


def test_loopback_service_needs_an_explicit_allow(fake):
    with pytest.raises(ConfigurationError) as e:
        make_stage(fake.moderations_url, allow=())
    assert "loopback" in str(e.value) and "BATCHRENDER_MODERATION_SERVICE_ALLOW_HOSTS" in str(e.value)
    assert "webhook" not in str(e.value).lower()
    with pytest.raises(ConfigurationError, match="metadata"):
        make_stage("http://169.254.169.254/v1/moderations", allow=())
    make_stage(fake.moderations_url, allow=("127.0.0.1",))  # allowed explicitly


# -- OpenAI /v1/moderations ---------------------------------------------------------------------------
def test_openai_request_is_the_real_wire_format(fake):
    stage = make_stage(fake.moderations_url)
    stage.check("a ceramic mug on a walnut table")
    [req] = fake.seen()
    assert req["path"] == "/v1/moderations"
    assert req["json"] == {"model": "omni-moderation-latest",
                           "input": [{"type": "text", "text": "a ceramic mug on a walnut table"}]}
    assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert req["headers"]["Content-Type"] == "application/json"


def test_openai_allows_a_benign_prompt(fake):
    [v] = make_stage(fake.moderations_url).check("a ceramic mug on a walnut table")
    assert v.action is Action.ALLOW and v.category == "none" and v.stage == "moderation_service"


def test_openai_blocks_by_threshold_and_maps_categories(fake):
    stage = make_stage(fake.moderations_url)
    assert categories(stage.check("a schoolgirl, photo")) == {"minors_sexual": "block", "nudity": "flag"}
    assert categories(stage.check("entrails everywhere")) == {"graphic_violence": "block"}
    # two service categories onto one policy category: one verdict, the higher score
    [v] = stage.check("to sleep forever with pills")
    assert (v.category, v.action, round(v.score, 2)) == ("self_harm", Action.BLOCK, 0.81)
    assert v.rule == "self-harm/intent>=0.5"
    # a flag category, and a score under its threshold, and an unmapped category
    assert categories(stage.check("a pin-up poster")) == {"nudity": "flag"}
    assert categories(stage.check("a borderline request")) == {"none": "allow"}
    assert categories(stage.check("harass them")) == {"none": "allow"}


def test_output_image_is_sent_as_a_png_data_url(fake):
    stage = make_stage(fake.moderations_url, extra="  on_output_images: true\n")
    answer = json.loads(json.dumps({"id": "modr-1", "model": "omni-moderation-latest", "results": [{
        "flagged": True, "categories": {"sexual": True}, "category_scores": {"sexual/minors": 0.01, "sexual": 0.97,
                                                                            "violence/graphic": 0.0, "self-harm": 0.0,
                                                                            "self-harm/intent": 0.0, "hate": 0.0},
        "category_applied_input_types": {"sexual": ["image"]}}]}))
    fake.script.append(Scripted(json=answer))
    verdicts = stage.check(Image.new("RGB", (1024, 768), "white"))
    assert categories(verdicts) == {"nudity": "flag"}
    [part] = fake.seen()[0]["json"]["input"]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
    import base64
    import io

    sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
    assert sent.format == "PNG" and max(sent.size) == 512


# -- Llama Guard (chat completions) --------------------------------------------------------------------
def test_llama_guard_request_is_a_chat_completion(guard):
    make_stage(guard.chat_url, "llama_guard").check("a lighthouse at dusk")
    [req] = guard.seen()
    assert req["path"] == "/v1/chat/completions"
    body = req["json"]
    assert body["model"] == "meta-llama/Llama-Guard-4-12B" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "a lighthouse at dusk"}]


def test_llama_guard_safe_unsafe_and_codes(guard):
    stage = make_stage(guard.chat_url, "llama_guard")
    assert categories(stage.check("a lighthouse at dusk")) == {"none": "allow"}
    assert categories(stage.check("a schoolgirl")) == {"minors_sexual": "block", "sexual_explicit": "block"}
    assert categories(stage.check("an angry mob")) == {"graphic_violence": "block", "hate_symbols": "block"}
    assert categories(stage.check("to sleep forever")) == {"self_harm": "block"}
    # a known hazard code the policy does not map (S2): allowed, not an error
    assert categories(stage.check("a forged invoice")) == {"none": "allow"}


def test_llama_guard_answers_with_whitespace_are_read(guard):
    stage = make_stage(guard.chat_url, "llama_guard")
    for content, expected in [("\n\nsafe", {"none": "allow"}), ("unsafe\nS4, S12\n", {"minors_sexual": "block",
                                                                                       "sexual_explicit": "block"}),
                              (" unsafe \n s10", {"hate_symbols": "block"})]:
        guard.script.append(Scripted(json=chat(content)))
        assert categories(stage.check(f"prompt {content!r}")) == expected


def chat(content, choices: int = 1) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        for i in range(choices)]}


# -- cache ---------------------------------------------------------------------------------------------
def test_cache_hit_on_the_same_and_a_lookalike_prompt(fake):
    stage = make_stage(fake.moderations_url)
    first = stage.check("A schoolgirl, photo")
    again = stage.check("a  schoolgirl, photo")  # case and spaces
    cyrillic = stage.check("a schооlgirl, photo")  # Cyrillic о: the keyword normaliser folds it
    zero_width = stage.check("a school\u200bgirl, photo")
    assert len(fake.seen()) == 1, "one request for four spellings of one prompt"
    for vs in (again, cyrillic, zero_width):
        assert categories(vs) == categories(first) and all("(cache)" in v.rule for v in vs)
    stage.check("another prompt")
    assert len(fake.seen()) == 2


def test_cache_entries_expire_and_bad_answers_are_not_cached(fake):
    clock = Clock()
    stage = make_stage(fake.moderations_url, extra="  cache: {size: 10, ttl_s: 60}\n", clock=clock)
    stage.check("a teapot")
    clock.now += 61
    stage.check("a teapot")
    assert len(fake.seen()) == 2
    fake.script.append(Scripted(body=b"<html>oops</html>"))
    assert stage.check("a kettle")[0].category == MODERATION_ERROR
    assert stage.check("a kettle")[0].category == "none"
    assert len(fake.seen()) == 4


# -- bad answers: a verdict by the fail policy, never an exception, never an allow ----------------------
OPENAI_OK = {"id": "modr-1", "model": "omni-moderation-latest", "results": [
    {"flagged": False, "categories": {c: False for c in ("sexual", "sexual/minors")},
     "category_scores": {"sexual/minors": 0.0, "sexual": 0.0, "violence/graphic": 0.0, "self-harm/intent": 0.0,
                         "self-harm": 0.0, "hate": 0.0}, "category_applied_input_types": {}}]}


def _openai_with(**scores):
    answer = json.loads(json.dumps(OPENAI_OK))
    answer["results"][0]["category_scores"].update(scores)
    return answer


BAD_OPENAI = {
    "not_json": Scripted(body=b"<html><body>502 Bad Gateway</body></html>"),
    "empty_body": Scripted(body=b""),
    "error_body": Scripted(json={"error": {"message": "Rate limit reached for requests", "type": "requests",
                                           "code": "rate_limit_exceeded"}}),
    "unknown_category": Scripted(json=_openai_with(**{"sexual/celebrity": 0.1})),
    "score_above_1": Scripted(json=_openai_with(sexual=1.5)),
    "score_below_0": Scripted(json=_openai_with(**{"sexual/minors": -0.2})),
    "score_as_string": Scripted(json=_openai_with(**{"sexual/minors": "0.9"})),
    "score_nan": Scripted(body=json.dumps(OPENAI_OK).replace('"sexual/minors": 0.0', '"sexual/minors": NaN').encode()),
    "no_results": Scripted(json={"id": "modr-1", "model": "m", "results": []}),
    "two_results": Scripted(json={**OPENAI_OK, "results": OPENAI_OK["results"] * 2}),
    "missing_mapped_category": Scripted(json={**OPENAI_OK, "results": [{"flagged": False, "categories": {},
                                                                        "category_scores": {"sexual": 0.0}}]}),
    "a_list": Scripted(json=[1, 2, 3]),
    "http_400": Scripted(status=400, json={"error": {"message": "bad input", "type": "invalid_request_error"}}),
    "redirect": Scripted(status=302, headers={"Location": "http://169.254.169.254/"}),
}
BAD_LLAMA = {
    "not_json": Scripted(body=b"safe"),
    "error_body": Scripted(json={"object": "error", "message": "model not loaded", "error": {"message": "x"}}),
    "not_a_verdict": Scripted(json=chat("I cannot help with that.")),
    "unsafe_without_codes": Scripted(json=chat("unsafe")),
    "unknown_code": Scripted(json=chat("unsafe\nS99")),
    "not_a_code": Scripted(json=chat("unsafe\nviolence")),
    "safe_with_codes": Scripted(json=chat("safe\nS1")),
    "two_choices": Scripted(json=chat("safe", choices=2)),
    "no_choices": Scripted(json={**chat("safe"), "choices": []}),
    "null_content": Scripted(json=chat(None)),
}


@pytest.mark.parametrize("fmt,case", [("openai", k) for k in BAD_OPENAI] + [("llama_guard", k) for k in BAD_LLAMA])
@pytest.mark.parametrize("fail", ["closed", "open"])
def test_bad_answer_is_a_verdict_by_the_fail_policy_with_a_logged_reason(fake, guard, fmt, case, fail, caplog):
    server = fake if fmt == "openai" else guard
    stage = make_stage(server.moderations_url if fmt == "openai" else server.chat_url, fmt, extra=f"  fail: {fail}\n")
    server.script.append((BAD_OPENAI if fmt == "openai" else BAD_LLAMA)[case])
    with caplog.at_level(logging.WARNING, logger="safety.moderation_service"):
        [v] = stage.check("a schoolgirl in a classroom" if fmt == "openai" else "a schoolgirl")
    assert v.category == MODERATION_ERROR and v.rule.startswith("bad_answer:")
    assert v.action is (Action.BLOCK if fail == "closed" else Action.FLAG)
    assert "bad answer" in caplog.text and v.rule.split(":", 1)[1] in caplog.text
    assert stage.breaker.state == "closed", "a service that answers is not down"


def test_bad_answer_through_the_chain_is_a_refusal_not_an_error(fake, tmp_path):
    chain = chain_for(tmp_path, policy_text(fake.moderations_url))
    fake.script.append(BAD_OPENAI["score_above_1"])
    d = chain.check_prompt("a red bicycle")
    assert d.blocked and d.blocking_stage == "moderation_service" and d.categories == (MODERATION_ERROR,)
    assert "could not be completed" in d.message


# -- outages --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scripted,reason", [(Scripted(status=503), "http_503"), (Scripted(status=500), "http_500"),
                                             (Scripted(status=429, json={"error": {"message": "slow down"}}), "http_429"),
                                             (Scripted(delay_s=5), "ReadTimeout")])
def test_slow_or_failing_service_is_an_outage(fake, scripted, reason):
    fake.script.append(scripted)
    stage = make_stage(fake.moderations_url, extra="  timeout_s: 0.3\n", role="api")
    with pytest.raises(ModerationUnavailable) as e:
        stage.check("a teapot")
    assert reason in e.value.message and e.value.code == "moderation_unavailable"


def test_refused_connection_is_an_outage(fake):
    stage = make_stage(fake.moderations_url, role="api")
    fake.stop()
    with pytest.raises(ModerationUnavailable, match="ConnectError"):
        stage.check("a teapot")


def test_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown(fake):
    clock = Clock()
    stage = make_stage(fake.moderations_url, extra="  circuit_breaker: {failures: 2, cooldown_s: 30}\n",
                       role="api", clock=clock)
    fake.always = Scripted(status=503)
    for _ in range(2):
        with pytest.raises(ModerationUnavailable, match="http_503"):
            stage.check("a teapot")
    assert stage.breaker.state == "open"
    for _ in range(5):
        with pytest.raises(ModerationUnavailable, match="circuit_open") as e:
            stage.check("a teapot")
    assert len(fake.seen()) == 2, "an open circuit sends nothing"
    assert e.value.retry_after_s == 30
    clock.now += 31  # half-open: one probe, which fails: open again
    with pytest.raises(ModerationUnavailable, match="http_503"):
        stage.check("a teapot")
    with pytest.raises(ModerationUnavailable, match="circuit_open"):
        stage.check("a teapot")
    assert len(fake.seen()) == 3
    fake.always = None
    clock.now += 31  # the probe succeeds: closed
    assert stage.check("a teapot")[0].action is Action.ALLOW
    assert stage.breaker.state == "closed" and stage.check("a kettle")[0].action is Action.ALLOW


def test_worker_waits_during_an_outage_then_gives_up_after_max_wait(fake):
    clock = Clock()
    stage = make_stage(fake.moderations_url, extra="  outage: {max_wait_s: 600}\n"
                                                   "  circuit_breaker: {failures: 1, cooldown_s: 10}\n", clock=clock)
    fake.always = Scripted(status=502)
    with pytest.raises(ModerationUnavailable, match="waiting"):
        stage.check("a teapot")
    clock.now += 599
    with pytest.raises(ModerationUnavailable, match="waiting"):
        stage.check("a teapot")
    clock.now += 2
    with pytest.raises(ModerationOutageTooLong) as e:
        stage.check("a teapot")
    assert e.value.code == "moderation_unavailable" and "max_wait_s" in e.value.message
    fake.always = None  # the service answers again: the clock starts over
    clock.now += 11
    assert stage.check("a teapot")[0].action is Action.ALLOW and stage.breaker.down_for() == 0


def test_fail_open_flags_an_outage_and_api_defer_accepts(fake):
    fake.always = Scripted(status=503)
    [v] = make_stage(fake.moderations_url, extra="  fail: open\n").check("a teapot")
    assert (v.action, v.category, v.rule) == (Action.FLAG, MODERATION_ERROR, "unavailable:http_503")
    # the operator's BATCHRENDER_MODERATION_FAIL_OPEN works too
    [v] = make_stage(fake.moderations_url, fail_open=True).check("a teapot")
    assert v.action is Action.FLAG
    [v] = make_stage(fake.moderations_url, extra="  outage: {api: defer}\n", role="api").check("a teapot")
    assert (v.action, v.rule) == (Action.ALLOW, "deferred:http_503")
    with pytest.raises(ModerationUnavailable):  # the worker never defers
        make_stage(fake.moderations_url, extra="  outage: {api: defer}\n").check("a teapot")


def test_an_outage_is_never_cached(fake):
    stage = make_stage(fake.moderations_url, role="api")
    fake.script.append(Scripted(status=503))
    with pytest.raises(ModerationUnavailable):
        stage.check("a schoolgirl")
    assert categories(stage.check("a schoolgirl"))["minors_sexual"] == "block"


# -- concurrency --------------------------------------------------------------------------------------
def _held_calls(fake, cap: int, n: int) -> list[threading.Thread]:
    stage = make_stage(fake.moderations_url, extra=f"  max_concurrency: {cap}\n  timeout_s: 30\n")
    fake.always = Scripted(hold=True)
    threads = [threading.Thread(target=stage.check, args=(f"prompt {i}",)) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def test_concurrency_cap_limits_requests_in_flight(fake):
    threads = _held_calls(fake, cap=2, n=6)
    wait_for(lambda: fake.in_flight == 2, timeout=20, what="two requests held by the service")
    fake.release.set()
    for t in threads:
        t.join(30)
    assert len(fake.seen()) == 6 and fake.max_in_flight == 2


def test_concurrency_cap_control_more_slots_more_in_flight(fake):
    threads = _held_calls(fake, cap=6, n=6)
    wait_for(lambda: fake.in_flight == 6, timeout=20, what="six requests held by the service")
    fake.release.set()
    for t in threads:
        t.join(30)
    assert fake.max_in_flight == 6


# -- secrets -------------------------------------------------------------------------------------------
def test_key_never_in_logs_reprs_verdicts_errors_or_audit(fake, tmp_path, caplog):
    fake.script.append(Scripted(status=401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
    fake.script.append(Scripted(status=503))
    with caplog.at_level(logging.DEBUG):
        chain = chain_for(tmp_path, policy_text(fake.moderations_url), audit=True)
        stage = chain.prompt_stages[-1]
        refused = chain.check_prompt("a teapot")  # 401 echoing the key: a bad answer
        with pytest.raises(ModerationUnavailable) as outage:
            chain.check_prompt("a kettle")
        blocked = chain.check_prompt("a schoolgirl")
    assert refused.blocked and "http_401" in refused.verdicts[-1].rule
    assert blocked.blocked and "minors_sexual" in blocked.categories
    assert all(r["headers"]["Authorization"] == f"Bearer {SECRET}" for r in fake.seen())
    audit = (tmp_path / "home" / "moderation" / "audit.jsonl").read_text()
    texts = [caplog.text, repr(stage), str(stage.__dict__.get("config")), audit, str(outage.value),
             json.dumps(outage.value.to_dict()), json.dumps(refused.to_dict()), json.dumps(blocked.to_dict()),
             repr(chain_settings(tmp_path, policy_text(fake.moderations_url)))]
    assert "BATCHRENDER_MODERATION_SERVICE_KEY" in caplog.text  # the 401 names the setting to fix
    for text in texts:
        assert SECRET not in text


@pytest.mark.parametrize("key", ["sk-abc\r\nX-Injected: 1", "sk abc", "sk-ключ", " "])
def test_a_key_that_cannot_be_a_header_is_refused_without_quoting_it(fake, key):
    with pytest.raises(ConfigurationError) as e:
        make_stage(fake.moderations_url, key=key)
    assert "BATCHRENDER_MODERATION_SERVICE_KEY" in str(e.value)
    assert not key.strip() or key.strip() not in str(e.value)


# -- the chain -----------------------------------------------------------------------------------------
def chain_settings(tmp_path: Path, text: str, **kw) -> Settings:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return Settings(home=tmp_path / "home", policy_file=path, moderation_service_key=SECRET,
                    moderation_service_allow_hosts=["127.0.0.1"], nsfw_classifier="off", **kw)


def chain_for(tmp_path: Path, text: str, *, audit: bool = False, **kw):
    from safety.chain import ModerationChain

    return ModerationChain.from_settings(chain_settings(tmp_path, text, **kw), detect_faces=False, audit=audit)


def test_chain_runs_the_service_after_the_keyword_rules(fake, tmp_path):
    chain = chain_for(tmp_path, policy_text(fake.moderations_url))
    assert [s.name for s in chain.prompt_stages] == ["prompt_rules", "moderation_service"]
    assert chain.output_stages == ()
    d = chain.check_prompt("csam")  # the keyword rules block: the service is not asked
    assert d.blocked and d.blocking_stage == "prompt_rules" and fake.seen() == []
    d = chain.check_prompt("a schoolgirl in a classroom")
    assert d.blocked and d.blocking_stage == "moderation_service" and "minors_sexual" in d.categories
    assert chain.check_prompt("a pin-up poster").flagged


def test_producer_side_chain_answers_outages_with_moderation_unavailable(fake, tmp_path):
    from safety.chain import ModerationChain

    pytest.importorskip("cv2")
    chain = ModerationChain.producer_side(chain_settings(tmp_path, policy_text(fake.moderations_url)), audit=False)
    assert chain.prompt_stages[-1].role == "api"
    fake.always = Scripted(status=503)
    with pytest.raises(ModerationUnavailable) as e:
        chain.check_prompt("a teapot")
    assert e.value.retry_after_s >= 1


def test_output_images_go_to_the_service_when_configured(fake, tmp_path):
    chain = chain_for(tmp_path, policy_text(fake.moderations_url, extra="  on_output_images: true\n"))
    assert [s.name for s in chain.output_stages] == ["moderation_service"]
    assert chain.check_output_image(Image.new("RGB", (64, 64))).action is Action.ALLOW
    assert fake.seen()[0]["json"]["input"][0]["type"] == "image_url"


def test_fail_open_setting_names_the_stage(fake, tmp_path):
    chain = chain_for(tmp_path, policy_text(fake.moderations_url), moderation_fail_open=["moderation_service"])
    fake.always = Scripted(status=503)
    d = chain.check_prompt("a teapot")
    assert d.flagged and d.categories == (MODERATION_ERROR,)


def test_an_output_image_during_an_outage_raises_for_the_retry_policy(fake, tmp_path):
    chain = chain_for(tmp_path, policy_text(fake.moderations_url, extra="  on_output_images: true\n"))
    fake.always = Scripted(status=503)
    with pytest.raises(ModerationUnavailable):  # delivery re-queues the job (worker/batching.py)
        chain.check_output_image(Image.new("RGB", (64, 64)))
