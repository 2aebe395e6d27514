"""Who is signed in to the dashboard, and the CSRF check of every form it posts.

The browser never holds the API key after signing in: the sign-in form posts it once, the server checks
it as the REST API does (app.security) and keeps only the key's row id in the session, a cookie signed
with the dashboard secret (Starlette's SessionMiddleware over itsdangerous), HttpOnly and SameSite=Strict.
Every request looks the key up again, so revoking it ends the sign-in at once. Each session carries a
random CSRF token that every form repeats; a POST without it is refused.
"""

from __future__ import annotations

import os
import secrets
from typing import Annotated

from fastapi import Depends, Form, Request
from sqlalchemy.orm import Session

from app.deps import SessionDep
from app.errors import ApiError
from app.models import ApiKey
from app.security import find_active_key
from app.settings import Settings

SECRET_FILE = "dashboard_secret"
KEY_ID = "key"  # session field: the signed-in key's row id
CSRF = "csrf"  # session field: the token every form of the session must repeat
FLASH = "flash"  # session field: a message for the next page shown


class SignInRequired(Exception):
    """No valid sign-in: pages send the browser to the sign-in form, other requests get a 401."""


def dashboard_secret(settings: Settings) -> str:
    """The session cookie's signing secret: the setting, else the one kept in the data dir (made on first use).

    The file appears whole or not at all (written aside, then hard-linked into place, which fails when it
    exists), so API processes starting together on one data dir all end up with the same secret."""
    if settings.dashboard_secret.get_secret_value():
        return settings.dashboard_secret.get_secret_value()
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        draft = path.with_name(f"{SECRET_FILE}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process was first: its secret is the one
        finally:
            draft.unlink()
    return path.read_text().strip()


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made when the session has none (the sign-in form needs one too)."""
    token = request.session.get(CSRF)
    if not isinstance(token, str):
        token = request.session[CSRF] = secrets.token_urlsafe(32)
    return token


def check_csrf(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = "") -> None:
    """Every form's POST must repeat the session's token: another site can make the browser post, never read it."""
    expected = request.session.get(CSRF)
    if not isinstance(expected, str) or not secrets.compare_digest(csrf_token.encode(), expected.encode()):
        raise ApiError(403, "the form's security token is missing or stale; reload the page and submit it again")


def sign_in(request: Request, session: Session, secret: str) -> ApiKey | None:
    """Start a new session for the key `secret` names, or None when it is unknown or revoked."""
    key = find_active_key(session, secret.strip())
    if key is None:
        return None
    request.session.clear()  # nothing of the session before sign-in carries over
    request.session[KEY_ID] = key.id
    request.session[CSRF] = secrets.token_urlsafe(32)
    return key


def sign_out(request: Request) -> None:
    request.session.clear()


def signed_in_key(request: Request, session: SessionDep) -> ApiKey:
    key_id = request.session.get(KEY_ID)
    key = session.get(ApiKey, key_id) if isinstance(key_id, int) else None
    if key is None or key.revoked_at is not None:
        request.session.clear()
        raise SignInRequired()
    return key


def flash(request: Request, message: str) -> None:
    request.session[FLASH] = message[:500]


def take_flash(request: Request) -> str | None:
    return request.session.pop(FLASH, None)


SignedIn = Annotated[ApiKey, Depends(signed_in_key)]
CsrfChecked = Depends(check_csrf)
