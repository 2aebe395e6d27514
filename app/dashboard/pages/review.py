"""Reviewing a job's words: per class the share of each chosen word with example images, the overrides a
person makes (one image's word, one word for a whole class, a candidate dropped), and the derived job that
re-runs from train_pole with them (app.override_service, app.job_service)."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from app.dashboard.auth import CsrfChecked, SignedIn, flash
from app.dashboard.pages.jobs import DashboardJob
from app.dashboard.templates import link, page
from app.deps import CeleryDep, SessionDep, SettingsDep
from app.errors import ApiError
from app.job_service import create_job
from app.override_service import add_override, remove_override, word_summary
from app.schemas import JobCreate, OverrideIn

router = APIRouter()

RequestId = Annotated[str, Form(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("/jobs/{job_id}/review", response_class=HTMLResponse)
def review_page(request: Request, job: DashboardJob, key: SignedIn, session: SessionDep) -> HTMLResponse:
    try:
        summary, waiting = word_summary(session, job), None
    except ApiError as err:
        if err.status_code != 409:
            raise
        summary, waiting = None, err.detail  # no word chosen yet
    return page(
        request,
        "review.html",
        key=key,
        job=job,
        summary=summary,
        waiting=waiting,
        dropped={(o.class_name, o.word) for o in summary.overrides if o.action == "drop"} if summary else set(),
        # Sent back with the form that starts a derived job: a second click replays it instead of starting another.
        request_id=secrets.token_urlsafe(18),
    )


@router.post("/jobs/{job_id}/overrides", dependencies=[CsrfChecked])
def post_override(
    request: Request,
    job: DashboardJob,
    session: SessionDep,
    settings: SettingsDep,
    class_name: Annotated[str, Form(alias="class", max_length=255)],
    action: Annotated[Literal["use", "drop"], Form()],
    word: Annotated[str, Form(max_length=255)],
    image: Annotated[str | None, Form(max_length=255)] = None,
) -> RedirectResponse:
    back = link("jobs", job.id, "images", image) if image else link("jobs", job.id, "review")
    try:
        body = OverrideIn(image=image or None, class_name=class_name, action=action, word=word)
        override = add_override(session, settings, job, body)
    except ValidationError as err:
        flash(request, "Not saved: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
    except ApiError as err:
        flash(request, f"Not saved: {err.detail}")
    else:
        target = f"image {override.image_id}" if override.image_id else "every image"
        verb = "drops" if override.action == "drop" else "uses"
        flash(request, f"Saved: class {override.class_name} {verb} {override.word!r} ({target}).")
    return RedirectResponse(back, status_code=303)


@router.post("/jobs/{job_id}/overrides/{override_id}/delete", dependencies=[CsrfChecked])
def post_remove_override(request: Request, job: DashboardJob, override_id: int, session: SessionDep):
    remove_override(session, job, override_id)
    flash(request, f"Override {override_id} removed.")
    return RedirectResponse(link("jobs", job.id, "review"), status_code=303)


@router.post("/jobs/{job_id}/derive", dependencies=[CsrfChecked])
def post_derive(
    request: Request,
    job: DashboardJob,
    key: SignedIn,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    request_id: RequestId,
) -> RedirectResponse:
    body = JobCreate(parent_job_id=job.id)
    try:
        derived, _ = create_job(
            session, settings, celery, owner=key, body=body, idempotency_key=f"dashboard-derive-{request_id}"
        )
    except ApiError as err:
        flash(request, f"No job started: {err.detail}")
        return RedirectResponse(link("jobs", job.id, "review"), status_code=303)
    return RedirectResponse(link("jobs", derived.id), status_code=303)
