"""API keys: random secrets shown once, stored only as a SHA-256 hash.

A key carries 256 random bits, so a plain hash is enough (no slow password hashing: nothing here
can be guessed from a dictionary), and lookups are by hash, never by comparing secrets.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, utcnow

KEY_PREFIX = "pole_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the secret, which exists nowhere else afterwards."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=secret[: len(KEY_PREFIX) + 6], key_hash=hash_key(secret))
    session.add(row)
    session.flush()
    return row, secret


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    return row if row is not None and row.revoked_at is None else None


def revoke_key(session: Session, *, key_ref: str) -> ApiKey:
    """Revoke by numeric id or by the printed prefix; raises LookupError naming what exists."""
    query = select(ApiKey).where(ApiKey.id == int(key_ref)) if key_ref.isdigit() else None
    if query is None:
        query = select(ApiKey).where(ApiKey.prefix == key_ref)
    matches = session.scalars(query).all()
    if len(matches) != 1:
        known = ", ".join(f"{k.id} ({k.prefix}, {k.name})" for k in session.scalars(select(ApiKey)))
        raise LookupError(f"no single key matches {key_ref!r}; keys: {known or 'none'}")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key
