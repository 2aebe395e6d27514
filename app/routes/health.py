"""Liveness and readiness, for load balancers and orchestrators (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.db import ping
from app.live_workers import count_live_workers
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request):
    """The database and the job queue can both be reached, and a worker is alive (its heartbeat is fresh).

    Without a live worker the answer is 503 unless POLE_READY_NEEDS_WORKER=false; the count is reported either way.
    """
    checks = {}
    try:
        ping(request.app.state.engine)
        checks["database"] = "ok"
    except Exception as err:  # any failure to reach it means "not ready", whatever the driver raised
        checks["database"] = f"unreachable: {type(err).__name__}"
    try:
        with request.app.state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as err:  # likewise for the broker
        checks["broker"] = f"unreachable: {type(err).__name__}"
    ready = all(v == "ok" for v in checks.values())
    settings = request.app.state.settings
    try:
        with request.app.state.sessions() as session:
            alive = count_live_workers(session, settings.queue, settings.stale_after_seconds)
        checks["workers"] = f"{alive} alive"
    except Exception as err:  # likewise: the count is read from the database
        alive = 0
        checks["workers"] = f"unknown: {type(err).__name__}"
    ready = ready and (alive > 0 or not settings.ready_needs_worker)
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return body if ready else JSONResponse(body.model_dump(), status_code=503)
