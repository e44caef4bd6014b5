"""Provenance of rendered images: C2PA signing and verification, dev keys, the "did we make this?" index.

Torch-free: used by the worker (sign, record) and the CLI (verify, keys init, lookup).
"""
