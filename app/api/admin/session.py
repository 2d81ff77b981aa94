"""Admin browser sessions: a signed, expiring, HttpOnly cookie naming the admin's key,
and CSRF tokens bound to it (or, before login, to a pre-session cookie)."""

from __future__ import annotations

import hmac
import secrets
from hashlib import sha256

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

SESSION_COOKIE = "llm_batch_admin"
PRE_SESSION_COOKIE = "llm_batch_pre"
SESSION_SECONDS = 8 * 3600


class SessionSigner:
    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._signer = TimestampSigner(secret, salt="admin-session")

    def issue(self, key_id: str) -> str:
        return self._signer.sign(key_id).decode()

    def key_id(self, cookie: str | None) -> str | None:
        """The key id in a valid, unexpired session cookie."""
        if not cookie:
            return None
        try:
            return self._signer.unsign(cookie, max_age=SESSION_SECONDS).decode()
        except (BadSignature, SignatureExpired):
            return None

    def csrf_token(self, binding: str) -> str:
        return hmac.new(self._secret, f"csrf:{binding}".encode(), sha256).hexdigest()

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        return bool(binding and token) and hmac.compare_digest(self.csrf_token(binding or ""), token or "")


def new_pre_session() -> str:
    return secrets.token_urlsafe(16)
