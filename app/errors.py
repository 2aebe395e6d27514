"""Every error leaves the API as JSON `{"detail": ...}` saying what to fix; never a stack trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger("pole.api")


class ApiError(Exception):
    """A refusal the client can act on; `extra` keys go beside `detail` (e.g. a list of problems)."""

    def __init__(self, status_code: int, detail: str, **extra):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.extra = extra


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.detail, **err.extra}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in err.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.exception("incident %s on %s %s", incident, request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error (incident {incident}); the server log has the details"}, status_code=500
        )
