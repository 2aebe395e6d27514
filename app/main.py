"""The FastAPI application factory: `uvicorn --factory app.main:create_app`, or `pole serve`.

Imports no torch (a test holds it to that): the API validates uploads and configs with the
torch-free parts of ml and hands work to the workers by task name.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.dashboard.site import create_dashboard
from app.dashboard.templates import DASHBOARD_PATH
from app.db import create_db_engine, make_sessionmaker
from app.errors import install_error_handlers
from app.openapi import install_openapi
from app.queue import create_celery
from app.routes import datasets, health, jobs, overrides, predictions, results
from app.settings import Settings
from app.stale_uploads import stale_upload_sweeps
from app.upload_validation import UploadValidations
from ml.spec import __version__


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.make_dirs()
    engine = create_db_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        validations = app.state.validations = UploadValidations(settings, app.state.sessions)
        # What exists now lives as long as the server. Frozen, it is out of the collector's sight: a full
        # collection over it stopped every request for 65-110 ms, under load every few seconds
        # (bench/api_load.py).
        gc.collect()
        gc.freeze()
        async with stale_upload_sweeps(settings, validations.adopt_orphans):
            yield
        validations.stop()
        gc.unfreeze()  # the process may go on without this app (tests start many)
        engine.dispose()

    app = FastAPI(
        title="pole",
        version=__version__,
        description="Pixel pseudo masks from image-level tags (POLE + IRNet). Authenticate with "
        "`Authorization: Bearer <key>`; create keys with `pole keys create --name NAME`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.celery = create_celery(settings)
    install_error_handlers(app)
    for module in (health, datasets, jobs, results, overrides, predictions):
        app.include_router(module.router)
    install_openapi(app)
    app.mount(DASHBOARD_PATH, create_dashboard(settings, app.state.sessions, app.state.celery))
    return app
