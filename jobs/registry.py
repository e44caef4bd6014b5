"""The model registry: model name → where its weights live and how to run it.

Shared by producers (to validate model names) and workers (to load). Where it lives follows the
broker: with ``redis_url`` set (a deployment that may span hosts) it is a Redis hash
(``br:models``), the same for every host; with the embedded broker (one host) it is a JSON file,
``{home}/models.json``. A host's ``models.json`` left from before is imported into Redis once
(entries already in Redis win) and renamed ``models.json.imported``.

The ``tiny`` entry is always present: a random-weight Stable-Diffusion pipeline that the worker
writes on first use under its own home, so everything runs offline on a CPU.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.errors import ConfigurationError, UnknownModel
from jobs.families import FAMILIES, Family
from jobs.names import KEY_PREFIX, is_valid_model_name
from jobs.settings import Settings

TINY = "tiny"
#: The shared registry (``redis_url`` set): model name -> JSON of its spec.
MODELS_KEY = f"{KEY_PREFIX}models"
log = logging.getLogger(__name__)


class ModelSpec(BaseModel):
    """How to load and run one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    #: A local directory written by ``save_pretrained`` or a Hugging Face hub id.
    source: str
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: ``cuda``, ``cuda:1``, ``cpu``, or ``None`` for cuda when present, else cpu.
    device: str | None = None
    #: A diffusers scheduler class name (``EulerDiscreteScheduler``...) or None for the saved one.
    scheduler: str | None = None
    default_steps: int = Field(25, ge=1, le=500)
    default_guidance: float = Field(7.5, ge=0, le=50)
    #: The side of the square the model was trained at; aspect ratios map to sizes of that area.
    base_size: int = Field(512, ge=8, le=8192)
    #: Built by ``batchrender models init-tiny`` (random weights; renders noise).
    tiny: bool = False
    #: sd15, sdxl, sd3 or flux (jobs/families.py): sizes, defaults, inputs and how it is called.
    family: Family = "sd15"
    #: The directory holds an IP-Adapter (``ip_adapter/ip-adapter.safetensors`` and its
    #: ``ip_adapter/image_encoder``): jobs' ``references`` condition the render through it.
    ip_adapter: bool = False

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data):
        # Steps, guidance and size not given take the family's defaults (SDXL: 30, 5.0, 1024...).
        if isinstance(data, dict) and data.get("family") in FAMILIES:
            fam = FAMILIES[data["family"]]
            for key, value in (("default_steps", fam.default_steps), ("default_guidance", fam.default_guidance),
                               ("base_size", fam.base_size)):
                if data.get(key) is None:
                    data = {**data, key: value}
        return data

    @model_validator(mode="after")
    def _scheduler_fits(self) -> "ModelSpec":
        prefix = FAMILIES[self.family].scheduler_prefix
        if self.scheduler and prefix and not self.scheduler.startswith(prefix):
            raise ValueError(f"scheduler {self.scheduler!r} does not fit a {self.family} model: it needs a "
                             f"flow-matching scheduler (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not is_valid_model_name(v):
            raise ValueError("model names use lowercase letters, digits, '.', '_' and '-' (max 64)")
        return v


#: Where a model directory keeps its IP-Adapter (weights and image encoder), if it has one.
IP_ADAPTER_DIR, IP_ADAPTER_WEIGHTS, IP_ADAPTER_ENCODER = "ip_adapter", "ip-adapter.safetensors", "image_encoder"


def has_ip_adapter(model_dir) -> bool:
    from pathlib import Path

    d = Path(model_dir) / IP_ADAPTER_DIR
    return (d / IP_ADAPTER_WEIGHTS).is_file() and (d / IP_ADAPTER_ENCODER / "config.json").is_file()


def tiny_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        name=TINY, source=str((settings.home / "models" / TINY).resolve()), dtype="float32",
        default_steps=4, default_guidance=5.0, base_size=64, tiny=True,
    )


def _spec(name: str, entry: Any, where: str) -> ModelSpec:
    try:
        return ModelSpec(name=name, **{k: v for k, v in entry.items() if k != "name"})
    except (ValidationError, AttributeError, TypeError) as e:
        raise ConfigurationError(f"model registry {where} is invalid: {name}: {e}") from None


class Registry:
    """Read and write the registry: the Redis hash when ``redis_url`` is set, else the home's file."""

    def __init__(self, settings: Settings, *, redis: Any = None) -> None:
        self.settings = settings
        self.path = settings.models_file
        self.shared = bool(settings.redis_url) or redis is not None
        self._redis = redis
        #: The last hash read and its parsed specs: a submit reads the registry per job, and parsing
        #: is skipped while Redis holds the same entries (never stale: the hash is read every time).
        self._cache: tuple[dict[str, str], dict[str, ModelSpec]] | None = None
        self._lock = threading.Lock()
        self._imported = False
        #: Where the registry lives, for messages.
        self.where = f"Redis ({MODELS_KEY})" if self.shared else str(self.path)

    @property
    def redis(self) -> Any:
        if self._redis is None:
            from jobs.redisconn import for_settings

            self._redis = for_settings(self.settings)  # the one builder: redis://, rediss://, sentinel://
        return self._redis

    def _load_file(self) -> dict[str, ModelSpec]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: _spec(name, entry, str(self.path)) for name, entry in raw.get("models", {}).items()}
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise ConfigurationError(f"model registry {self.path} is invalid: {e}") from None

    def _load_shared(self) -> dict[str, ModelSpec]:
        from jobs.store import translate_redis_errors

        @translate_redis_errors
        def load() -> dict[str, Any]:
            if not self._imported:
                self._import_file()
            return self.redis.hgetall(MODELS_KEY)

        hashed = load()
        with self._lock:
            if self._cache is not None and self._cache[0] == hashed:
                return self._cache[1]
        specs = {}
        for name, raw in hashed.items():
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigurationError(f"model registry {self.where} is invalid: {name}: {e}") from None
            specs[name] = _spec(name, entry, self.where)
        with self._lock:
            self._cache = (hashed, specs)
        return specs

    def _import_file(self) -> None:
        """A host's ``models.json`` from before the shared registry: its entries go to Redis once
        (those already there win) and the file is renamed, so a later removal is not undone."""
        if self.path.exists():
            specs = self._load_file()
            p = self.redis.pipeline()
            specs.pop(TINY, None)  # tiny is each host's own (under its home), never shared
            for name, spec in sorted(specs.items()):
                p.hsetnx(MODELS_KEY, name, spec.model_dump_json(exclude={"name"}))
            added = [name for name, new in zip(sorted(specs), p.execute()) if new]
            try:
                os.replace(self.path, self.path.with_name(self.path.name + ".imported"))
            except FileNotFoundError:
                pass  # another process of this home imported it meanwhile
            log.warning("model registry: imported %s from %s into the shared registry %s (the file is now %s.imported)",
                        ", ".join(added) or "nothing new", self.path, self.where, self.path.name)
        self._imported = True

    def _load(self) -> dict[str, ModelSpec]:
        return self._load_shared() if self.shared else self._load_file()

    def all(self) -> dict[str, ModelSpec]:
        specs = {TINY: tiny_spec(self.settings)}
        specs.update(self._load())
        return specs

    def get(self, name: str) -> ModelSpec:
        specs = self.all()
        if name not in specs:
            raise UnknownModel(
                f"unknown model {name!r}; registered models: {', '.join(sorted(specs))}",
                errors=[{"field": "model", "message": f"unknown model {name!r}; allowed: {sorted(specs)}"}],
            )
        return specs[name]

    def register(self, spec: ModelSpec) -> None:
        if self.shared:
            from jobs.store import translate_redis_errors

            translate_redis_errors(self.redis.hset)(MODELS_KEY, spec.name, spec.model_dump_json(exclude={"name"}))
            return
        specs = self._load_file()
        specs[spec.name] = spec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"models": {n: s.model_dump(exclude={"name"}, exclude_defaults=False) for n, s in sorted(specs.items())}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.path)

    def remove(self, name: str) -> None:
        if self.shared:
            from jobs.store import translate_redis_errors

            self._load()  # a host's old file is imported first, so this removal sticks
            if not translate_redis_errors(self.redis.hdel)(MODELS_KEY, name):
                raise UnknownModel(f"model {name!r} is not in the registry ({self.where})")
            return
        specs = self._load_file()
        if specs.pop(name, None) is None:
            raise UnknownModel(f"model {name!r} is not in {self.path}")
        self.path.write_text(json.dumps({"models": {n: s.model_dump(exclude={"name"}) for n, s in specs.items()}}, indent=2))


def local_dir(spec: ModelSpec) -> Path | None:
    p = Path(spec.source)
    return p if p.is_absolute() or p.exists() else None
