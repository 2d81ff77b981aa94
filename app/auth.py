"""API keys: made here, stored as hashes, checked on every request."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from app.errors import Unauthorized
from app.models import ApiKey
from app.repository import JobRepository, new_id

KEY_PREFIX = "lb-"
KEY_BYTES = 32


@dataclass(frozen=True)
class Principal:
    """Who is calling: an owner, and whether they may see everyone's work."""

    owner: str
    is_admin: bool
    key_id: str

    @property
    def scope(self) -> str | None:
        """The owner whose objects this caller may see; None means all (admin)."""
        return None if self.is_admin else self.owner


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(repo: JobRepository, owner: str, *, admin: bool = False, name: str = "") -> tuple[ApiKey, str]:
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
    return repo.add_key(key), secret


def authenticate(repo: JobRepository, secret: str | None) -> Principal:
    if not secret:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    key = repo.key_by_hash(hash_secret(secret.strip()))
    if key is None:
        raise Unauthorized("Incorrect or revoked API key.")
    return Principal(owner=key.owner, is_admin=key.is_admin, key_id=key.id)
