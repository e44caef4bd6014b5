"""The moderation policy: one YAML file a person can read and change, validated at start-up.

Every error names the file, the LINE and the reason (taken from the YAML node marks), and is
raised as ``ConfigurationError`` when the chain is built, never at the first job. See
``docs/moderation.md`` for the format; ``safety/default_policy.yaml`` is the annotated default.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from jobs.errors import ConfigurationError
from safety.verdict import Action

DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")
#: Stages whose scores are compared against per-category thresholds.
THRESHOLD_STAGES = frozenset({"text_classifier", "output_classifier", "nsfw_classifier", "safety_checker"})
#: Signals that are not term sets: a protected name in the prompt; a real person in the context.
SPECIAL_SIGNALS = frozenset({"$protected_name", "$real_person_context"})
#: This category can be extended but never relaxed: it must exist and it must block.
MINORS_CATEGORY = "minors_sexual"
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_LANG = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})*$")


@dataclass(frozen=True, slots=True)
class TermSet:
    """Named words/phrases/regexes that raise one signal (``minor``, ``nudity``...)."""

    name: str
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Category:
    """One policy category: what it is, how bad, what to do, and how each stage detects it."""

    id: str
    description: str
    severity: int
    action: Action
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    #: Each entry is a tuple of signals that must ALL be present (term-set names or specials);
    #: a one-signal entry fires whenever that term set matches.
    combinations: tuple[tuple[str, ...], ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)
    #: Classifier label names (per stage) that map onto this category.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated policy. ``version`` is recorded with every verdict."""

    version: str
    categories: tuple[Category, ...]
    term_sets: Mapping[str, TermSet]
    #: Every spelling of every protected name (aliases in other scripts included).
    protected_names: tuple[str, ...] = ()
    allow_phrases: tuple[str, ...] = ()
    #: Benign compounds of unspaced scripts, cut out before substring matching (``裸足``, ``아이스``).
    exceptions: tuple[str, ...] = ()
    #: Language codes the policy has terms for (``en``, ``ja``, ...): documentation and tooling.
    languages: tuple[str, ...] = ()
    #: Term set matched in the NEGATIVE prompt -> signal it raises for the positive prompt.
    negative_prompt: Mapping[str, str] = field(default_factory=dict)
    #: The optional classifier-service stage (``moderation_service:``; safety/moderation_service.py).
    moderation_service: "ServiceConfig | None" = None
    source: str = "<string>"

    def category(self, category_id: str) -> Category:
        for c in self.categories:
            if c.id == category_id:
                return c
        raise KeyError(category_id)

    @property
    def messages(self) -> dict[str, str]:
        return {c.id: c.message for c in self.categories if c.message}


class _Reader:
    """Walks the composed YAML node tree so every complaint can cite a line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._loader = yaml.SafeLoader("")

    def fail(self, node: yaml.Node, reason: str) -> ConfigurationError:
        return ConfigurationError(f"{self.source}:{node.start_mark.line + 1}: {reason}", line=node.start_mark.line + 1)

    def mapping(self, node: yaml.Node, what: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = self.scalar(k, f"a key in {what}", str)
            if key in out:
                raise self.fail(k, f"duplicate key {key!r} in {what}")
            if allowed and key not in allowed:
                raise self.fail(k, f"unknown key {key!r} in {what}; expected one of {sorted(allowed)}")
            out[key] = v
        missing = sorted(required - out.keys())
        if missing:
            raise self.fail(node, f"{what} is missing {', '.join(missing)}")
        return out

    def scalar(self, node: yaml.Node, what: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} must be a single value")
        value = self._loader.construct_object(node)
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(node, f"{what} must be {getattr(kind, '__name__', kind)}, not a boolean")
        if not isinstance(value, kind):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.fail(node, f"{what} must be {names}, got {value!r}")
        return value

    def strings(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        out = []
        for item in node.value:
            s = self.scalar(item, f"an entry of {what}", str).strip()
            if not s:
                raise self.fail(item, f"empty entry in {what}")
            out.append((s, item))
        return out

    def terms(self, node: yaml.Node, what: str, langs: set[str]) -> tuple[str, ...]:
        """A list of terms, or a mapping of language code -> list (``{en: [...], ja: [...]}``)."""
        if not isinstance(node, yaml.MappingNode):
            return tuple(s for s, _ in self.strings(node, what))
        out: list[str] = []
        for lang, v in self.mapping(node, what, set()).items():
            if not _LANG.match(lang):
                raise self.fail(v, f"{lang!r} in {what} is not a language code like 'en', 'ja' or 'zh-hant'")
            langs.add(lang)
            out += [s for s, _ in self.strings(v, f"{what}.{lang}")]
        return tuple(dict.fromkeys(out))

    def names(self, node: yaml.Node) -> list[str]:
        """Protected names: a name, or ``{name: ..., aliases: [...]}`` with spellings in other scripts."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "protected_names must be a list")
        out: list[str] = []
        for item in node.value:
            if isinstance(item, yaml.MappingNode):
                m = self.mapping(item, "a protected name", {"name", "aliases"}, {"name"})
                out.append(self.scalar(m["name"], "name", str).strip())
                if "aliases" in m:
                    out += [s for s, _ in self.strings(m["aliases"], "aliases")]
            else:
                out.append(self.scalar(item, "an entry of protected_names", str).strip())
            if not out[-1]:
                raise self.fail(item, "empty entry in protected_names")
        return out

    def patterns(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        out = []
        for pat, item in self.strings(node, what):
            try:
                re.compile(pat)
            except re.error as e:
                raise self.fail(item, f"invalid regular expression in {what}: {e}") from None
            out.append(pat)
        return tuple(out)


def _category(r: _Reader, cid: str, node: yaml.Node, sets: Mapping[str, TermSet], langs: set[str]) -> Category:
    m = r.mapping(node, f"category {cid!r}", {"description", "severity", "action", "terms", "patterns",
                                              "combinations", "thresholds", "labels", "message"},
                  {"description", "severity", "action"})
    action_s = r.scalar(m["action"], "action", str)
    if action_s not in ("block", "flag"):
        raise r.fail(m["action"], f"action must be 'block' or 'flag', got {action_s!r}")
    severity = r.scalar(m["severity"], "severity", int)
    if severity < 0:
        raise r.fail(m["severity"], "severity must be >= 0")
    combos = []
    if "combinations" in m:
        if not isinstance(m["combinations"], yaml.SequenceNode):
            raise r.fail(m["combinations"], "combinations must be a list of lists of term-set names")
        for combo in m["combinations"].value:
            names = r.strings(combo, "a combination")
            if not names:
                raise r.fail(combo, "a combination needs at least one signal")
            for name, item in names:
                if name not in sets and name not in SPECIAL_SIGNALS:
                    raise r.fail(item, f"unknown signal {name!r}; define it under term_sets "
                                       f"or use one of {sorted(SPECIAL_SIGNALS)}")
            combos.append(tuple(n for n, _ in names))
    thresholds: dict[str, float] = {}
    if "thresholds" in m:
        for stage, v in r.mapping(m["thresholds"], "thresholds", set(THRESHOLD_STAGES)).items():
            t = float(r.scalar(v, f"threshold for {stage}", (int, float)))
            if not 0.0 <= t <= 1.0:
                raise r.fail(v, f"threshold for {stage} must be between 0 and 1, got {t}")
            thresholds[stage] = t
    labels: dict[str, tuple[str, ...]] = {}
    if "labels" in m:
        for stage, v in r.mapping(m["labels"], "labels", set(THRESHOLD_STAGES)).items():
            labels[stage] = tuple(s for s, _ in r.strings(v, f"labels for {stage}"))
            if stage not in thresholds:
                raise r.fail(v, f"labels for {stage} need a threshold for {stage} too")
    cat = Category(
        id=cid,
        description=r.scalar(m["description"], "description", str),
        severity=severity,
        action=Action(action_s),
        terms=r.terms(m["terms"], f"terms of {cid!r}", langs) if "terms" in m else (),
        patterns=r.patterns(m["patterns"], "patterns") if "patterns" in m else (),
        combinations=tuple(combos),
        thresholds=MappingProxyType(thresholds),
        labels=MappingProxyType(labels),
        message=r.scalar(m["message"], "message", str) if "message" in m else None,
    )
    if not (cat.terms or cat.patterns or cat.combinations or cat.labels):
        raise r.fail(node, f"category {cid!r} has no terms, patterns, combinations or labels: it can never match")
    return cat


#: PyYAML's libyaml-backed loader where it was built with it (its wheels are), else the pure-Python one.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_policy(text: str, source: str = "<string>", base_dir: Path | None = None) -> Policy:
    """Parse and validate policy YAML; raise ``ConfigurationError`` naming the line on any problem."""
    r = _Reader(source)
    try:
        try:
            # libyaml when PyYAML has it: the same node tree (same resolver) in a tenth of the time
            # (the shipped policy: 0.18 -> 0.02 s, paid by every process that moderates).
            root = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            # Invalid YAML: the pure-Python parser's account of it, as it always was.
            root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigurationError(f"{source}:{line}: invalid YAML: {e.problem or e}", line=line) from None
    if root is None:
        raise ConfigurationError(f"{source}:1: the policy file is empty", line=1)
    top = r.mapping(root, "the policy", {"version", "categories", "term_sets", "protected_names",
                                        "protected_names_file", "allow_phrases", "negative_prompt",
                                        "exceptions", "moderation_service"},
                    {"version", "categories"})
    version = str(r.scalar(top["version"], "version", (str, int, float))).strip()
    if not version:
        raise r.fail(top["version"], "version must not be empty")
    sets: dict[str, TermSet] = {}
    langs: set[str] = set()
    if "term_sets" in top:
        for name, node in r.mapping(top["term_sets"], "term_sets", set()).items():
            if not _ID.match(name):
                raise r.fail(node, f"term set name {name!r} must be lower_snake_case")
            m = r.mapping(node, f"term set {name!r}", {"terms", "patterns"})
            sets[name] = TermSet(name, r.terms(m["terms"], f"terms of {name!r}", langs) if "terms" in m else (),
                                 r.patterns(m["patterns"], "patterns") if "patterns" in m else ())
    categories = []
    for cid, node in r.mapping(top["categories"], "categories", set()).items():
        if not _ID.match(cid):
            raise r.fail(node, f"category id {cid!r} must be lower_snake_case")
        categories.append(_category(r, cid, node, sets, langs))
    minors = next((c for c in categories if c.id == MINORS_CATEGORY), None)
    if minors is None or minors.action is not Action.BLOCK:
        raise r.fail(top["categories"], f"category {MINORS_CATEGORY!r} must exist with action 'block'; "
                                        "it can be extended but never relaxed")
    names = r.names(top["protected_names"]) if "protected_names" in top else []
    if "protected_names_file" in top:
        rel = Path(r.scalar(top["protected_names_file"], "protected_names_file", str))
        path = rel if rel.is_absolute() else (base_dir or Path.cwd()) / rel
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise r.fail(top["protected_names_file"], f"cannot read protected_names_file {path}: {e.strerror}") from None
        names += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    negative: dict[str, str] = {}
    if "negative_prompt" in top:
        for set_name, node in r.mapping(top["negative_prompt"], "negative_prompt", set()).items():
            signal = r.scalar(node, f"negative_prompt.{set_name}", str)
            for n in (set_name, signal):
                if n not in sets:
                    raise r.fail(node, f"negative_prompt refers to unknown term set {n!r}")
            negative[set_name] = signal
    return Policy(
        version=version,
        categories=tuple(categories),
        term_sets=MappingProxyType(sets),
        protected_names=tuple(dict.fromkeys(names)),
        allow_phrases=r.terms(top["allow_phrases"], "allow_phrases", langs) if "allow_phrases" in top else (),
        exceptions=r.terms(top["exceptions"], "exceptions", langs) if "exceptions" in top else (),
        languages=tuple(sorted(langs)),
        negative_prompt=MappingProxyType(negative),
        moderation_service=(_service(r, top["moderation_service"], {c.id for c in categories})
                            if "moderation_service" in top else None),
        source=source,
    )


#: Wire formats of ``moderation_service``: OpenAI's ``/v1/moderations``, and a Llama-Guard-style
#: chat completion answering ``safe`` or ``unsafe`` + MLCommons hazard codes (``S1``..``S14``).
SERVICE_FORMATS = ("openai", "llama_guard")
_HAZARD_CODE = re.compile(r"^S[1-9][0-9]?$")


@dataclass(frozen=True, slots=True)
class ServiceCategory:
    """One service category (``sexual/minors``) or hazard code (``S4``) mapped onto a policy category."""

    name: str
    category: str
    threshold: float


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The ``moderation_service:`` section: where the classifier service is and how to read it."""

    url: str
    format: str
    model: str
    categories: tuple[ServiceCategory, ...]
    #: Service categories that are known but mean nothing to this policy (never an unknown-category error).
    ignore: tuple[str, ...] = ()
    on_prompts: bool = True
    on_output_images: bool = False
    timeout_s: float = 5.0
    max_concurrency: int = 8
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    cache_size: int = 10_000
    cache_ttl_s: float = 3600.0
    #: ``closed``: a bad answer blocks, an outage holds the job; ``open``: both are a flag and the chain goes on.
    fail: str = "closed"
    #: Worker: jobs wait while the service has been down for less than this, then end ``moderation_unavailable``.
    outage_max_wait_s: float = 1800.0
    #: API during an outage: ``reject`` (503 + Retry-After) or ``defer`` (accept; the worker checks).
    outage_api: str = "reject"


def _service(r: _Reader, node: yaml.Node, category_ids: set[str]) -> ServiceConfig:
    what = "moderation_service"
    m = r.mapping(node, what, {"url", "format", "model", "categories", "ignore", "on_prompts", "on_output_images",
                               "timeout_s", "max_concurrency", "circuit_breaker", "cache", "fail", "outage"},
                  {"url", "format", "model", "categories"})

    def number(n: yaml.Node, name: str, low: float, high: float, kind: type | tuple[type, ...] = (int, float)) -> Any:
        v = r.scalar(n, f"{what}.{name}", kind)
        if not low <= v <= high:
            raise r.fail(n, f"{what}.{name} must be between {low:g} and {high:g}, got {v}")
        return v

    def choice(n: yaml.Node, name: str, options: tuple[str, ...]) -> str:
        v = r.scalar(n, f"{what}.{name}", str)
        if v not in options:
            raise r.fail(n, f"{what}.{name} must be one of {', '.join(options)}, got {v!r}")
        return v

    url = r.scalar(m["url"], f"{what}.url", str).strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise r.fail(m["url"], f"{what}.url is malformed: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise r.fail(m["url"], f"{what}.url must be an http(s) URL like https://api.openai.com/v1/moderations, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise r.fail(m["url"], f"{what}.url must not carry credentials; the key goes in "
                               "BATCHRENDER_MODERATION_SERVICE_KEY")
    fmt = choice(m["format"], "format", SERVICE_FORMATS)
    model = r.scalar(m["model"], f"{what}.model", str).strip()
    if not model:
        raise r.fail(m["model"], f"{what}.model must not be empty")
    mapped: list[ServiceCategory] = []
    for name, v in r.mapping(m["categories"], f"{what}.categories", set()).items():
        if fmt == "llama_guard" and not _HAZARD_CODE.match(name):
            raise r.fail(v, f"{what}.categories: {name!r} is not a hazard code like S1..S14 (format llama_guard)")
        if isinstance(v, yaml.ScalarNode):
            cid, threshold = r.scalar(v, f"{what}.categories.{name}", str), 0.5
        else:
            e = r.mapping(v, f"{what}.categories.{name}", {"category", "threshold"}, {"category"})
            cid = r.scalar(e["category"], f"{what}.categories.{name}.category", str)
            threshold = float(number(e["threshold"], f"categories.{name}.threshold", 0.0, 1.0)) if "threshold" in e else 0.5
            if threshold <= 0.0:
                raise r.fail(e["threshold"], f"{what}.categories.{name}.threshold must be above 0 (0 fires on every prompt)")
        if cid not in category_ids:
            raise r.fail(v, f"{what}.categories.{name} maps to unknown category {cid!r}; "
                            f"categories are {sorted(category_ids)}")
        mapped.append(ServiceCategory(name, cid, threshold))
    if not mapped:
        raise r.fail(m["categories"], f"{what}.categories must map at least one service category onto a policy category")
    ignore = tuple(s for s, _ in r.strings(m["ignore"], f"{what}.ignore")) if "ignore" in m else ()
    cfg: dict[str, Any] = {}
    for key in ("on_prompts", "on_output_images"):
        if key in m:
            cfg[key] = r.scalar(m[key], f"{what}.{key}", bool)
    if not cfg.get("on_prompts", True) and not cfg.get("on_output_images", False):
        raise r.fail(node, f"{what} checks nothing: set on_prompts and/or on_output_images to true")
    if "timeout_s" in m:
        cfg["timeout_s"] = float(number(m["timeout_s"], "timeout_s", 0.01, 300))
    if "max_concurrency" in m:
        cfg["max_concurrency"] = number(m["max_concurrency"], "max_concurrency", 1, 1024, int)
    if "circuit_breaker" in m:
        b = r.mapping(m["circuit_breaker"], f"{what}.circuit_breaker", {"failures", "cooldown_s"})
        if "failures" in b:
            cfg["breaker_failures"] = number(b["failures"], "circuit_breaker.failures", 1, 10_000, int)
        if "cooldown_s" in b:
            cfg["breaker_cooldown_s"] = float(number(b["cooldown_s"], "circuit_breaker.cooldown_s", 0.01, 86_400))
    if "cache" in m:
        c = r.mapping(m["cache"], f"{what}.cache", {"size", "ttl_s"})
        if "size" in c:
            cfg["cache_size"] = number(c["size"], "cache.size", 0, 10_000_000, int)
        if "ttl_s" in c:
            cfg["cache_ttl_s"] = float(number(c["ttl_s"], "cache.ttl_s", 0.01, 30 * 86_400))
    if "fail" in m:
        cfg["fail"] = choice(m["fail"], "fail", ("closed", "open"))
    if "outage" in m:
        o = r.mapping(m["outage"], f"{what}.outage", {"max_wait_s", "api"})
        if "max_wait_s" in o:
            cfg["outage_max_wait_s"] = float(number(o["max_wait_s"], "outage.max_wait_s", 0, 7 * 86_400))
        if "api" in o:
            cfg["outage_api"] = choice(o["api"], "outage.api", ("reject", "defer"))
    return ServiceConfig(url=url, format=fmt, model=model, categories=tuple(mapped), ignore=ignore, **cfg)


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON values, the same in every process (sets sorted, enums by value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def policy_fingerprint(policy: Policy) -> str:
    """A hash of everything in ``policy``: two processes that loaded the same policy agree on it,
    whatever the file's path or its formatting (``safety.prompt_pool`` checks its workers with it)."""
    text = json.dumps(_canonical(policy), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_policy(path: Path | None = None) -> Policy:
    """Load the policy at ``path`` (default: the shipped ``default_policy.yaml``)."""
    path = Path(path) if path else DEFAULT_POLICY
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigurationError(f"cannot read policy file {path}: {e.strerror}") from None
    return parse_policy(text, source=str(path), base_dir=path.parent)
