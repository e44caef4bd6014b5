"""Render option sets for ``benchmarks/throughput.py --options`` (issue 15: a table of each option's gain).

Syntax: option sets separated by commas, options within a set joined by ``+``::

    default,bf16,channels-last,compile,sdpa=flash,prompt-cache,vae-slicing=always,bf16+channels-last+compile

Each option maps to the worker's environment (``BATCHRENDER_*``) or to the model registration:

==================  =======================================================================
``default``         nothing: the worker as configured out of the box
``bf16``            the model registered with dtype ``bfloat16`` (also ``fp16``, ``fp32``)
``channels-last``   ``BATCHRENDER_CHANNELS_LAST=true``
``compile``         ``BATCHRENDER_COMPILE_UNET=true``, ``BATCHRENDER_COMPILE_VAE=true`` (and
                    ``BATCHRENDER_COMPILE_MODE`` / ``_BACKEND`` from ``--compile-mode`` /
                    ``--compile-backend``)
``sdpa=X``          ``BATCHRENDER_SDPA_BACKEND=X``
``prompt-cache``    ``BATCHRENDER_PROMPT_CACHE_SIZE=1024`` (``prompt-cache=N`` for another size)
``vae-slicing=X``   ``BATCHRENDER_VAE_SLICING=X`` (``always``, ``never`` or ``auto``)
==================  =======================================================================

A set whose variables this checkout's ``jobs/settings.py`` does not define is reported as not
measured (the worker refuses unknown ``BATCHRENDER_*`` variables at start-up).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ENV_PREFIX = "BATCHRENDER_"
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
VAE_SLICING = ("always", "never", "auto")
SYNTAX = ("default, bf16, fp16, fp32, channels-last, compile, sdpa=BACKEND, prompt-cache[=N], "
          "vae-slicing=always|never|auto; join options of one set with '+', sets with ','")


@dataclass(frozen=True)
class OptionSet:
    """One measured configuration: its name as given, the worker environment and the model dtype."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    #: ``None``: the benchmark's default (float16 on CUDA, float32 on CPU).
    dtype: str | None = None

    def missing(self, setting_names) -> list[str]:
        """The variables of ``env`` that are not fields of the worker's Settings."""
        return sorted(k for k in self.env if k[len(ENV_PREFIX):].lower() not in setting_names)


def _option(token: str, compile_mode: str | None, compile_backend: str | None) -> tuple[dict[str, str], str | None]:
    key, _, value = token.partition("=")
    if key in DTYPES and not value:
        return {}, DTYPES[key]
    if key == "channels-last" and not value:
        return {ENV_PREFIX + "CHANNELS_LAST": "true"}, None
    if key == "compile" and not value:
        env = {ENV_PREFIX + "COMPILE_UNET": "true", ENV_PREFIX + "COMPILE_VAE": "true"}
        if compile_mode:
            env[ENV_PREFIX + "COMPILE_MODE"] = compile_mode
        if compile_backend:
            env[ENV_PREFIX + "COMPILE_BACKEND"] = compile_backend
        return env, None
    if key == "sdpa" and value:
        return {ENV_PREFIX + "SDPA_BACKEND": value}, None
    if key == "prompt-cache":
        if value and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"option {token!r}: prompt-cache=N takes a positive number of entries")
        return {ENV_PREFIX + "PROMPT_CACHE_SIZE": value or "1024"}, None
    if key == "vae-slicing" and value in VAE_SLICING:
        return {ENV_PREFIX + "VAE_SLICING": value}, None
    raise ValueError(f"unknown option {token!r}; options are: {SYNTAX}")


def parse_options(spec: str, compile_mode: str | None = None, compile_backend: str | None = None) -> list[OptionSet]:
    """Parse ``--options``; ``default`` comes first (added when absent: every gain is against it)."""
    sets: list[OptionSet] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            raise ValueError(f"--options {spec!r} has an empty set; {SYNTAX}")
        if name == "default":
            sets.append(OptionSet("default"))
            continue
        env: dict[str, str] = {}
        dtype = None
        for token in name.split("+"):
            if token == "default":
                raise ValueError(f"option set {name!r}: 'default' cannot be combined with options")
            more, dt = _option(token.strip(), compile_mode, compile_backend)
            clash = [k for k in more if k in env and env[k] != more[k]]
            if clash or (dt and dtype and dt != dtype):
                raise ValueError(f"option set {name!r} sets {', '.join(clash) or 'the dtype'} twice")
            env.update(more)
            dtype = dt or dtype
        sets.append(OptionSet(name, env, dtype))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"--options {spec!r} names a set twice")
    if "default" not in names:
        sets.insert(0, OptionSet("default"))
    else:
        sets.sort(key=lambda s: s.name != "default")  # stable: the others keep their order
    return sets


def summarise(results: dict[str, dict], b: float) -> tuple[str | None, float | None]:
    """Add each measured set's ``gain`` (c / the default set's c); return the best set and its c / b."""
    base = results.get("default", {}).get("c")
    measured = {n: r for n, r in results.items() if r.get("c") is not None}
    for r in measured.values():
        r["gain"] = r["c"] / base if base else None
    if not measured:
        return None, None
    best = max(measured, key=lambda n: measured[n]["c"])
    return best, measured[best]["c"] / b


def table(results: dict[str, dict], best: str | None, b_name: str, b: float) -> str:
    """The option table, one row per set, and the best set against the bare default's best batch."""
    width = max(24, *(len(n) + 2 for n in results))
    lines = [f"{'option set':<{width}}{'(c) img/s':>10}{'gain':>8}{'idle':>7}{'calls':>7}{'rows/image':>12}"]
    for name, r in results.items():
        if r.get("c") is None:
            lines.append(f"{name:<{width}}  not measured: {r.get('skipped') or r.get('error')}")
            continue
        gain = f"{r['gain']:.2f}x" if r.get("gain") is not None else "-"
        rows = r["rows_rendered"] / max(1, r["images_delivered"])
        lines.append(f"{name:<{width}}{r['c']:>10.2f}{gain:>8}{r['idle']:>7.0%}{r['calls']:>7}{rows:>12.3f}")
    if best is not None:
        c = results[best]["c"]
        lines.append(f"\nbest optimised (c) / bare default best batch (b): {best} {c:.2f} / {b_name} {b:.2f} "
                     f"= {c / b:.2f}")
    return "\n".join(lines)
