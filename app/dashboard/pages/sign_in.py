"""Signing in with an API key (posted in a form body, never put in a URL) and signing out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.dashboard.auth import CsrfChecked, sign_in, sign_out
from app.dashboard.templates import link, page
from app.deps import SessionDep

router = APIRouter()


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request) -> HTMLResponse:
    return page(request, "sign_in.html", error=None)


@router.post("/sign-in", dependencies=[CsrfChecked])
def post_sign_in(
    request: Request, session: SessionDep, api_key: Annotated[str, Form(max_length=200)] = ""
) -> HTMLResponse:
    key = sign_in(request, session, api_key)
    if key is None:
        # The key typed is never echoed back: the form comes back empty.
        error = "That key is unknown or revoked. Create one with `pole keys create --name NAME`."
        return page(request, "sign_in.html", status_code=401, error=error)
    return RedirectResponse(link("jobs"), status_code=303)


@router.post("/sign-out", dependencies=[CsrfChecked])
def post_sign_out(request: Request) -> RedirectResponse:
    sign_out(request)
    return RedirectResponse(link("sign-in"), status_code=303)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(link("jobs"), status_code=303)
