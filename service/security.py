"""API tokens: ``fsg_<random>`` secrets shown once, stored as SHA-256, with an expiry and a revoked flag.

No SQL lives here beyond adding a ``Token`` row; lookups go through ``service.db.reads``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from service.db import reads
from service.db.models import Token, utcnow

__all__ = ["PREFIX", "create_token", "hash_token", "is_usable", "new_secret", "revoke_token", "verify_token"]

PREFIX = "fsg_"
# 32 random bytes: 256 bits, so guessing is hopeless and a fast hash (no salt, no KDF) is enough.
_SECRET_BYTES = 32
# base64url of 32 bytes is 43 characters; anything much longer is not one of ours (and not worth hashing).
_MAX_TOKEN_CHARS = 128


def new_secret() -> str:
    """A fresh token: ``fsg_`` followed by 32 random bytes, URL-safe base64."""
    return PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def hash_token(secret: str) -> str:
    """The SHA-256 hex digest stored for ``secret`` (the secret itself is never stored)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(session: Session, tenant: str, name: str = "", ttl_days: int | None = 90) -> str:
    """Add a token for ``tenant`` and return its secret (the only time it can be seen).

    Args:
        session: a write session; the row is added, the caller's transaction commits it.
        tenant: the owner of every job submitted with this token.
        name: a label for listings ("laptop", "ci").
        ttl_days: days until it expires; None for a token that never expires.
    """
    if not tenant:
        raise ValueError("tenant must not be empty")
    secret = new_secret()
    expires_at = None if ttl_days is None else utcnow() + timedelta(days=ttl_days)
    session.add(Token(tenant=tenant, name=name, token_hash=hash_token(secret), expires_at=expires_at))
    session.flush()
    return secret


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for DateTime(timezone=True) columns; they were written as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_usable(token: Token, now: datetime | None = None) -> bool:
    """True unless the token is revoked or expired."""
    if token.revoked:
        return False
    return token.expires_at is None or _aware(token.expires_at) > (now or utcnow())


def verify_token(session: Session, secret: str | None, now: datetime | None = None) -> Token | None:
    """The usable token row for ``secret``, or None (unknown, malformed, revoked or expired)."""
    if not secret or not secret.startswith(PREFIX) or len(secret) > _MAX_TOKEN_CHARS:
        return None
    digest = hash_token(secret)
    token = reads.find_token(session, digest)
    # The lookup is by hash (so timing reveals nothing about the secret); the constant-time comparison
    # keeps it that way should the lookup ever become a prefix or index scan over something else.
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    return token if is_usable(token, now) else None


def revoke_token(session: Session, token: Token) -> None:
    """Mark ``token`` revoked; requests with it get 401 from then on."""
    token.revoked = True
