"""Moderation chain: a policy file, one stage per module, typed verdicts, an audit log.

Importing this package (or ``safety.chain``) never imports torch, transformers or diffusers;
the classifier stages import them when they are built. The names below are imported when first
used, so a module of the package on its own (``safety.prompt_pool``'s worker processes, which
need only the rules) does not load the chain's image stages.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"InputImageCheck": "safety.chain", "ModerationChain": "safety.chain", "Action": "safety.verdict",
            "Decision": "safety.verdict", "Verdict": "safety.verdict"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'safety' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
