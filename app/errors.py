"""Every error leaves the API as JSON `{"detail": ...}` saying what to fix; never a stack trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pole.api")


class ApiError(Exception):
    """A refusal the client can act on; `extra` keys go beside `detail` (e.g. a list of problems)."""

    def __init__(self, status_code: int, detail: str, **extra):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.extra = extra


class UnexpectedErrorMiddleware:
    """Answers an unexpected exception with a 500 naming an incident, logged with its traceback.

    Starlette's own last-resort handler sends its 500 and then re-raises, so the server closes the
    connection; a keep-alive client then sees its next request fail too. Catching the exception
    here, inside that handler, lets the 500 be an ordinary response on a connection that stays open.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracked_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("incident %s on %s %r", incident, scope["method"], scope["path"])
            if response_started:
                raise  # half a response is out: only closing the connection can tell the client
            body = {"detail": f"internal error (incident {incident}); the server log has the details"}
            await JSONResponse(body, status_code=500)(scope, receive, send)


class NulInUrlMiddleware:
    """Refuses (400) a URL holding a NUL character, raw or percent-encoded, before any route sees it.

    No id, name or filter of this API can hold one, and PostgreSQL cannot even compare a text value
    holding one: the lookup would fail as a server error where an unknown id gets a 404.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ("\x00" in scope["path"] or b"%00" in scope["query_string"]):
            body = {"detail": "the URL holds a NUL character (%00); no path or query value of this API can"}
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.detail, **err.extra}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(NulInUrlMiddleware)
