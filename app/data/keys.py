"""API keys: made here, stored as SHA-256 hashes (keys are 256-bit random, so a fast hash
is enough); the secret is shown once, at creation."""

from __future__ import annotations

import hashlib
import secrets

from app.data.ids import new_id
from app.data.models import ApiKey
from app.data.records import Records

KEY_PREFIX = "lb-"
KEY_BYTES = 32


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(records: Records, owner: str, *, admin: bool = False, name: str = "") -> tuple[ApiKey, str]:
    """Stores a new key's hash; returns the record and the secret (shown only now)."""
    secret = new_secret()
    key = ApiKey(
        id=new_id("key_"),
        owner=owner,
        name=name,
        key_hash=hash_secret(secret),
        prefix=secret[: len(KEY_PREFIX) + 6],
        is_admin=admin,
    )
    return records.add_key(key), secret
