"""Secrets at rest: webhook signing secrets are kept in Redis encrypted (Fernet: AES-128-CBC with
HMAC-SHA256), so a copy of Redis (a backup, a replica, someone with read access) does not give
away the secrets receivers trust.

The key: ``BATCHRENDER_SECRETS_KEY`` (a Fernet key, ``batchrender keys secrets-key`` prints one),
the same in every process that creates tenants or delivers webhooks; unset, a key file
``$BATCHRENDER_HOME/keys/secrets.key`` made on first use, which only processes sharing one home
can share: with ``BATCHRENDER_REDIS_URL`` set the key must be set (jobs.signing.require_shared_keys).
Values written before encryption (plain ``whsec_...``) are still read, and encrypted at the next
rotation. jobs/fleet.py publishes a fingerprint of the key, so processes with another one are named.
"""
from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from jobs.errors import ConfigurationError
from jobs.settings import Settings
from jobs.signing import local_key, require_shared_keys

PREFIX = "enc1:"


def secrets_key(settings: Settings) -> bytes:
    """The deployment's secrets key (see the module doc)."""
    if settings.secrets_key is not None:
        return settings.secrets_key.get_secret_value().encode()
    require_shared_keys(settings)
    return local_key(settings.home / "keys" / "secrets.key", lambda: Fernet.generate_key().decode())


class SecretBox:
    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as e:
            raise ConfigurationError(f"BATCHRENDER_SECRETS_KEY is not a Fernet key ({e}); make one with "
                                     "'batchrender keys secrets-key'") from None

    @classmethod
    def for_settings(cls, settings: Settings) -> "SecretBox":
        return cls(secrets_key(settings))

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # written before encryption
        try:
            return self._fernet.decrypt(stored[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise ConfigurationError("a stored secret does not decrypt with this BATCHRENDER_SECRETS_KEY: every "
                                     "process must use the same key (`batchrender doctor` names the processes "
                                     "whose key differs)") from None
