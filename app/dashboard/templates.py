"""Rendering the dashboard's pages: Jinja2 with autoescaping on for every template, so every name, word
and file name a user gave is shown as text, never read as markup."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.dashboard.auth import csrf_token, take_flash

DASHBOARD_PATH = "/dashboard"
NO_STORE = {"Cache-Control": "no-store"}  # pages show one key's data: kept by no cache


def link(*parts: object, **query: object) -> str:
    """A dashboard URL: each part a path segment, percent-encoded whole (an image id cannot add a segment or
    a query); keyword arguments the query (a trailing _ dropped, for `class_`), empty ones left out."""
    path = "/".join(quote(str(part), safe="") for part in parts)
    url = f"{DASHBOARD_PATH}/{path}"
    pairs = {name.rstrip("_"): value for name, value in query.items() if value not in (None, "")}
    return f"{url}?{urlencode(pairs)}" if pairs else url


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def when(value: datetime | None) -> str:
    return "–" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name fails the page instead of showing nothing
)
_environment.globals["link"] = link
_environment.filters["percent"] = percent
_environment.filters["when"] = when
_environment.filters["zip"] = lambda first, second: zip(first, second, strict=False)
templates = Jinja2Templates(env=_environment)


def page(request: Request, template: str, status_code: int = 200, **context: object) -> HTMLResponse:
    """The page `template` with `context`, the session's CSRF token for its forms and any flashed message."""
    shared = {"csrf": csrf_token(request), "flash": take_flash(request), "key": None}
    return templates.TemplateResponse(
        request, template, {**shared, **context}, status_code=status_code, headers=NO_STORE
    )
