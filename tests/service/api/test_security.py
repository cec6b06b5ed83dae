"""Tokens: format, hashing, verification, expiry and revocation."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from service.db.engine import Database
from service.db.models import Token, utcnow
from service.security import create_token, hash_token, revoke_token, verify_token


def test_token_format_and_hash() -> None:
    secret = "fsg_" + "a" * 43
    assert hash_token(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hash_token(secret))


def test_create_stores_only_the_hash_and_verify_finds_the_tenant(database: Database) -> None:
    with database.write() as session:
        secret = create_token(session, "alice", "laptop", 30)
        other = create_token(session, "alice", "ci", None)
    assert re.fullmatch(r"fsg_[A-Za-z0-9_-]{43}", secret) and secret != other
    with database.read() as session:
        rows = session.query(Token).all()
        assert {r.token_hash for r in rows} == {hash_token(secret), hash_token(other)}
        assert all(secret not in (r.token_hash, r.name) for r in rows)
        token = verify_token(session, secret)
        assert token is not None and token.tenant == "alice" and token.name == "laptop"
        assert token.expires_at is not None
        never = verify_token(session, other)
        assert never is not None and never.expires_at is None


def test_unknown_malformed_expired_and_revoked_tokens_are_invalid(database: Database) -> None:
    with database.write() as session:
        expired = create_token(session, "alice", "old", 1)
        revoked = create_token(session, "alice", "gone", 1)
    with database.read() as session:
        assert verify_token(session, None) is None
        assert verify_token(session, "") is None
        assert verify_token(session, "not-ours") is None
        assert verify_token(session, "fsg_" + "x" * 500) is None
        assert verify_token(session, expired[:-1] + ("A" if expired[-1] != "A" else "B")) is None
        assert verify_token(session, expired, now=utcnow() + timedelta(days=2)) is None
        assert verify_token(session, expired) is not None
    with database.write() as session:
        token = verify_token(session, revoked)
        assert token is not None
        revoke_token(session, token)
    with database.read() as session:
        assert verify_token(session, revoked) is None
