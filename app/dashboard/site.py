"""The dashboard: server-rendered pages under /dashboard, mounted on the API as an app of its own so that its
session cookie, CSRF checks, security headers and HTML error pages never touch the REST API.

It reads through the same services and result routes as the REST API, with the same owner rule: a key
sees only its own datasets, jobs and files (a 404 for anyone else's).
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware

from app.dashboard.auth import SignInRequired, dashboard_secret
from app.dashboard.headers import SecurityHeadersMiddleware
from app.dashboard.image_scores import ImageScores
from app.dashboard.pages import datasets, jobs, predictions, results, review, sign_in
from app.dashboard.templates import DASHBOARD_PATH, link, page
from app.errors import ApiError
from app.settings import Settings

SESSION_COOKIE = "pole_dashboard"


def create_dashboard(settings: Settings, sessions: sessionmaker[Session], celery: Celery) -> FastAPI:
    """The dashboard app, to mount at DASHBOARD_PATH; it shares the API's settings, database and queue."""
    dashboard = FastAPI(title="pole dashboard", openapi_url=None, docs_url=None, redoc_url=None)
    dashboard.state.settings = settings
    dashboard.state.sessions = sessions
    dashboard.state.celery = celery
    dashboard.state.image_scores = ImageScores(settings)
    for module in (sign_in, datasets, jobs, results, review, predictions):
        dashboard.include_router(module.router)
    dashboard.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static")
    _install_error_pages(dashboard)
    dashboard.add_middleware(
        SessionMiddleware,
        secret_key=dashboard_secret(settings),
        session_cookie=SESSION_COOKIE,
        max_age=settings.dashboard_session_seconds,
        path=DASHBOARD_PATH,
        same_site="strict",
        https_only=settings.dashboard_secure_cookie,
    )
    dashboard.add_middleware(SecurityHeadersMiddleware)
    return dashboard


def _install_error_pages(dashboard: FastAPI) -> None:
    @dashboard.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _err: SignInRequired) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(link("sign-in"), status_code=303)
        return JSONResponse({"detail": "sign in to the dashboard first"}, status_code=401)

    @dashboard.exception_handler(ApiError)
    async def _refused(request: Request, err: ApiError) -> HTMLResponse:
        return page(request, "error.html", err.status_code, status=err.status_code, detail=err.detail)

    @dashboard.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> HTMLResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return page(request, "error.html", 422, status=422, detail=f"invalid request: {problems}")

    @dashboard.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> HTMLResponse:
        return page(request, "error.html", err.status_code, status=err.status_code, detail=str(err.detail))
