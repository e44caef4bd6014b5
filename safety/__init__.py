"""Moderation chain: a policy file, one stage per module, typed verdicts, an audit log.

Importing this package (or ``safety.chain``) never imports torch, transformers or diffusers;
the classifier stages import them when they are built.
"""
from safety.chain import InputImageCheck, ModerationChain
from safety.verdict import Action, Decision, Verdict

__all__ = ["Action", "Decision", "InputImageCheck", "ModerationChain", "Verdict"]
